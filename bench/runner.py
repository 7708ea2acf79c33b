"""Run a benchmark: every (method, seed, fold) job, each writing its own folder atomically.

A job is ``(dataset, protocol, fold, method, seed)``. It is complete when its folder holds a
``COMPLETE`` record with the SHA-256 of every file it wrote; a rerun skips complete jobs and redoes
anything else. A failing job is reported with its key and never written as a result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bench import provenance
from bench.data import DataError, Dataset, OutputError, check_spots_on_image
from bench.evaluate import SUMMARY_COLUMNS, evaluate_run
from bench.inputs import build_fold_inputs, fold_panel
from bench.locations import load_dataset, resolve_cache_dir, resolve_data_dir
from bench.method import Method, Runtime, build_method, resolve_profile, validate_predictions
from bench.metrics import gene_stats, per_gene_metrics, summarise_pearson
from bench.patches import PatchStore
from bench.preprocess import parse_panel
from bench.registry import get_method_class
from bench.splits import Fold, Split, load_or_create_split, parse_protocol
from bench.timing import peak_memory, reset_peak_memory, timed
from bench.torch_utils import resolve_device, seed_everything
from bench.tracking import Tracker, default_tracking_uri

log = logging.getLogger(__name__)
JOB_FILES = ("predictions.npz", "per_gene.csv", "train_gene_stats.csv", "result.json", "config.json", "panel.txt")
COMPLETE = "COMPLETE"


@dataclass
class BenchConfig:
    """The one source of truth for a benchmark; saved, resolved, with every job."""

    methods: list[str]
    dataset: str = "her2st"
    protocol: str = "lopo"
    seeds: list[int] = field(default_factory=lambda: [0])
    panel: str = "hvg:250"
    out: str = "runs"
    data_dir: str | None = None
    cache_dir: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    device: str = "auto"
    profile: str = "auto"  # "paper", "quick", or "auto" (paper on CUDA, quick on CPU)
    pretrained: str = "auto"
    folds: list[int] | None = None  # run only these fold indices (None: all)
    params: dict[str, dict] = field(default_factory=dict)  # method name -> hyper-parameter overrides
    progress: bool = True

    def resolved(self) -> "BenchConfig":
        """Fill every default that depends on the machine, validate names, and return a new config."""
        parse_protocol(self.protocol)
        parse_panel(self.panel)
        for m in self.methods:
            make_method(self, m)  # unknown names and parameters fail here, before any work
        for m in self.params:
            if m not in self.methods:
                raise ValueError(f"parameters given for method {m!r}, which is not among --methods")
        out = Path(self.out).expanduser().resolve()
        device = resolve_device(self.device)
        return BenchConfig(
            methods=list(self.methods), dataset=self.dataset, protocol=self.protocol, seeds=list(self.seeds),
            panel=self.panel, out=str(out), data_dir=str(resolve_data_dir(self.data_dir)),
            cache_dir=str(resolve_cache_dir(self.cache_dir)),
            tracking_uri=self.tracking_uri or default_tracking_uri(out),
            experiment=self.experiment or f"stbench-{self.dataset}-{self.protocol}",
            device=device, profile=resolve_profile(self.profile, device), pretrained=self.pretrained,
            folds=self.folds, params={k: dict(v) for k, v in self.params.items()}, progress=self.progress)


@dataclass(frozen=True)
class JobKey:
    dataset: str
    protocol: str
    fold: int
    method: str
    seed: int

    def __str__(self) -> str:
        return f"{self.dataset}/{self.protocol}/{self.method}/seed{self.seed}/fold{self.fold}"

    def folder(self, out: Path) -> Path:
        return Path(out) / "jobs" / self.dataset / self.protocol.replace(":", "") / self.method / \
            f"seed{self.seed}" / f"fold{self.fold}"


@dataclass
class BenchResult:
    out: Path
    completed: list[str]
    skipped: list[str]
    failed: dict[str, str]
    summary: pd.DataFrame
    timing: dict = field(default_factory=dict)  # wall time of the run split into methods and harness

    @property
    def ok(self) -> bool:
        return not self.failed


def make_method(config: BenchConfig, name: str) -> Method:
    profile = resolve_profile(config.profile, resolve_device(config.device))
    return build_method(get_method_class(name), profile, config.params.get(name, {}))


def job_is_complete(folder: Path, config_hash: str) -> bool:
    """True when every file the job wrote is present with the checksum it was written with."""
    record = folder / COMPLETE
    if not record.is_file():
        return False
    try:
        doc = json.loads(record.read_text())
    except ValueError:
        return False
    if doc.get("config_hash") != config_hash:
        raise RuntimeError(f"{folder} holds a result made with a different configuration; use another --out "
                           f"folder (results are never overwritten)")
    return job_record_intact(folder)


def job_record_intact(folder: Path) -> bool:
    """True when the folder's COMPLETE record exists and every file it lists has its recorded checksum
    (whatever configuration made it)."""
    try:
        doc = json.loads((Path(folder) / COMPLETE).read_text())
        files = doc["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((folder / f).is_file() and _sha256(folder / f) == s for f, s in files.items())


def job_config_hash(config: BenchConfig, method: Method) -> str:
    """What makes a job's result what it is, beyond its key (paths and trackers excluded)."""
    ident = {"panel": config.panel, "params": method.get_params(), "pretrained": config.pretrained,
             "device": config.device.split(":")[0]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_job(key: JobKey, config: BenchConfig, dataset: Dataset, fold: Fold, split: Split, genes: list[str],
            store: PatchStore, tracker: Tracker | None, parent_run: str | None) -> dict:
    """Train and evaluate one method on one fold; write the job's folder atomically. Returns its result."""
    method = make_method(config, key.method)
    folder = key.folder(config.out)
    config_hash = job_config_hash(config, method)
    run_id = None
    if tracker:
        run_id = tracker.start_job(parent_run, f"{key.method} fold{key.fold} seed{key.seed}", str(key), {
            "seed": key.seed, "fold": key.fold, "split_sha256": split.sha256, "device": config.device,
            "profile": config.profile,
            "split_leaks_patients": split.leaks_patients, **provenance.tags()})
    try:
        seed_everything(key.seed)

        def log_metric(name, value, step=None):
            if tracker:
                tracker.log_metric(run_id, name, value, step)

        method.runtime = Runtime(seed=key.seed, device=config.device, pretrained=config.pretrained,
                                 progress=config.progress, log_metric=log_metric)
        inputs = build_fold_inputs(dataset, fold, genes, store, method.patch_spec(),
                                   needs_raw_counts=method.needs_raw_counts,
                                   needs_test_truth=method.needs_test_truth)
        reset_peak_memory(config.device)
        with timed(config.device) as fit_time:
            method.fit(inputs.train)
        with timed(config.device) as predict_time:
            raw_pred = method.predict(inputs.test)
        pred = validate_predictions(raw_pred, len(inputs.test), len(genes), key.method, job=str(key))
        fit_s, predict_s = fit_time.seconds, predict_time.seconds

        per_gene = per_gene_metrics(inputs.truth, pred)
        r = per_gene["pearson"]
        scores = summarise_pearson(r, inputs.truth)
        train_stats = gene_stats(inputs.train.expression)  # for HVG: variance of the training targets
        timing = {"fit_seconds": fit_s, "predict_seconds": predict_s,
                  "train_spots_per_second": len(inputs.train) / fit_s if fit_s > 0 else None,
                  "predict_spots_per_second": len(inputs.test) / predict_s if predict_s > 0 else None,
                  **peak_memory(config.device), "device": config.device,
                  "clock": "cuda-events" if config.device.startswith("cuda") else "wall"}
        facts = {"pretrained": False, **method.runtime.facts}
        result = {"job": asdict(key), "job_key": str(key), "scores": scores, "timing": timing, "facts": facts,
                  "kind": method.kind, "profile": config.profile,
                  "n_train_spots": len(inputs.train), "n_test_spots": len(inputs.test),
                  "train_sections": list(fold.train), "test_sections": list(fold.test),
                  "split_file": str(split.path), "split_sha256": split.sha256,
                  "split_leaks_patients": split.leaks_patients,
                  "panel_sha256": hashlib.sha256("\n".join(genes).encode()).hexdigest(),
                  "mlflow_run_id": run_id}
        job_config = {"benchmark": asdict(config), "method": key.method, "method_params": method.get_params(),
                      "patch_spec": asdict(method.patch_spec()) if method.patch_spec() else None,
                      "config_hash": config_hash}
        _write_job_folder(folder, config_hash, {
            "predictions.npz": lambda p: np.savez_compressed(
                p, prediction=pred, truth=inputs.truth, genes=np.array(genes),
                spot_ids=inputs.test.spot_ids.astype(str), section_ids=inputs.test.section_ids.astype(str),
                array_coords=inputs.test.array_coords,
                **{name: labels.astype(str) for name, labels in inputs.test_labels.items()}),
            "per_gene.csv": lambda p: pd.DataFrame({"gene": genes, **per_gene}).to_csv(p, index=False),
            "train_gene_stats.csv": lambda p: pd.DataFrame({
                "gene": genes, "train_mean": train_stats["mean"], "train_variance": train_stats["variance"],
            }).to_csv(p, index=False),
            "result.json": lambda p: p.write_text(json.dumps(result, indent=1, default=str)),
            "config.json": lambda p: p.write_text(json.dumps(job_config, indent=1, default=str)),
            "panel.txt": lambda p: p.write_text("\n".join(genes) + "\n"),
        })
        if tracker:
            tracker.log_params(run_id, {"method": job_config["method_params"], "benchmark": asdict(config)})
            tracker.set_tags(run_id, {"pretrained": facts["pretrained"]})
            numbers = {**scores, **timing, **{f"fact.{k}": v for k, v in facts.items()}}
            for name, value in numbers.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tracker.log_metric(run_id, name, value)
            tracker.log_artifacts(run_id, folder)
            tracker.log_artifact(run_id, split.path)
            tracker.finish(run_id, ok=True)
        return result
    except BaseException:
        if tracker and run_id:
            tracker.finish(run_id, ok=False)
        raise


def _write_job_folder(folder: Path, config_hash: str, writers: dict) -> None:
    """Write every file into a temporary sibling folder, then move it into place in one rename."""
    if set(writers) != set(JOB_FILES):
        raise ValueError(f"a job folder holds exactly {JOB_FILES}; got {sorted(writers)}")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    target = folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, write in writers.items():
            target = folder / name
            write(tmp / name)
        files = {name: _sha256(tmp / name) for name in writers}
        target = folder / COMPLETE
        (tmp / COMPLETE).write_text(json.dumps({"config_hash": config_hash, "files": files}, indent=1))
        target = folder
        if folder.exists():  # an incomplete earlier attempt: it holds no result worth keeping
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as exc:  # disk full, no permission: every later job would fail too
        raise OutputError.writing(target, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _merged_run_config(out: Path, config: BenchConfig) -> dict:
    """The run folder's config.json: this run's settings, with the methods of earlier runs into the same
    folder kept first (their order is the order tables and the report list methods in)."""
    record = asdict(config)
    try:
        earlier = json.loads((out / "config.json").read_text()).get("methods", [])
    except (OSError, ValueError, AttributeError):
        earlier = []
    record["methods"] = list(dict.fromkeys([*earlier, *config.methods]))
    return record


def comparable_job_folders(out: Path, config: BenchConfig) -> list[Path]:
    """Complete job folders under ``out`` made with this run's dataset, protocol and gene panel."""
    from bench.evaluate import find_job_folders

    scope = Path(out) / "jobs" / config.dataset / config.protocol.replace(":", "")
    folders = []
    for folder in find_job_folders(out):
        if scope not in folder.parents:
            continue
        try:
            panel = json.loads((folder / "config.json").read_text())["benchmark"]["panel"]
        except (OSError, ValueError, KeyError):
            continue
        if panel == config.panel:
            folders.append(folder)
    return folders


def run_benchmark(config: BenchConfig) -> BenchResult:
    """Run every job. Bad input (``DataError``) or results that cannot be written (``OutputError``) stop
    the run, since every other job would fail the same way; any other error fails only its job."""
    started = time.perf_counter()
    config = config.resolved()
    out = Path(config.out)
    dataset = load_dataset(config.dataset, Path(config.data_dir))  # before writing anything
    imaged = dataset.imaged_sections()
    # Read every section that can enter a fold now (the panel needs its counts anyway) and check its spots
    # against its image header, so malformed data stops the run before anything is written.
    for sid in imaged:
        check_spots_on_image(dataset[sid])
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(_merged_run_config(out, config), indent=1))
    except OSError as exc:
        raise OutputError.writing(out / "config.json", exc) from exc
    patient_of = {sid: dataset[sid].patient_id for sid in imaged}
    splits = {seed: load_or_create_split(out / "splits", config.dataset, config.protocol, seed, patient_of)
              for seed in config.seeds}
    for split in splits.values():
        if split.leaks_patients:
            log.warning("protocol %s keeps sibling sections of the test patient in training (leaks); "
                        "runs are tagged split_leaks_patients=true", config.protocol)
            break
    if config.folds is not None:
        known = sorted({f.index for split in splits.values() for f in split.folds})
        unknown = sorted(set(config.folds) - set(known))
        if unknown:
            raise ValueError(f"no fold(s) {unknown}: protocol {config.protocol} on {config.dataset} has folds "
                             f"{', '.join(map(str, known))}")
    store = PatchStore(Path(config.cache_dir))
    tracker = Tracker(config.tracking_uri, config.experiment, artifact_dir=out / "mlartifacts")
    panel = parse_panel(config.panel)
    panels: dict[tuple[int, int], list[str]] = {}

    for name in config.methods:
        method = make_method(config, name)
        profile = config.profile if method.profiles else "fixed"
        log.info("%s [%s profile]: %s", name, profile,
                 ", ".join(f"{k}={v}" for k, v in method.get_params().items()) or "no hyper-parameters")
    jobs = [(m, seed, fold) for m in config.methods for seed in config.seeds for fold in splits[seed].folds
            if config.folds is None or fold.index in config.folds]
    completed, skipped, failed, results = [], [], {}, []
    parents = {}
    bar = tqdm(jobs, desc="jobs", disable=not config.progress)
    try:
        for method_name, seed, fold in bar:
            key = JobKey(config.dataset, config.protocol, fold.index, method_name, seed)
            bar.set_postfix_str(str(key))
            folder = key.folder(out)
            try:
                method = make_method(config, method_name)
                if job_is_complete(folder, job_config_hash(config, method)):
                    skipped.append(str(key))
                    results.append(json.loads((folder / "result.json").read_text()))
                    continue
                panel_key = (seed, fold.index)
                if panel_key not in panels:  # the same panel for every method of a fold
                    panels[panel_key] = fold_panel(dataset, fold, panel)
                if method_name not in parents:
                    parents[method_name] = tracker.method_run(
                        method_name, {"method": method.get_params(), "benchmark": asdict(config)},
                        {"dataset": config.dataset, "protocol": config.protocol, **provenance.tags()})
                results.append(run_job(key, config, dataset, fold, splits[seed], panels[panel_key], store,
                                       tracker, parents[method_name]))
                completed.append(str(key))
            except (KeyboardInterrupt, DataError, OutputError):
                raise
            except Exception as exc:  # one failing job must not stop the others
                failed[str(key)] = f"{type(exc).__name__}: {exc}"
                log_path = out / "failures" / (str(key).replace("/", "__") + ".log")
                where = f"traceback in {log_path}"
                try:
                    log_path.parent.mkdir(exist_ok=True)
                    log_path.write_text(traceback.format_exc())
                except OSError as write_error:  # e.g. a full disk: the failure itself is still reported
                    where = f"traceback not saved: {write_error.strerror}"
                log.error("job %s failed: %s (%s)", key, exc, where)
    except BaseException:
        # The run stops here: no method's parent run may stay RUNNING or look FINISHED.
        for parent in parents.values():
            tracker.finish(parent, ok=False)
        raise
    # Every table under results/ comes from the job folders, exactly as `bench evaluate` makes them: those of
    # this run and any earlier run into the same folder with the same dataset, protocol and panel, so running
    # methods one at a time into one folder builds up one comparison instead of replacing it.
    folders = comparable_job_folders(out, config)
    if folders:
        summary = evaluate_run(out, folders, tracking_uri=config.tracking_uri).summary
    else:  # nothing completed: leave any earlier results and report as they are
        log.warning("no complete job to evaluate; %s left as it was", out / "results")
        summary = pd.DataFrame(columns=SUMMARY_COLUMNS)
    for method_name, parent in parents.items():
        rows = summary[summary["method"] == method_name]
        if len(rows):
            tracker.log_metric(parent, "mean_pcc_over_folds", float(rows["mean_pcc"].iloc[0]))
        tracker.finish(parent, ok=not any(k.split("/")[2] == method_name for k in failed))
    if folders:
        try:  # the report only reads the results written above: failing to draw it never loses them
            from bench.report import write_report

            write_report(out)
        except Exception as exc:
            log.warning("no report written (%s: %s); the results are in %s; retry with `python -m bench report %s`",
                        type(exc).__name__, exc, out / "results", out)
    timing = run_time_split(time.perf_counter() - started, [r for r in results if r.get("job_key") in completed])
    try:
        (out / "run_timing.json").write_text(json.dumps(timing, indent=1))
    except OSError as exc:  # the results are written; only this summary is lost
        log.warning("could not write %s: %s", out / "run_timing.json", exc)
    return BenchResult(out, completed, skipped, failed, summary, timing)


def run_time_split(wall_seconds: float, job_results: list[dict]) -> dict:
    """How the run's wall time splits into the methods' own fit/predict time (jobs run now) and everything
    else the suite did: loading, patches, metrics, statistics, MLflow and the report."""
    model = sum(r["timing"]["fit_seconds"] + r["timing"]["predict_seconds"] for r in job_results)
    harness = max(wall_seconds - model, 0.0)
    return {"wall_seconds": wall_seconds, "method_seconds": model, "harness_seconds": harness,
            "harness_share": harness / wall_seconds if wall_seconds > 0 else 0.0, "jobs_run": len(job_results)}
