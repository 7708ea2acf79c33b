"""Run a benchmark's jobs: plan every (method, seed, fold) job, run the missing ones, log each to MLflow.

``bench run`` composes the stages (``bench.pipeline.benchmark``): ``run_benchmark`` here, then the evaluation
(``bench.evaluation``), its MLflow logging, the report (``bench.report``) and ``finish_benchmark`` here.

The driver (this module) decides which jobs are missing (bench/run/job.py: a job is complete when its folder
holds a ``COMPLETE`` record with the checksum of every file), hands them to an executor
(bench/run/executors.py: this process, local worker processes, or SLURM) and, as each result arrives, logs
it to MLflow (bench/run/tracking.py: only the driver writes to the store). A failing job is reported with its
key and log and never written as a result; rerunning the same command runs only what is missing.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from bench.data.dataset import DataError, OutputError, check_section
from bench.data.locations import load_dataset
from bench.data.preprocess import DEFAULT_TARGET, parse_panel
from bench.data.splits import plan_split, save_split, split_path
from bench.errors import InputError
from bench.method import dataset_settings_note
from bench.records import COMPLETE, ConfigurationConflictError, JobKey, find_job_folders, job_is_complete
from bench.run import provenance
from bench.run.config import BenchConfig, job_resources, make_method
from bench.run.executors import run_jobs
from bench.run.inputs import fold_panel
from bench.run.job import JobSpec, job_config_hash
from bench.run.tracking import Tracker

log = logging.getLogger(__name__)
# Test hook: the driver kills itself (SIGKILL) right after the N-th job of this run is written, before it
# is logged, to prove that a run interrupted at the worst moment is completed by running it again.
KILL_AFTER_ENV = "STBENCH_TEST_KILL_AFTER_JOBS"


@dataclass
class BenchResult:
    out: Path
    completed: list[str]
    skipped: list[str]
    failed: dict[str, str]
    summary: pd.DataFrame | None = None  # one line per method, set by the evaluation that follows the jobs
    timing: dict = field(default_factory=dict)  # wall time of the run split into methods and harness
    failure_logs: dict[str, str] = field(default_factory=dict)  # job key -> path of its log
    config: BenchConfig | None = None
    started: float = 0.0  # time.perf_counter() when the run began
    driver: "_Run | None" = field(default=None, repr=False)  # the run's MLflow bookkeeping, until finished
    settings_text: str | None = None  # the comparison of settings, when the run folder holds more than one
    # Every job was complete and results/ and the report were made from exactly these job folders: nothing
    # was run, logged, evaluated or reported again (see ``record_made_from``).
    up_to_date: bool = False
    report: Path | None = None  # the report written (or found up to date), if any

    @property
    def ok(self) -> bool:
        return not self.failed


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
    """Complete job folders under ``out`` made with this run's dataset, protocol, gene panel and target."""
    scope = Path(out) / "jobs" / config.dataset / config.protocol.replace(":", "")
    folders = []
    for folder in find_job_folders(out):
        if scope not in folder.parents:
            continue
        try:
            benchmark = json.loads((folder / "config.json").read_text())["benchmark"]
            setting = (benchmark["panel"], benchmark.get("target", DEFAULT_TARGET))  # no target: made before it
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if setting == (config.panel, config.target):
            folders.append(folder)
    return folders


@dataclass
class _Prepared:
    """What a run needs before it may write anything: every check passed (``prepare_run``)."""

    dataset: object
    splits: dict  # seed -> Split (new ones not yet written)
    panels: dict  # (seed, fold index) -> gene panel of that fold


