"""Command line: ``python -m bench run|reproduce|evaluate|report|list|check|data|ui``.

This module only parses: each command hands its arguments to the stage that does the work (bench.pipeline
for run and reproduce, bench.evaluation, bench.report, bench.data, bench.run.ui_server) and prints what comes
back. It also decides what an escaping error means: a ``bench.errors.UserError`` (or an OSError about a
file) is the user's to fix, one line and exit 2; anything else is a bug, one line, exit 1 and a hint to
rerun with --debug for the traceback.
"""
from __future__ import annotations

import argparse
import ast
import functools
import logging
import sys
import time
from pathlib import Path

from bench import __version__
from bench.errors import InputError, UserError

log = logging.getLogger("bench")


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


DOWNLOAD_HELP = ("download what the dataset's copy lacks into --data-dir or STBENCH_DATA (a folder you name is "
                 "otherwise only read; the default user-cache folder downloads without it)")


def build_parser() -> argparse.ArgumentParser:
    # Every choice list comes from the module that owns it (each light to import: `bench --help` stays fast).
    from bench.data.preprocess import TARGETS
    from bench.evaluation import REPRODUCE_SETTINGS
    from bench.method import PRETRAINED, PROFILES
    from bench.report import MAP_SCALES
    from bench.run import EXECUTORS

    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="Benchmark spatial gene expression prediction from H&E.")
    parser.add_argument("--version", action="version", version=f"stbench {__version__}")
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
    run.add_argument("--target", choices=TARGETS, default="per-spot",
                     help="what methods train on and are scored against: per-spot (default; each spot scaled to "
                          "10,000, ln(1+x)), per-gene (the published one: each gene scaled to the section's "
                          "median gene total, log10(1+x); keeps sequencing depth) or per-spot-smoothed (TRIPLEX's: "
                          "per-spot averaged over each spot's 3x3 array neighbourhood)")
    _run_folder(run, "runs", "output folder (default runs/)")
    run.add_argument("--folds", type=_ints, default=None, help="run only these fold indices")
    run.add_argument("--encoder", default=None, metavar="NAME",
                     help="image encoder for every method that takes one (linear-probe's encoder, the learned "
                          "methods' image_encoder): resnet50, timm:<model>, hf-hub:MahmoodLab/UNI, "
                          "<name>@<checkpoint> ... (see docs/encoders.md); --set wins for one method")
    _training_args(run)
    run.add_argument("--profile", choices=PROFILES, default="auto",
                     help="hyper-parameters: paper (published), quick (CPU reduction), auto (paper on CUDA)")
    run.add_argument("--pretrained", choices=PRETRAINED, default="auto",
                     help="ImageNet weights: auto (when available), yes (required), no")
    run.add_argument("--tracking-uri", default=None, help="MLflow server (default: SQLite under --out)")
    run.add_argument("--experiment", default=None, help="MLflow experiment (default stbench-<dataset>-<protocol>)")
    run.add_argument("--no-fetch", action="store_true", help="do not download missing data")
    run.add_argument("--download", action="store_true", help=DOWNLOAD_HELP)
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _data_args(run)
    run.add_argument("--cache-dir", default=None, help="patch cache (default: STBENCH_CACHE or user cache)")
    scale = run.add_argument_group("where jobs run (see docs/parallel-and-slurm.md)")
    scale.add_argument("--executor", choices=EXECUTORS, default="local",
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
    rp.add_argument("--settings", type=_csv, default=None,
                    help=f"which of the settings {','.join(REPRODUCE_SETTINGS)} to run (default all; t and u run only "
                         "the methods "
                    "whose published training chose its epoch on the test fold; see docs/reproduce.md)")
    rp.add_argument("--folds", type=_ints, default=None,
                    help="run only these fold indices in every setting (e.g. 0, to time one fold first)")
    rp.add_argument("--profile", choices=PROFILES, default="paper",
                    help="hyper-parameters (default paper, the published ones)")
    _run_folder(rp, None, "run folder (default runs/reproduce-<dataset>); resumable")
    rp.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    _training_args(rp)
    rp.add_argument("--pretrained", choices=PRETRAINED, default="auto")
    rp.add_argument("--jobs", type=int, default=1, help="local jobs at once (default 1)")
    rp.add_argument("--threads", type=int, default=None, help="torch CPU threads per job")
    rp.add_argument("--no-fetch", action="store_true", help="do not download missing data")
    rp.add_argument("--download", action="store_true", help=DOWNLOAD_HELP)
    rp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _data_args(rp)
    rp.add_argument("--cache-dir", default=None, help="patch cache (default: STBENCH_CACHE or user cache)")

    ev = add("evaluate", help="recompute every score, test and clustering result of a finished run")
    _run_folder(ev, "runs", "the --out folder of a benchmark run (default runs/)")
    ev.add_argument("--tracking-uri", default=None, help="MLflow store to log to (default: <run_dir>/mlflow.db)")
    ev.add_argument("--no-mlflow", action="store_true", help="write the tables only")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates for the CIs (default 1000)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of KMeans (default 0)")
    ev.add_argument("--alpha", type=float, default=0.05, help="level of the CIs and the critical difference")
    ev.add_argument("--n-pcs", type=int, default=9, help="principal components clustered (default 9)")
    ev.add_argument("--metrics", default=None, help="comma-separated metric names to compute (default: every "
                    "registered one; Pearson r, the headline, always; `bench list` names them)")

    rep = add("report", help="write a self-contained HTML report of a finished run")
    _run_folder(rep, "runs", "the --out folder of a benchmark run (default runs/; evaluated first if results/ "
                             "is missing)")
    rep.add_argument("--html", default=None, help="the HTML file to write (default: <run folder>/report.html)")
    rep.add_argument("--genes", type=_csv, default=[], help="comma-separated genes to map besides the top genes")
    rep.add_argument("--top-genes", type=int, default=4, help="best-predicted genes of the best method to map")
    rep.add_argument("--map-scale", choices=MAP_SCALES, default="shared",
                     help="colour scale of the expression maps: shared (one per gene for truth and predictions; "
                          "default) or panel (each panel its own, to see the pattern of a narrow prediction)")
    rep.add_argument("--screenshot", action="store_true",
                     help="open the report in headless Chromium: save <run_dir>/report.png, fail on console errors")

    listing = add("list", help="list methods, datasets and protocols; with a method, its parameters")
    listing.add_argument("method", nargs="?", default=None,
                         help="a method: list each parameter's default, profile values and allowed values")
    check = add("check", help="check a method against the method contract, on synthetic data (CPU, minutes)")
    check.add_argument("method", help="a method file, an entry-point name or a registered method name")

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
    _run_folder(ui, "runs", "the run folder whose store to show (default runs/)")
    ui.add_argument("--tracking-uri", default=None, help="a store other than <out>/mlflow.db")
    ui.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    ui.add_argument("--host", default=None,
                    help="address to listen on (default 127.0.0.1: this machine only; the UI has no login)")
    return parser


def _run_folder(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """The run folder, named the same way by every command: positional (``bench evaluate runs``) or ``--out
    runs``; ``main`` puts whichever was given in ``args.out``."""
    p.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR", help=help)
    p.add_argument("--out", dest="out_option", default=None, metavar="RUN_DIR", help="the same as RUN_DIR")
    p.set_defaults(out=default)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """The arguments, with the run folder in ``args.out``. argparse (before Python 3.12) fills an optional
    positional before the first option, so in ``bench run --methods mean runs`` the folder comes back unparsed:
    it is taken here as the run folder."""
    args, extra = parser.parse_known_args(argv)
    if len(extra) == 1 and not extra[0].startswith("-") and hasattr(args, "run_dir") and args.run_dir is None:
        args.run_dir, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _one_run_folder(parser, args)
    return args


def _one_run_folder(parser: argparse.ArgumentParser, args) -> None:
    if getattr(args, "run_dir", None) and getattr(args, "out_option", None) and args.run_dir != args.out_option:
        parser.error(f"the run folder is given twice ({args.run_dir} and --out {args.out_option}); give it once")
    args.out = getattr(args, "run_dir", None) or getattr(args, "out_option", None) or getattr(args, "out", None)


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
                            "pathology_key=annotation (repeatable; docs/datasets.md lists each loader's)")


def data_options(args) -> dict[str, str]:
    """The --data-option pairs as a dict; a key given twice is refused rather than silently overwritten."""
    out: dict[str, str] = {}
    for key, value in getattr(args, "data_options", []):
        if key in out and out[key] != value:
            raise InputError(f"--data-option {key} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "matplotlib", "numba", "PIL", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handlers = {"run": cmd_run, "evaluate": cmd_evaluate, "report": cmd_report, "list": cmd_list, "data": cmd_data,
                "ui": cmd_ui, "reproduce": cmd_reproduce, "check": cmd_check}
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
    """One line for the user and the exit code: 2 for what the user can fix (bad input, an unknown name, a
    file that cannot be written), 1 for anything unexpected (a bug: --debug shows where)."""
    if isinstance(exc, UserError):
        return str(exc), 2
    if isinstance(exc, OSError) and exc.filename:  # e.g. a read-only --out folder, or one that is a file
        return f"{exc.filename}: {exc.strerror or exc}", 2
    if isinstance(exc, MemoryError):  # neither the user's input nor a bug: this machine's memory
        return f"out of memory ({exc or 'MemoryError'}); use a machine with more memory or fewer --jobs", 1
    return f"unexpected {type(exc).__name__}: {exc} (a bug; run again with --debug to see the traceback)", 1


def _method_params(args) -> dict[str, dict]:
    """--encoder (every method that takes an image encoder) and --set (one method's parameter; wins)."""
    params: dict[str, dict] = {}
    if getattr(args, "encoder", None):
        from bench.pipeline import encoder_params

        params = encoder_params(args.methods, args.encoder)
    for method, param, value in args.params:
        params.setdefault(method, {})[param] = value
    return params


def _ensure_data(args) -> None:
    from bench.data.locations import ensure_data

    ensure_data(args.dataset, args.data_dir, download=args.download, no_fetch=args.no_fetch,
                progress=not args.no_progress)


def _bench_config(args, **fixed):
    """The settings ``run`` and ``reproduce`` share, read the same way from either's arguments (an option a
    command does not offer keeps its default): every field of ``BenchConfig`` named like an argument, then the
    ones assembled from several arguments, then ``fixed`` (what the command decides itself)."""
    from dataclasses import fields

    from bench.data.locations import resolve_data_dir
    from bench.run.config import BenchConfig

    resources: dict[str, dict] = {}
    for method, key, value in getattr(args, "resources", []):
        resources.setdefault(method, {})[key] = value
    slurm = {k: getattr(args, k, None) for k in ("partition", "account", "qos", "array_parallelism")}
    assembled = {"params": _method_params(args), "data_options": data_options(args),
                 "progress": not args.no_progress, "resources": resources,
                 "slurm": {k: v for k, v in slurm.items() if v is not None},
                 "data_dir": str(resolve_data_dir(args.data_dir))}
    named = {f.name: getattr(args, f.name) for f in fields(BenchConfig)
             if f.name not in assembled and hasattr(args, f.name)}
    return BenchConfig(**{**named, **assembled, **fixed})


def cmd_run(args) -> int:
    from bench.pipeline import benchmark

    config = _bench_config(args).resolved()  # the plan: every name and parameter checked before any download
    _ensure_data(args)
    result = benchmark(config)
    from bench.report.terminal import run_summary  # pandas: imported after the plan, so a mistake is refused fast

    text, failures = run_summary(result)
    print(text)
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if result.failed else 0


def cmd_reproduce(args) -> int:
    from bench.pipeline import reproduce

    base = _bench_config(args, out=args.out or f"runs/reproduce-{args.dataset}").resolved()
    _ensure_data(args)
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


def cmd_evaluate(args) -> int:
    from bench.evaluation.evaluate import evaluate_run
    from bench.report.terminal import evaluation_summary
    from bench.run.tracking import log_evaluation_to_store

    run_dir = Path(args.out)
    evaluation = evaluate_run(run_dir, n_boot=args.n_boot, seed=args.seed, alpha=args.alpha, n_pcs=args.n_pcs,
                              metrics=args.metrics)
    if evaluation.per_job.empty:
        print(f"error: no complete job folders under {run_dir / 'jobs'}", file=sys.stderr)
        return 2
    if not args.no_mlflow:
        log_evaluation_to_store(evaluation, run_dir, args.tracking_uri)
    print(evaluation_summary(evaluation, run_dir))
    return 0


def cmd_report(args) -> int:
    from bench.report.build import write_report

    run_dir = Path(args.out)
    path = write_report(run_dir, out=args.html, genes=args.genes, n_top_genes=args.top_genes,
                        map_scale=args.map_scale)
    print(f"Report: {path} ({path.stat().st_size / 1024:.0f} kB); open it in any browser, no network needed")
    if args.screenshot:
        from bench.report.browser import check_in_browser

        shot = check_in_browser(path, run_dir / "report.png")
        print(f"Screenshot: {shot.screenshot} (no console messages)")
    return 0


def cmd_list(args) -> int:
    """Read from the plug-in files' source: no method module (nor torch) is imported, unless a method is named
    (its parameters are read from the class's declaration, ``bench.parameters``)."""
    if args.method:
        from bench.parameters import describe_parameters
        from bench.registry import get_method_class

        cls = get_method_class(args.method)
        print(f"{cls.name} ({cls.kind}): {cls.description}")
        print("parameters (--set " + cls.name + ".NAME=VALUE):")
        for line in describe_parameters(cls) or ["none"]:
            print(f"  {line}")
        return 0
    from bench.data.catalogue import dataset_modules
    from bench.data.locations import dataset_origin
    from bench.data.splits import PROTOCOLS
    from bench.registry import method_catalogue

    print("methods:")
    for name, info in method_catalogue().items():
        print(f"  {name:<18} {info.kind:<19} {info.description}")
    print("datasets:")
    for name, module in dataset_modules().items():
        print(f"  {name:<18} {dataset_origin(module)}")
    print("protocols:")
    for p in PROTOCOLS:
        print(f"  {p}")
    from bench.evaluation.metric_registry import all_metrics

    print("metrics:")
    for name, m in all_metrics().items():
        print(f"  {name:<18} {m.level + ' ' + m.arrow:<17} {m.source}")
    return 0


def cmd_check(args) -> int:
    from bench.testing import run_check

    return run_check(args.method)


def cmd_data(args) -> int:
    from bench.data.info import describe_dataset
    from bench.data.locations import fetch_dataset, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    if args.data_command == "fetch":
        report = fetch_dataset(args.name, data_dir, args.base_url)
        print(f"{args.name}: {len(report.downloaded)} downloaded, {len(report.resumed)} resumed, "
              f"{len(report.already_present)} already present ({report.bytes_downloaded / 1e6:.1f} MB)")
        return 0
    print("\n".join(describe_dataset(args.name, data_dir, data_options(args))))
    return 0


def cmd_ui(args) -> int:
    from bench.run.ui_server import LOCALHOST, run_until_stopped, ui_command

    host = args.host or LOCALHOST  # the default lives with the server (None here: --help imports nothing)
    cmd = ui_command(Path(args.out), args.tracking_uri, host, args.port)
    print(f"MLflow UI on http://{host}:{args.port} (Ctrl-C to stop)", flush=True)
    return run_until_stopped(cmd)
