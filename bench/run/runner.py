"""Run a benchmark's jobs: plan every (method, seed, fold) job, run the missing ones, log each to MLflow.

``bench run`` composes the stages (``bench.pipeline.benchmark``): ``run_benchmark`` here returns a plain
``RunRecord`` (jobs done, failed, their results) with every MLflow run it opened closed; the evaluation, its
MLflow logging and the report follow in the pipeline, which alone decides whether anything is to do.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.data.dataset import DataError, OutputError, check_section
from bench.data.locations import load_dataset
from bench.data.preprocess import parse_panel
from bench.data.splits import plan_split, save_split, split_path
from bench.errors import InputError
from bench.method import dataset_settings_note
from bench.records import ConfigurationConflictError, JobKey, Setting, check_layout, job_is_complete
from bench.registry import get_method_class
from bench.run import provenance
from bench.run.config import BenchConfig, job_resources, planned_params
from bench.run.executors import run_jobs
from bench.run.inputs import fold_panel
from bench.run.job import JobSpec, job_config_hash, saved_result
from bench.run.tracking import Tracker

log = logging.getLogger(__name__)
# Test hook: the driver kills itself (SIGKILL) right after the N-th job of this run is written, before it
# is logged, to prove that a run interrupted at the worst moment is completed by running it again.
KILL_AFTER_ENV = "STBENCH_TEST_KILL_AFTER_JOBS"


@dataclass
class RunRecord:
    """What the jobs stage hands down: plain values, every MLflow run it opened already closed."""

    out: Path
    completed: list[str]  # job keys run now
    skipped: list[str]  # job keys found complete
    failed: dict[str, str]  # job key -> why
    failure_logs: dict[str, str] = field(default_factory=dict)  # job key -> path of its log
    results: list[dict] = field(default_factory=list)  # result.json of each job run now, with its scores
    parent_runs: dict[str, str] = field(default_factory=dict)  # method -> its MLflow parent run's id

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


def run_benchmark(config: BenchConfig) -> RunRecord:
    """Run every missing job of a resolved configuration (``BenchConfig.resolved``) and close every MLflow
    run it opened. Bad input (``DataError``) or results that cannot be written (``OutputError``) stop the run
    before any job, since every job would fail the same way, and inside a job too, under every executor; any
    other error inside a job fails only that job (bench/run/executors.py). Nothing is written until every
    check has passed (``prepare_run``)."""
    out = Path(config.out)
    check_layout(out)
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
        cls = get_method_class(name)
        profile = config.profile if cls.profiles else "fixed"
        note = dataset_settings_note(cls, config.profile, config.dataset)
        if note:
            log.info("%s [%s profile]: %s", name, profile, note)
        log.info("%s [%s profile]: %s", name, profile,
                 ", ".join(f"{k}={v}" for k, v in planned_params(config, name).items()) or "no hyper-parameters")

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
    run.close_parents()
    return RunRecord(out, run.completed, run.skipped, run.failed, failure_logs=run.failure_logs,
                     results=[r for r in run.results if r["job_key"] in run.completed], parent_runs=dict(run.parents))


def complete_job_keys(config: BenchConfig) -> list[str] | None:
    """The keys of every job of this run when each one is complete (its split file is there and its folder
    holds a current ``COMPLETE`` record); None otherwise, including anything unreadable (the full run then
    reports it). Reads no counts or images: the dataset is opened for its section and patient names only."""
    out = Path(config.out)
    setting = Setting.of(config)
    try:
        check_layout(out)
        dataset = load_dataset(config.dataset, Path(config.data_dir), config.data_options)
        patient_of = {sid: dataset[sid].patient_id for sid in dataset.imaged_sections()}
        keys = []
        for seed in config.seeds:
            if not split_path(out / "splits", config.dataset, config.protocol, seed).is_file():
                return None
            split = plan_split(out / "splits", config.dataset, config.protocol, seed, patient_of)
            for method_name in config.methods:
                config_hash = job_config_hash(config, planned_params(config, method_name))
                for fold in split.folds:
                    if config.folds is not None and fold.index not in config.folds:
                        continue
                    key = JobKey(config.dataset, setting, fold.index, method_name, seed)
                    if not job_is_complete(key.folder(out), config_hash):
                        return None
                    keys.append(str(key))
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    return keys


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
            note = dataset_settings_note(get_method_class(method_name), self.config.profile, self.config.dataset)
            self.parents[method_name] = self.tracker.method_run(
                method_name, {"method": planned_params(self.config, method_name), "benchmark": asdict(self.config)},
                {"dataset": self.config.dataset, "protocol": self.config.protocol,
                 **({"dataset_settings": note} if note else {}), **provenance.tags()})
        return self.parents[method_name]

    def plan(self, dataset) -> list[JobSpec]:
        """Specs of the jobs that are not complete, each with its MLflow run made; complete jobs are
        collected (and logged, if an interrupted run wrote them but did not log them)."""
        config = self.config
        panels = self.panels  # (seed, fold) -> the same panel for every method of a fold, made by prepare_run
        threads = config.threads
        setting = Setting.of(config)
        for method_name in config.methods:
            config_hash = job_config_hash(config, planned_params(config, method_name))
            for seed in config.seeds:
                split = self.splits[seed]
                for fold in split.folds:
                    if config.folds is not None and fold.index not in config.folds:
                        continue
                    key = JobKey(config.dataset, setting, fold.index, method_name, seed)
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
        result = saved_result(folder)
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

    def close_parents(self) -> None:
        """Each method's parent run FINISHED, or FAILED when one of its jobs failed (the evaluation logged
        later on a closed run is still accepted: MLflow refuses only deleted runs)."""
        for method_name, parent in self.parents.items():
            self.tracker.finish(parent, ok=not any(k.split("/")[2] == method_name for k in self.failed))

    def on_failed(self, spec: JobSpec, message: str, log_path: Path) -> None:
        key = str(spec.key)
        self.failed[key] = message
        self.failure_logs[key] = str(log_path)
        log.error("job %s failed: %s (log: %s)", key, message, log_path)
        self.tracker.set_tags(spec.mlflow_run_id, {"error": message[:500], "log": str(log_path)})
        if Path(log_path).is_file():
            self.tracker.log_artifact(spec.mlflow_run_id, log_path)
        self.tracker.finish(spec.mlflow_run_id, ok=False)


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