def prepare_run(config: BenchConfig) -> _Prepared:
    """Load the dataset and run every check a run depends on, writing nothing: each section's data
    (``check_section``), the splits (made in memory), the folds asked for, and each fold's gene panel
    against the data. A run that fails here leaves no file, no MLflow store and no split behind."""
    dataset = load_dataset(config.dataset, Path(config.data_dir), config.data_options)
    imaged = dataset.imaged_sections()
    if not imaged:
        raise DataError(f"dataset {config.dataset}: none of its {len(dataset.sections)} section(s) has an image; "
                        f"image-based folds need at least two")
    for sid in imaged:  # the panel needs every section's counts anyway
        check_section(dataset[sid])
    log.info("dataset %s: %d section(s) with an image from %d patient(s); patients: %s", config.dataset,
             len(imaged), len({dataset[s].patient_id for s in imaged}), dataset.patients_from)
    if dataset.patients_unknown:
        log.warning("%s: if two sections come from one patient, %s keeps one in training while testing the "
                    "other, and the leak status cannot tell. Name the patient column with --data-option "
                    "patient_key=<column> (h5ad)", dataset.patients_unknown_note(), config.protocol)
    patient_of = {sid: dataset[sid].patient_id for sid in imaged}
    splits = {seed: plan_split(Path(config.out) / "splits", config.dataset, config.protocol, seed, patient_of,
                               published=dataset.published_sections)
              for seed in config.seeds}
    if config.folds is not None:
        known = sorted({f.index for split in splits.values() for f in split.folds})
        unknown = sorted(set(config.folds) - set(known))
        if unknown:
            raise InputError(f"no fold(s) {unknown}: protocol {config.protocol} on {config.dataset} has folds "
                             f"{', '.join(map(str, known))}")
    panel = parse_panel(config.panel)
    panels = {}
    for seed, split in splits.items():
        for fold in split.folds:
            if config.folds is None or fold.index in config.folds:
                panels[(seed, fold.index)] = fold_panel(dataset, fold, panel)
    return _Prepared(dataset, splits, panels)


def run_benchmark(config: BenchConfig) -> BenchResult:
    """Run every missing job. Bad input (``DataError``) or results that cannot be written (``OutputError``)
    stop the run before any job, since every job would fail the same way, and inside a job too, under every
    executor; any other error inside a job fails only that job (bench/run/executors.py). Nothing is written
    until every check has passed (``prepare_run``)."""
    started = time.perf_counter()
    if not config.planned:  # the pipeline passes a plan; a config made in code is resolved here, once
        config = config.resolved()
    out = Path(config.out)
    done = _complete_and_reported(config)
    if done is not None:
        log.info("every job is complete and %s and the report were made from them: nothing to do", out / "results")
        return BenchResult(out, [], done, {}, config=config, started=started, up_to_date=True,
                           report=out / "report.html")
    prepared = prepare_run(config)
    dataset, splits = prepared.dataset, prepared.splits
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(_merged_run_config(out, config), indent=1))
    except OSError as exc:
        raise OutputError.writing(out / "config.json", exc) from exc
    for split in splits.values():
        try:
            save_split(split)
        except OSError as exc:
            raise OutputError.writing(split.path, exc) from exc
    if any(split.leaks_patients for split in splits.values()):
        log.warning("protocol %s keeps sibling sections of the test patient in training (leaks); "
                    "runs are tagged split_leaks_patients=true", config.protocol)
    if config.max_train_spots is not None:
        log.info("training on at most %d spots per fold (the same for every method; --max-train-spots; the %s "
                 "profile's budget), testing on every test spot", config.max_train_spots, config.profile)
    tracker = Tracker(config.tracking_uri, config.experiment, out)
    for name in config.methods:
        method = make_method(config, name)
        profile = config.profile if method.profiles else "fixed"
        note = dataset_settings_note(type(method), config.profile, config.dataset)
        if note:
            log.info("%s [%s profile]: %s", name, profile, note)
        log.info("%s [%s profile]: %s", name, profile,
                 ", ".join(f"{k}={v}" for k, v in method.get_params().items()) or "no hyper-parameters")

    run = _Run(config, tracker, splits, prepared.panels)
    try:
        specs = run.plan(dataset)
        log.info("%d job(s) to run, %d already complete (executor %s%s)", len(specs), len(run.skipped),
                 config.executor, f", {config.jobs} at once" if config.executor == "local" else "")
        run_jobs(config, specs, run.on_done, run.on_failed, dataset=dataset)
    except BaseException as exc:
        # The run stops here (bad input, a full disk, Ctrl-C): no run it made may stay open or look FINISHED.
        run.close_unfinished(f"the run stopped: {type(exc).__name__}: {exc}"[:500])
        raise
    return BenchResult(out, run.completed, run.skipped, run.failed, failure_logs=run.failure_logs, config=config,
                       started=started, driver=run)


