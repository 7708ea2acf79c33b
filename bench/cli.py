"""Command line: ``python -m bench run|evaluate|report|list|data|ui``."""
from __future__ import annotations

import argparse
import ast
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.data.dataset import DataError
from bench.method import kind_of

log = logging.getLogger("bench")
LOCALHOST = "127.0.0.1"


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _param(text: str) -> tuple[str, str, object]:
    """``method.param=value``; the value is read as a Python literal when it is one (42, 1e-4, True)."""
    name, eq, raw = text.partition("=")
    method, dot, param = name.partition(".")
    if not (eq and dot and method and param):
        raise argparse.ArgumentTypeError(f"--set expects method.param=value, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return method, param, value


def _data_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` for the dataset's loader; the value stays text until the loader's options convert it."""
    key, eq, value = text.partition("=")
    if not (eq and key.strip()):
        raise argparse.ArgumentTypeError(f"--data-option expects KEY=VALUE (e.g. patient_key=donor), got {text!r}")
    return key.strip(), value.strip()


def _resource(text: str) -> tuple[str, str, float]:
    """``[method.]key=value``: ``gpus=1`` for every method, ``hist2st.time_min=720`` for one."""
    name, eq, raw = text.partition("=")
    method, dot, key = name.rpartition(".")
    try:
        value = float(raw)
    except ValueError:
        value = None
    if not (eq and key) or value is None:
        raise argparse.ArgumentTypeError(f"--resources expects [method.]key=number, got {text!r}")
    return (method if dot else "all"), key, int(value) if value.is_integer() else value


def _spot_cap(text: str):
    if text in ("auto", "all"):
        return None if text == "all" else text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, auto or all, got {text!r}") from None


def _dataset_choices() -> str:
    """For --help: the names are read from the dataset files' source (fast); a plug-in file that cannot
    be read must not break every command, so its error is left to the command that loads it."""
    from bench.registry import dataset_names

    try:
        return "one of " + ", ".join(dataset_names())
    except Exception:
        return "a dataset name (see `list`)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="Benchmark spatial gene expression prediction from H&E.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # --debug is accepted before or after the command (`bench --debug run ...`, `bench run --debug ...`).
    debug_help = "show the full traceback of an error instead of one line"
    parser.add_argument("--debug", action="store_true", default=False, help=debug_help)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(sub.add_parser, parents=[debug])

    run = add("run", help="train and evaluate methods on every fold")
    run.add_argument("--methods", type=_csv, required=True, help="comma-separated method names (see `list`)")
    run.add_argument("--dataset", default="her2st", metavar="NAME",
                     help=f"{_dataset_choices()} (default her2st; `list` says which are downloaded, generated "
                          f"or read from your files)")
    run.add_argument("--protocol", default="lopo",
                     help="lopo (default), loso (leaks), patient-kfold:<k>, published (the dataset's published "
                          "folds; leaks)")
    run.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    run.add_argument("--panel", default="hvg:250",
                     help="hvg:<n>, top-mean:<n>, file:<path> or published (the dataset's published panel, chosen "
                          "on test sections too) (default hvg:250)")
    run.add_argument("--target", choices=("per-spot", "per-gene"), default="per-spot",
                     help="what methods train on and are scored against: per-spot (default; each spot scaled to "
                          "10,000, ln(1+x)) or per-gene (the published one: each gene scaled to the section's "
                          "median gene total, log10(1+x); keeps sequencing depth)")
    run.add_argument("--out", default="runs", help="output folder (default runs/)")
    run.add_argument("--folds", type=_ints, default=None, help="run only these fold indices")
    run.add_argument("--encoder", default=None, metavar="NAME",
                     help="image encoder for every method that takes one (linear-probe's encoder, the learned "
                          "methods' image_encoder): resnet50, timm:<model>, hf-hub:MahmoodLab/UNI, "
                          "<name>@<checkpoint> ... (see README: Image encoders); --set wins for one method")
    _training_args(run)
    run.add_argument("--profile", choices=("auto", "paper", "quick"), default="auto",
                     help="hyper-parameters: paper (published), quick (CPU reduction), auto (paper on CUDA)")
    run.add_argument("--pretrained", choices=("auto", "yes", "no"), default="auto",
                     help="ImageNet weights: auto (when available), yes (required), no")
    run.add_argument("--tracking-uri", default=None, help="MLflow server (default: SQLite under --out)")
    run.add_argument("--experiment", default=None, help="MLflow experiment (default stbench-<dataset>-<protocol>)")
    run.add_argument("--no-fetch", action="store_true", help="do not download missing data")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _data_args(run)
    run.add_argument("--cache-dir", default=None, help="patch cache (default: STBENCH_CACHE or user cache)")
    scale = run.add_argument_group("where jobs run (see README: Running on a SLURM cluster)")
    scale.add_argument("--executor", choices=("local", "slurm"), default="local",
                       help="local: this machine (default); slurm: submit job arrays with submitit")
    scale.add_argument("--jobs", type=int, default=1,
                       help="local executor: jobs at once, each in its own process when > 1 (default 1)")
    scale.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads per job (default: every core; on SLURM, the CPUs asked for); "
                            "results depend on it, so it is recorded with each job")
    scale.add_argument("--resources", dest="resources", type=_resource, action="append", default=[],
                       metavar="[METHOD.]KEY=VALUE",
                       help="what a job asks SLURM for: gpus, cpus, mem_gb, time_min; for every method, or one "
                            "(e.g. hist2st.time_min=720); defaults come from each method (repeatable)")
    scale.add_argument("--partition", default=None, help="SLURM partition")
    scale.add_argument("--account", default=None, help="SLURM account")
    scale.add_argument("--qos", default=None, help="SLURM quality of service")
    scale.add_argument("--array-parallelism", type=int, default=None,
                       help="SLURM: at most this many tasks of a job array at once")

    rp = add("reproduce", help="run the published setting and the leakage-free one, step by step, and compare them")
    rp.add_argument("dataset", help="a dataset that declares its published setting (her2st)")
    rp.add_argument("--methods", type=_csv, required=True, help="comma-separated methods; the controls "
                    "depth-oracle, mean and spatial-oracle are added in every setting")
    rp.add_argument("--settings", type=_csv, default=["a", "b", "c", "d"],
                    help="which of the settings a,b,c,d to run (default all; see README)")
    rp.add_argument("--profile", choices=("auto", "paper", "quick"), default="paper",
                    help="hyper-parameters (default paper, the published ones)")
    rp.add_argument("--out", default=None, help="run folder (default runs/reproduce-<dataset>); resumable")
    rp.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    _training_args(rp)
    rp.add_argument("--pretrained", choices=("auto", "yes", "no"), default="auto")
    rp.add_argument("--jobs", type=int, default=1, help="local jobs at once (default 1)")
    rp.add_argument("--threads", type=int, default=None, help="torch CPU threads per job")
    rp.add_argument("--no-fetch", action="store_true", help="do not download missing data")
    rp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _data_args(rp)
    rp.add_argument("--cache-dir", default=None, help="patch cache (default: STBENCH_CACHE or user cache)")

    ev = add("evaluate", help="recompute every score, test and clustering result of a finished run")
    ev.add_argument("run_dir", help="the --out folder of a benchmark run")
    ev.add_argument("--tracking-uri", default=None, help="MLflow store to log to (default: <run_dir>/mlflow.db)")
    ev.add_argument("--no-mlflow", action="store_true", help="write the tables only")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates for the CIs (default 1000)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of KMeans (default 0)")
    ev.add_argument("--alpha", type=float, default=0.05, help="level of the CIs and the critical difference")
    ev.add_argument("--n-pcs", type=int, default=9, help="principal components clustered (default 9)")
    ev.add_argument("--metrics", default=None, help="comma-separated metric names to compute (default: every "
                    "registered one; Pearson r, the headline, always; `bench list` names them)")

    rep = add("report", help="write a self-contained HTML report of a finished run")
    rep.add_argument("run_dir", help="the --out folder of a benchmark run (evaluated first if results/ is missing)")
    rep.add_argument("--out", default=None, help="the HTML file to write (default: <run_dir>/report.html)")
    rep.add_argument("--genes", type=_csv, default=[], help="comma-separated genes to map besides the top genes")
    rep.add_argument("--top-genes", type=int, default=4, help="best-predicted genes of the best method to map")
    rep.add_argument("--map-scale", choices=("shared", "panel"), default="shared",
                     help="colour scale of the expression maps: shared (one per gene for truth and predictions; "
                          "default) or panel (each panel its own, to see the pattern of a narrow prediction)")
    rep.add_argument("--screenshot", action="store_true",
                     help="open the report in headless Chromium: save <run_dir>/report.png, fail on console errors")

    add("list", help="list methods, datasets and protocols")

    data = add("data", help="download or describe datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", parents=[debug], help="download a dataset with SHA-256 checks (resumes)")
    fetch.add_argument("name")
    fetch.add_argument("--base-url", default=None, help="download from this URL instead of the public source")
    _data_args(fetch, options=False)
    info = data_sub.add_parser("info", parents=[debug], help="sections, patients, spots and images of a dataset")
    info.add_argument("name", nargs="?", default="her2st")
    _data_args(info)

    ui = add("ui", help="open the MLflow UI on 127.0.0.1 for a run folder")
    ui.add_argument("--out", default="runs", help="the run folder whose store to show (default runs/)")
    ui.add_argument("--tracking-uri", default=None, help="a store other than <out>/mlflow.db")
    ui.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    ui.add_argument("--host", default=LOCALHOST,
                    help="address to listen on (default 127.0.0.1: this machine only; the UI has no login)")
    return parser


def _training_args(p: argparse.ArgumentParser) -> None:
    """What ``run`` and ``reproduce`` both take about training: --set, --device, --max-train-spots."""
    p.add_argument("--set", dest="params", type=_param, action="append", default=[],
                   metavar="METHOD.PARAM=VALUE", help="override a method hyper-parameter (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--max-train-spots", type=_spot_cap, default="auto",
                   help="training spots per fold, the same random ones for every method: auto (default: 256 in "
                        "the quick profile, so a CPU run's cost does not grow with the cohort; all in the paper "
                        "profile), a number, or all")


def _data_args(p: argparse.ArgumentParser, options: bool = True) -> None:
    """--data-dir, and --data-option for every command that loads a dataset (read with ``data_options``)."""
    p.add_argument("--data-dir", default=None, help="data folder (default: STBENCH_DATA or user cache)")
    if options:
        p.add_argument("--data-option", dest="data_options", type=_data_option, action="append", default=[],
                       metavar="KEY=VALUE",
                       help="an option of the dataset's loader, e.g. patient_key=donor, counts_layer=counts, "
                            "pathology_key=annotation (repeatable; README: Your own data lists each loader's)")


def data_options(args) -> dict[str, str]:
    """The --data-option pairs as a dict; a key given twice is refused rather than silently overwritten."""
    out: dict[str, str] = {}
    for key, value in getattr(args, "data_options", []):
        if key in out and out[key] != value:
            raise ValueError(f"--data-option {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "matplotlib", "numba", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handlers = {"run": cmd_run, "evaluate": cmd_evaluate, "report": cmd_report, "list": cmd_list, "data": cmd_data,
                "ui": cmd_ui, "reproduce": cmd_reproduce}
    from tqdm.contrib.logging import logging_redirect_tqdm

    # Log lines go through tqdm.write while a command runs, so they appear above a progress bar instead
    # of inside its line.
    with logging_redirect_tqdm():
        return _handle(handlers[args.command], args)


def _handle(handler, args) -> int:
    if getattr(args, "debug", False):
        return handler(args)  # errors propagate with their traceback
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place errors become a message and an exit code
        message, code = describe_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return code


def describe_error(exc: Exception) -> tuple[str, int]:
    """One line for the user and the exit code: 2 for bad input, names or a full disk (the user can fix
    it), 1 for anything unexpected (a bug: --debug shows where)."""
    from bench.data.dataset import OutputError
    from bench.data.download import DownloadError
    from bench.registry import UnknownNameError

    if isinstance(exc, (DataError, OutputError, DownloadError, UnknownNameError, ValueError, RuntimeError)):
        return str(exc), 2
    if isinstance(exc, OSError):  # e.g. a read-only --out folder, or one that is a file
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}", 2
    return f"unexpected {type(exc).__name__}: {exc} (run again with --debug to see the traceback)", 1


def benchmark(config):
    """``bench run``: run the jobs, evaluate every comparable job folder, log the scores, write the report.

    Each stage is its own package (bench.run, bench.evaluation, bench.report); this function is the only
    place they meet. Returns the runner's ``BenchResult`` with the summary and timing filled in."""
    import pandas as pd

    from bench.evaluation.evaluate import RESULTS_DIR, SUMMARY_COLUMNS, evaluate_run
    from bench.run.runner import (
        comparable_job_folders,
        finish_benchmark,
        record_made_from,
        record_timing,
        run_benchmark,
    )
    from bench.run.tracking import log_evaluation_to_store

    result = run_benchmark(config)
    config, out = result.config, result.out
    if result.up_to_date:  # nothing new since results/ and the report were made: show them as they are
        result.summary = pd.read_csv(out / RESULTS_DIR / "summary.csv")
        return result
    # Every table under results/ comes from the job folders, exactly as `bench evaluate` makes them: those of
    # this run and any earlier run into the same folder with the same dataset, protocol and panel, so running
    # methods one at a time into one folder builds up one comparison instead of replacing it.
    folders = comparable_job_folders(out, config)
    if folders:
        evaluation = evaluate_run(out, folders)
        log_evaluation_to_store(evaluation, out, config.tracking_uri)
        summary = evaluation.summary
    else:  # nothing completed: leave any earlier results and report as they are
        log.warning("no complete job to evaluate; %s left as it was", out / "results")
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
    finish_benchmark(result, summary)
    if folders:  # before the report, which opens with the comparison when the folder holds several settings
        result.settings_text = compare_settings(out, config.dataset)
    if folders:
        try:  # the report only reads the results written above: failing to draw it never loses them
            from bench.report.build import write_report

            result.report = write_report(out)
        except Exception as exc:
            log.warning("no report written (%s: %s); the results are in %s; retry with `python -m bench report %s`",
                        type(exc).__name__, exc, out / "results", out)
    if result.report is not None and result.ok:
        record_made_from(out, config, folders)
    record_timing(result)
    return result


ENCODER_PARAMS = ("encoder", "image_encoder")  # the hyper-parameter that names a method's image encoder


def encoder_params(methods: list[str], encoder: str) -> dict[str, dict]:
    """``--encoder NAME`` as per-method parameters: every method with an encoder parameter gets NAME; a method
    without one is left as it is (and the log says so, so nobody believes it ran on that encoder)."""
    from bench.registry import get_method_class

    params, untouched = {}, []
    for name in methods:
        names = get_method_class(name).param_names()
        which = next((p for p in ENCODER_PARAMS if p in names), None)
        if which:
            params[name] = {which: encoder}
        else:
            untouched.append(name)
    if untouched:
        log.info("--encoder %s: %s take(s) no image encoder and run as before", encoder, ", ".join(untouched))
    return params


def compare_settings(out: Path, dataset: str) -> str | None:
    """When the run folder holds complete jobs of more than one setting (protocol, panel, target) of the
    dataset, the comparison tables ``bench reproduce`` makes (``results/settings_{acg,heg}.csv``,
    ``settings.md``, ``settings.html``); returns the text, or None with one setting."""
    from bench.evaluation.reproduce import (
        comparison_tables,
        job_scores,
        published_run_differences,
        published_sources,
        read_published,
        setting_labels,
        settings_in,
        to_markdown,
    )
    from bench.records import find_job_folders
    from bench.registry import get_dataset_module
    from bench.report.reproduce import write_comparison_page

    scores = job_scores(find_job_folders(out))
    scores = scores[scores["dataset"] == dataset]
    settings = settings_in(scores)
    if len(settings) < 2:
        return None
    columns = setting_labels(settings)
    module = get_dataset_module(dataset)
    path = getattr(module, "PUBLISHED_RESULTS", None)
    published = read_published(path) if path else None
    tables = comparison_tables(scores, columns, dataset, published)
    notes = [f"Published numbers: {src}." for src in published_sources(published, columns, dataset)]
    notes += published_run_differences(scores, published, columns, dataset, _n_published_folds(module))
    text = "".join(to_markdown(tables[k], f"{t} (mean Pearson r over folds)") + "\n"
                   for k, t in (("acg", "ACG"), ("heg", "HEG"))) + "".join(f"- {n}\n" for n in notes)
    for key, t in tables.items():
        t.to_csv(Path(out) / "results" / f"settings_{key}.csv", index=False)
    (Path(out) / "settings.md").write_text(text)
    write_comparison_page(Path(out) / "settings.html", f"stbench: {dataset}, {len(settings)} settings", tables,
                          [f"{label}: {s.describe()}" for label, s in columns.items()], notes)
    log.info("this run folder holds %d settings of %s: compared in %s", len(settings), dataset,
             Path(out) / "settings.html")
    return text


def cmd_run(args) -> int:
    from bench.data.locations import data_present, resolve_data_dir
    from bench.run.config import BenchConfig

    params: dict[str, dict] = {}
    if args.encoder:
        params = encoder_params(args.methods, args.encoder)
    for method, param, value in args.params:
        params.setdefault(method, {})[param] = value
    resources: dict[str, dict] = {}
    for method, key, value in args.resources:
        resources.setdefault(method, {})[key] = value
    slurm = {k: v for k, v in {"partition": args.partition, "account": args.account, "qos": args.qos,
                                "array_parallelism": args.array_parallelism}.items() if v is not None}
    data_dir = resolve_data_dir(args.data_dir)
    config = BenchConfig(methods=args.methods, dataset=args.dataset, protocol=args.protocol, seeds=args.seeds,
                         panel=args.panel, target=args.target, max_train_spots=args.max_train_spots, out=args.out,
                         data_dir=str(data_dir), data_options=data_options(args), cache_dir=args.cache_dir,
                         tracking_uri=args.tracking_uri, experiment=args.experiment, device=args.device,
                         profile=args.profile, pretrained=args.pretrained, folds=args.folds, params=params,
                         progress=not args.no_progress, executor=args.executor, jobs=args.jobs,
                         threads=args.threads,
                         resources=resources, slurm=slurm).resolved()  # names checked before any download
    if not args.no_fetch and not data_present(args.dataset, data_dir):
        _fetch(args.dataset, data_dir, base_url=None, progress=not args.no_progress)
    result = benchmark(config)
    print()
    if len(result.summary):
        print(compact_summary(result.summary, result.config.pretrained))
        print()
    print(f"{len(result.completed)} job(s) run, {len(result.skipped)} already complete, {len(result.failed)} failed.")
    if result.up_to_date:
        print("Nothing new: every job was complete, and the results and report were already made from them.")
    t = result.timing
    if t and t.get("harness_share") is not None:
        print(f"Time: {t['wall_seconds']:.1f} s, of which the methods' fit/predict {t['method_seconds']:.1f} s and "
              f"the suite {t['harness_seconds']:.1f} s ({100 * t['harness_share']:.1f}%; run_timing.json)")
    if result.settings_text:
        print("\nThis run folder holds more than one setting:\n" + result.settings_text)
    print(f"Every column: {result.out / 'results' / 'summary.csv'} (and the other tables in results/)")
    if result.report is not None:
        print(f"Report: {result.report}")
    print(f"Browse the runs: python -m bench ui --out {result.out}")
    for key, why in result.failed.items():
        where = f" (log: {result.failure_logs[key]})" if key in result.failure_logs else ""
        print(f"FAILED {key}: {why}{where}", file=sys.stderr)
    return 1 if result.failed else 0


def _n_published_folds(module) -> int | None:
    """How many folds the dataset's published protocol has on its full cohort (one per published section)."""
    sections = getattr(module, "PUBLISHED_SECTIONS", None)
    return len(sections) if sections else None


def reproduce(base, settings: list[str] | None = None) -> dict:
    """``bench reproduce``: run each setting of ``REPRODUCE_SETTINGS`` (the published one to the leakage-free
    one) as its own ``benchmark`` into ``<out>/settings/<label>/`` (resumable, evaluated and reported on its
    own), with the controls added, then compare them: ``<out>/results/reproduce_{acg,heg}.csv``,
    ``<out>/reproduce.md`` and ``<out>/reproduce.html``. Returns the tables, their text and each setting's
    result."""
    from dataclasses import replace

    from bench.evaluation.reproduce import (
        CONTROLS,
        REPRODUCE_EFFECTS,
        comparison_tables,
        job_scores,
        published_run_differences,
        published_sources,
        read_published,
        reproduce_settings,
        to_markdown,
    )
    from bench.records import find_job_folders
    from bench.registry import get_dataset_module
    from bench.report.reproduce import write_comparison_page
    from bench.run.tracking import default_tracking_uri

    module = get_dataset_module(base.dataset)
    if not getattr(module, "PUBLISHED_SECTIONS", None) or not getattr(module, "PUBLISHED_PANEL", None):
        raise ValueError(f"dataset {base.dataset!r} declares no published setting (PUBLISHED_SECTIONS and "
                         f"PUBLISHED_PANEL); bench reproduce needs both")
    n_genes = sum(1 for g in Path(module.PUBLISHED_PANEL).read_text().splitlines() if g.strip())
    REPRODUCE_SETTINGS = reproduce_settings(n_genes)
    labels = settings or list(REPRODUCE_SETTINGS)
    unknown = [s for s in labels if s not in REPRODUCE_SETTINGS]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; valid: {', '.join(REPRODUCE_SETTINGS)}")
    out = Path(base.out)
    methods = list(dict.fromkeys([*base.methods, *CONTROLS]))
    results, folders = {}, []
    for label in labels:
        setting = REPRODUCE_SETTINGS[label]
        log.info("setting (%s): %s", label, setting.describe())
        config = replace(base, methods=methods, protocol=setting.protocol, panel=setting.panel,
                         target=setting.target, out=str(out / "settings" / label),
                         # One MLflow store for the whole comparison (`bench ui --out <out>`), an experiment each.
                         tracking_uri=base.tracking_uri or default_tracking_uri(out.resolve()),
                         experiment=f"stbench-{base.dataset}-reproduce-{label}").resolved()
        results[label] = benchmark(config)
        folders += find_job_folders(out / "settings" / label)
    columns = {f"({label})": REPRODUCE_SETTINGS[label] for label in labels}
    published_path = getattr(module, "PUBLISHED_RESULTS", None)
    published = read_published(published_path) if published_path else None
    scores = job_scores(folders)
    tables = comparison_tables(scores, columns, base.dataset, published, method_order=methods)
    notes = [f"({a}) -> ({b}): what {REPRODUCE_EFFECTS[b]} takes away." for a, b in zip("abc", "bcd")
             if a in labels and b in labels]
    notes += [f"Published numbers: {src}." for src in published_sources(published, columns, base.dataset)]
    notes += published_run_differences(scores, published, columns, base.dataset, _n_published_folds(module))
    notes += ["The published panel was chosen on all sections, test sections included; depth-oracle predicts "
              "each gene from the test spot's true total count only (how much of a score depth explains).",
              f"Profile {base.profile}; each setting is a full run folder under {out / 'settings'}."]
    text = "".join(to_markdown(tables[k], f"{title} (mean Pearson r over folds)")
                   + "\n" for k, title in (("acg", "ACG"), ("heg", "HEG")))
    text += "\n".join(f"- {c}: {s.describe()}" for c, s in columns.items()) + "\n\n" + "\n".join(
        f"- {n}" for n in notes) + "\n"
    (out / "results").mkdir(parents=True, exist_ok=True)
    for key, t in tables.items():
        t.to_csv(out / "results" / f"reproduce_{key}.csv", index=False)
    (out / "reproduce.md").write_text(text)
    write_comparison_page(out / "reproduce.html", f"stbench reproduce: {base.dataset}", tables,
                          [f"{label}: {s.describe()}" for label, s in columns.items()], notes)
    return {"tables": tables, "text": text, "results": results}


def cmd_reproduce(args) -> int:
    from bench.data.locations import data_present, resolve_data_dir
    from bench.run.config import BenchConfig

    params: dict[str, dict] = {}
    for method, param, value in args.params:
        params.setdefault(method, {})[param] = value
    data_dir = resolve_data_dir(args.data_dir)
    out = args.out or f"runs/reproduce-{args.dataset}"
    base = BenchConfig(methods=args.methods, dataset=args.dataset, seeds=args.seeds, out=out,
                       data_dir=str(data_dir), cache_dir=args.cache_dir, device=args.device, profile=args.profile,
                       pretrained=args.pretrained, params=params, progress=not args.no_progress, jobs=args.jobs,
                       max_train_spots=args.max_train_spots,
                       threads=args.threads).resolved()
    if not args.no_fetch and not data_present(args.dataset, data_dir):
        _fetch(args.dataset, data_dir, base_url=None, progress=not args.no_progress)
    import time

    started = time.perf_counter()
    done = reproduce(base, args.settings)
    print()
    print(done["text"])
    failed = {k: v for r in done["results"].values() for k, v in r.failed.items()}
    print(f"Wall time {time.perf_counter() - started:.0f} s. Tables: {Path(base.out) / 'results'}; page: "
          f"{Path(base.out) / 'reproduce.html'}")
    for key, why in failed.items():
        print(f"FAILED {key}: {why}", file=sys.stderr)
    return 1 if failed else 0




def compact_summary(summary, requested_pretrained: str | None = None) -> str:
    """The terminal's table, one line per method within 100 columns (the full table is
    ``results/summary.csv``), then what the columns mean and, when an image encoder was never pretrained,
    the sentence that says so (as the report's verdict does)."""
    from bench.report.verdict import random_init_note

    def pretrained(r) -> str:
        if r.get("random_init") is True or str(r.get("random_init")).lower() == "true":
            return "no: random init"
        return "yes" if str(r["pretrained"]).lower() == "true" else "no"

    def score(value) -> str:
        return "undefined" if value != value else f"{value:.3f}"  # NaN: constant predictions have no r

    rows = [("method", "kind", "ACG ± sd", "HEG", "rank", "pretrained", "time (s)")]
    for r in summary.to_dict("records"):
        if "acg_pearson" not in r:  # a summary.csv written before the metric registry (a rerun with nothing new)
            nan = float("nan")
            r.update(acg_pearson=r.get("mean_pcc", nan), acg_pearson_sd=r.get("sd_pcc", nan),
                     heg_pearson=r.get("heg_pcc", nan), mean_rank=nan)
        acg = score(r["acg_pearson"]) + ("" if r["acg_pearson_sd"] != r["acg_pearson_sd"]
                                         else f" ± {r['acg_pearson_sd']:.3f}")
        seconds = r["fit_seconds"] + r["predict_seconds"]
        rank = "" if r["mean_rank"] != r["mean_rank"] else f"{r['mean_rank']:.1f}"
        rows.append((str(r["method"])[:22], kind_of(r["kind"]).short, acg, score(r["heg_pearson"]), rank,
                     pretrained(r), f"{seconds:,.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 6}  # numbers line up on the right
    lines = ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.append("ACG: Pearson r over all panel genes per test section, averaged within each patient, then over")
    lines.append("patients (± sd across patients); HEG: the 50 most expressed genes. rank: mean rank over every")
    lines.append("metric and gene set (1 = best; methods only). time: fit + predict, summed over the jobs.")
    note = random_init_note(summary, requested_pretrained)
    if note:
        lines += ["", note]
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from bench.evaluation.evaluate import RESULTS_DIR, evaluate_run
    from bench.run.tracking import log_evaluation_to_store

    run_dir = Path(args.run_dir)
    evaluation = evaluate_run(run_dir, n_boot=args.n_boot, seed=args.seed, alpha=args.alpha, n_pcs=args.n_pcs,
                              metrics=args.metrics)
    if evaluation.per_job.empty:
        print(f"error: no complete job folders under {run_dir / 'jobs'}", file=sys.stderr)
        return 2
    if not args.no_mlflow:
        log_evaluation_to_store(evaluation, run_dir, args.tracking_uri)
    print(compact_summary(evaluation.summary, _requested_pretrained(run_dir)))
    friedman = evaluation.friedman
    if friedman.get("p_value") is not None:
        print(f"\nFriedman over {friedman['n_blocks']} patients: p = {friedman['p_value']:.3g}; "
              f"critical difference of average ranks {friedman['critical_difference']:.3f}")
    logged = evaluation.settings.get("mlflow")
    if logged:
        print(f"MLflow: logged to {logged['jobs']} job run(s) and {logged['methods']} method run(s)")
    print(f"{len(evaluation.per_job)} job(s) evaluated. Tables: {run_dir / RESULTS_DIR}")
    return 0


def _requested_pretrained(run_dir: Path) -> str | None:
    """The run's --pretrained, from its config.json (None when unreadable)."""
    try:
        return json.loads((run_dir / "config.json").read_text()).get("pretrained")
    except (OSError, ValueError, AttributeError):
        return None


def cmd_report(args) -> int:
    from bench.report.build import write_report

    run_dir = Path(args.run_dir)
    path = write_report(run_dir, out=args.out, genes=args.genes, n_top_genes=args.top_genes,
                        map_scale=args.map_scale)
    print(f"Report: {path} ({path.stat().st_size / 1024:.0f} kB); open it in any browser, no network needed")
    if args.screenshot:
        from bench.report.browser import check_in_browser

        shot = check_in_browser(path, run_dir / "report.png")
        print(f"Screenshot: {shot.screenshot} (no console messages)")
    return 0


def _fetch(name: str, data_dir: Path, base_url: str | None, progress: bool = True):
    from bench.data.download import DownloadError, fetch
    from bench.data.locations import dataset_root, is_downloadable
    from bench.registry import get_dataset_module

    module = get_dataset_module(name)
    if not is_downloadable(module):
        raise ValueError(f"dataset {name!r} is {_dataset_origin(module)}, not downloaded")
    root = dataset_root(name, data_dir)
    log.info("downloading %s into %s", name, root)
    try:
        return fetch(module, root, base_url=base_url, progress=progress)
    except DownloadError as exc:
        # The download error already says how to point at an existing copy (--data-dir, STBENCH_DATA).
        raise DataError(f"no complete {name} data in {root}; {exc}") from exc


def cmd_list(args) -> int:
    """Read from the plug-in files' source: no method module (nor torch) is imported."""
    from bench.data.splits import PROTOCOLS
    from bench.registry import dataset_modules, method_catalogue

    print("methods:")
    for name, info in method_catalogue().items():
        print(f"  {name:<18} {info.kind:<17} {info.description}")
    print("datasets:")
    for name, module in dataset_modules().items():
        print(f"  {name:<18} {_dataset_origin(module)}")
    print("protocols:")
    for p in PROTOCOLS:
        print(f"  {p}")
    from bench.evaluation.metric_registry import all_metrics

    print("metrics:")
    for name, m in all_metrics().items():
        print(f"  {name:<18} {m.level + ' ' + m.arrow:<17} {m.source}")
    return 0


def _dataset_origin(module) -> str:
    from bench.data.locations import is_downloadable

    if is_downloadable(module):
        return "downloadable"
    if getattr(module, "USER_DATA", False):
        return "your files (<data dir>/<name>/)"
    return "generated"


def cmd_data(args) -> int:
    from bench.data.locations import load_dataset, missing_images_note, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    if args.data_command == "fetch":
        report = _fetch(args.name, data_dir, args.base_url)
        print(f"{args.name}: {len(report.downloaded)} downloaded, {len(report.resumed)} resumed, "
              f"{len(report.already_present)} already present ({report.bytes_downloaded / 1e6:.1f} MB)")
        return 0
    options = data_options(args)
    if Path(args.name).exists():  # a folder or file of the user's own: the format is detected
        from bench.data.formats import load_path

        dataset = load_path(args.name, **options)
        published = False
    else:
        from bench.data.locations import matches_manifest

        dataset = load_dataset(args.name, data_dir, options, tell_missing=False)
        # The published files, unchanged (their checksums match): their counts need not be read again to be
        # checked (the suite's own tests read every one), and reading them is most of the time data info
        # would take (her2st: ~50 s of ~55). Every other check runs, on the spot tables.
        published = matches_manifest(args.name, data_dir)
    from tqdm.auto import tqdm

    from bench.data.dataset import check_section
    from bench.data.formats import describe_section

    lines = []  # every section is checked (as `bench run` does) before anything is printed
    for sid in tqdm(dataset.sections, desc="reading sections", leave=False):
        check_section(dataset[sid], counts=not published)
        lines.append("  " + describe_section(dataset[sid]))
    imaged = dataset.imaged_sections()
    print(f"{dataset.name}: {len(dataset.sections)} sections from {len(dataset.patients())} patients; "
          f"{len(imaged)} with an image, {len(dataset.sections) - len(imaged)} expression-only")
    print(f"Patients: {dataset.patients_from}")
    if dataset.patients_unknown:
        print("  (if sections share a patient, name the column: --data-option patient_key=<column>; "
              "otherwise lopo cannot keep a patient's other sections out of training)")
    if options:
        print("Data options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    if published:
        print("Counts: the published files (every SHA-256 matches the manifest), so not read again here")
    print("\n".join(lines))
    note = None if Path(args.name).exists() else missing_images_note(dataset, args.name)
    if note:
        print(note)
    if dataset.citation:
        print(f"Cite: {dataset.citation}")
    return 0


def cmd_ui(args) -> int:
    from bench.run.tracking import ARTIFACTS_DIR, anchor_artifacts, default_tracking_uri, is_own_store

    out = Path(args.out)
    uri = args.tracking_uri or default_tracking_uri(out)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise DataError(f"{uri[len('sqlite:///'):]}: no MLflow store here; run `python -m bench run` first "
                        f"or pass --out/--tracking-uri")
    if args.host != LOCALHOST:  # the UI has no login: anyone who can reach the address sees every run
        log.warning("MLflow UI listening on %s: reachable from other machines, without a login", args.host)
    # One worker: a local UI for one user; it starts faster on small machines.
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    if is_own_store(uri, out):
        anchor_artifacts(out)  # a moved or copied folder shows its own artifacts
        # Anything the server itself would store goes into the run folder, not the working directory.
        artifacts = (out.resolve() / ARTIFACTS_DIR).as_uri()
        cmd += ["--default-artifact-root", artifacts, "--no-serve-artifacts"]
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    return run_until_stopped(cmd)


def run_until_stopped(cmd: list[str]) -> int:
    """Run a server command until it ends or this process is asked to stop (SIGINT, SIGTERM, SIGHUP),
    then stop everything it started.

    ``mlflow ui`` starts a uvicorn server and job-runner processes of its own; stopping only the direct
    child would leave them holding the port. So the child leads a process group of its own, and the whole
    group is sent SIGTERM (SIGKILL after 10 s) before this returns. 0 when stopped by a signal."""
    class _Stop(Exception):
        pass

    def stop(signum, frame):
        raise _Stop(signum)

    stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, stop) for s in stopping}  # before the child exists: no signal is lost
    proc = None
    try:
        proc = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)
        return proc.wait()
    except _Stop:
        return 0
    finally:
        for s in stopping:  # a second Ctrl-C during the shutdown must not leave the group running
            signal.signal(s, signal.SIG_IGN)
        if proc is not None:
            _stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    def alive() -> bool:
        proc.poll()  # reap the direct child as soon as it ends (a zombie is not a server)
        return _group_alive(proc.pid)

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not alive():
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is left in the process group."""
    proc_fs = Path("/proc")
    if not (proc_fs / "self" / "stat").is_file():  # not Linux: ask the kernel whether the group exists
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc_fs.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