# Written by ``record_made_from`` when a run has evaluated, logged and reported its job folders.
MADE_FROM = "made_from.json"


def _made_from(out: Path, config: BenchConfig, folders: list[Path]) -> dict:
    """What the run folder's results/ and report.html were made from: each job folder's COMPLETE record
    (which holds the checksum of every file), the suite's version and the MLflow store they were logged to;
    and, to notice a later `bench evaluate` or `bench report`, the size and time of summary.csv and the
    report."""
    import hashlib

    from bench import __version__

    def stat(path: Path) -> list[int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    jobs = {}
    for folder in folders:
        jobs[folder.relative_to(out).as_posix()] = hashlib.sha256((folder / COMPLETE).read_bytes()).hexdigest()
    return {"version": __version__, "tracking_uri": config.tracking_uri, "jobs": jobs,
            "summary": stat(out / "results" / "summary.csv"), "report": stat(out / "report.html")}


def record_made_from(out: Path, config: BenchConfig, folders: list[Path]) -> None:
    """Record, once results/ and report.html are written and logged, which job folders they come from: a
    rerun that finds every job complete and this record current does nothing but print the results."""
    try:
        (out / "results" / MADE_FROM).write_text(json.dumps(_made_from(out, config, folders), indent=1))
    except OSError as exc:  # only the shortcut of the next rerun is lost
        log.warning("could not write %s: %s", out / "results" / MADE_FROM, exc)


def _complete_and_reported(config: BenchConfig) -> list[str] | None:
    """The keys of this run's jobs when there is nothing to do: every split file is there, every job is
    complete, and results/ and the report were made from exactly the comparable job folders there are now
    (``record_made_from``). None otherwise (including anything wrong, which the full run then reports).
    Reads no counts or images (the dataset is opened for its section and patient names only): the data
    checks of ``prepare_run`` are for jobs still to run."""
    out = Path(config.out)
    try:
        recorded = json.loads((out / "results" / MADE_FROM).read_text())
        dataset = load_dataset(config.dataset, Path(config.data_dir), config.data_options)
        patient_of = {sid: dataset[sid].patient_id for sid in dataset.imaged_sections()}
        keys = []
        for seed in config.seeds:
            if not split_path(out / "splits", config.dataset, config.protocol, seed).is_file():
                return None
            split = plan_split(out / "splits", config.dataset, config.protocol, seed, patient_of)
            for method_name in config.methods:
                config_hash = job_config_hash(config, make_method(config, method_name))
                for fold in split.folds:
                    if config.folds is not None and fold.index not in config.folds:
                        continue
                    key = JobKey(config.dataset, config.protocol, fold.index, method_name, seed)
                    if not job_is_complete(key.folder(out), config_hash):
                        return None
                    keys.append(str(key))
        current = _made_from(out, config, comparable_job_folders(out, config))
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    return keys if current == recorded and current["report"] and current["summary"] else None


def finish_benchmark(result: BenchResult, summary: pd.DataFrame | None) -> BenchResult:
    """Close the run after its results are evaluated: each method's parent run gets its mean PCC over folds
    and is marked FINISHED (FAILED when one of its jobs failed)."""
    run = result.driver
    result.summary = summary
    for method_name, parent in run.parents.items():
        rows = summary[summary["method"] == method_name] if summary is not None else ()
        if len(rows):
            # The headline ACG r (patient level), as summary.csv, the terminal and the report give it.
            run.tracker.log_metric(parent, "acg_pearson", float(rows["acg_pearson"].iloc[0]))
        run.tracker.finish(parent, ok=not any(k.split("/")[2] == method_name for k in run.failed))
    return result


def record_timing(result: BenchResult) -> dict:
    """The run's wall time split into the methods' time and the suite's (``run_timing.json``, and ``run.*``
    on every method's parent run); call it last, so the evaluation and the report count as the suite's."""
    run, config = result.driver, result.config
    timing = run_time_split(time.perf_counter() - result.started,
                            [r for r in run.results if r["job_key"] in run.completed],
                            parallel=config.jobs if config.executor == "local" else None)
    try:
        (result.out / "run_timing.json").write_text(json.dumps(timing, indent=1))
    except OSError as exc:  # the results are written; only this summary is lost
        log.warning("could not write %s: %s", result.out / "run_timing.json", exc)
    _log_timing(run.tracker, run.parents, timing)
    result.timing = timing
    return timing


class _Run:
    """The driver's bookkeeping for one run: which jobs to run, and what to do as each one ends."""

    def __init__(self, config: BenchConfig, tracker: Tracker, splits: dict, panels: dict):
        self.config, self.tracker, self.splits, self.panels = config, tracker, splits, panels
        self.out = Path(config.out)
        self.completed: list[str] = []
        self.skipped: list[str] = []
        self.failed: dict[str, str] = {}
        self.failure_logs: dict[str, str] = {}
        self.results: list[dict] = []
        self.parents: dict[str, str] = {}
        self.kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
        self.planned: list[JobSpec] = []

    def parent(self, method_name: str) -> str:
        if method_name not in self.parents:
            method = make_method(self.config, method_name)
            note = dataset_settings_note(type(method), self.config.profile, self.config.dataset)
            self.parents[method_name] = self.tracker.method_run(
                method_name, {"method": method.get_params(), "benchmark": asdict(self.config)},
                {"dataset": self.config.dataset, "protocol": self.config.protocol,
                 **({"dataset_settings": note} if note else {}), **provenance.tags()})
        return self.parents[method_name]

    def plan(self, dataset) -> list[JobSpec]:
        """Specs of the jobs that are not complete, each with its MLflow run made; complete jobs are
        collected (and logged, if an interrupted run wrote them but did not log them)."""
        config = self.config
        panels = self.panels  # (seed, fold) -> the same panel for every method of a fold, made by prepare_run
        threads = config.threads
        for method_name in config.methods:
            method = make_method(config, method_name)
            config_hash = job_config_hash(config, method)
            for seed in config.seeds:
                split = self.splits[seed]
                for fold in split.folds:
                    if config.folds is not None and fold.index not in config.folds:
                        continue
                    key = JobKey(config.dataset, config.protocol, fold.index, method_name, seed)
                    try:
                        if job_is_complete(key.folder(self.out), config_hash):
                            self._collect_complete(key, split)
                            continue
                    except ConfigurationConflictError as exc:  # made with another configuration: never overwritten
                        self.failed[str(key)] = str(exc)
                        log.error("job %s: %s", key, exc)
                        continue
                    if config.executor == "slurm" and config.threads is None:
                        threads = int(job_resources(config, method_name)["cpus"])  # the job's allocation
                    run_id = self.tracker.start_job(self.parent(method_name), f"{method_name} fold{fold.index} "
                                                    f"seed{seed}", str(key), {
                        "seed": seed, "fold": fold.index, "split_sha256": split.sha256, "device": config.device,
                        "profile": config.profile, "target": config.target,
                        "split_leaks_patients": split.leaks_patients,
                        "patients_from": dataset.patients_from, **provenance.tags()})
                    self.planned.append(JobSpec(config=asdict(config), key=key, fold=fold,
                                         genes=panels[(seed, fold.index)], split_path=str(split.path),
                                         split_sha256=split.sha256, split_leaks_patients=split.leaks_patients,
                                         threads=threads, mlflow_run_id=run_id))
        return self.planned

    def _collect_complete(self, key: JobKey, split) -> None:
        folder = key.folder(self.out)
        result = json.loads((folder / "result.json").read_text())
        self.skipped.append(str(key))
        self.results.append(result)
        run_id = result.get("mlflow_run_id")
        if self.tracker.exists(run_id) and not self.tracker.is_finished(run_id):
            log.info("job %s was complete but not logged (interrupted run); logging it now", key)
            self._log(key, result, split)

    def on_done(self, spec: JobSpec, result: dict) -> None:
        self.completed.append(str(spec.key))
        self.results.append(result)
        t = result["timing"]
        pcc = result["scores"].get("acg_pearson", result["scores"].get("mean_pcc"))  # mean_pcc: older folders
        log.info("job %s done: ACG r %s, fit %.1f s, predict %.1f s", spec.key,
                 "undefined" if pcc is None or pcc != pcc else f"{pcc:.4f}", t["fit_seconds"], t["predict_seconds"])
        if self.kill_after and len(self.completed) == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self._log(spec.key, result, self.splits[spec.key.seed])

    def _log(self, key: JobKey, result: dict, split) -> None:
        folder = key.folder(self.out)
        job_config = json.loads((folder / "config.json").read_text())
        self.tracker.log_job(result["mlflow_run_id"], result,
                             {"method": job_config["method_params"], "benchmark": job_config["benchmark"]},
                             folder, [split.path])

    def close_unfinished(self, reason: str) -> None:
        """Mark FAILED every job run this run planned that has no result logged, and every parent run."""
        for spec in self.planned:
            if str(spec.key) not in self.completed and str(spec.key) not in self.failed:
                self.tracker.set_tags(spec.mlflow_run_id, {"error": reason})
                self.tracker.finish(spec.mlflow_run_id, ok=False)
        for parent in self.parents.values():
            self.tracker.finish(parent, ok=False)

    def on_failed(self, spec: JobSpec, message: str, log_path: Path) -> None:
        key = str(spec.key)
        self.failed[key] = message
        self.failure_logs[key] = str(log_path)
        log.error("job %s failed: %s (log: %s)", key, message, log_path)
        self.tracker.set_tags(spec.mlflow_run_id, {"error": message[:500], "log": str(log_path)})
        if Path(log_path).is_file():
            self.tracker.log_artifact(spec.mlflow_run_id, log_path)
        self.tracker.finish(spec.mlflow_run_id, ok=False)


def _log_timing(tracker: Tracker, parents: dict, timing: dict) -> None:
    """The run's time split, on every method's parent run (the run as a whole has no run of its own)."""
    for parent in parents.values():
        for name in ("wall_seconds", "method_seconds", "harness_seconds", "harness_share"):
            tracker.log_metric(parent, f"run.{name}", timing[name])


def run_time_split(wall_seconds: float, job_results: list[dict], parallel: int | None = 1) -> dict:
    """How the run's wall time splits into the methods' own fit/predict time (jobs run now; with the frozen
    encoders' forward passes, which are the methods' cost though cached) and everything else the suite did:
    loading, patches, metrics, statistics, MLflow and the report.

    With N local jobs at once, the methods' time is their summed time divided by N (jobs overlap), so the
    suite's share is an estimate; on SLURM (``parallel=None``) the jobs' time is not part of the driver's
    wall time, and only the sum is reported."""
    model = sum(r["timing"]["fit_seconds"] + r["timing"]["predict_seconds"] + r["timing"].get("embedding_seconds", 0)
                for r in job_results)
    if parallel is None:
        return {"wall_seconds": wall_seconds, "method_seconds": model, "harness_seconds": None,
                "harness_share": None, "jobs_run": len(job_results), "parallel": None}
    overlapped = model / max(1, min(parallel, len(job_results) or 1))
    harness = max(wall_seconds - overlapped, 0.0)
    return {"wall_seconds": wall_seconds, "method_seconds": overlapped, "harness_seconds": harness,
            "harness_share": harness / wall_seconds if wall_seconds > 0 else 0.0, "jobs_run": len(job_results),
            "parallel": parallel, "method_seconds_summed": model}
