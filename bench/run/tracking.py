"""MLflow tracking: one experiment per benchmark, a parent run per method, a nested run per job.

Default store: an embedded SQLite database under the output directory (``sqlite:///<out>/mlflow.db``,
artifacts in ``<out>/mlartifacts``); ``--tracking-uri`` points at a server instead. A run folder is
self-contained: MLflow records absolute artifact locations, so every command that opens a folder's own
store first points them at that folder (``anchor_artifacts``), and a moved or copied folder shows its own
artifacts, never the original's.

Only the driver writes to the store, whatever the executor. SQLite allows one writer at a time: eight
workers finishing together would queue on its lock and, past the lock timeout, lose runs. Instead the
driver creates each job's run before the job starts (its id travels with the job and is saved in its
``result.json``), and when the job's folder is complete it logs the job's parameters, scores, timing,
training curves and system metrics, which the worker saved in that folder. A run is SCHEDULED until then and
marked FINISHED only after everything is logged, so a driver killed in between leaves it unfinished, and
the next run of the same command logs the job into that same run (``log_job`` is idempotent per run).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
PARENT_TAG = "stbench.parent"  # marks a method's parent run
METHOD_TAG = "stbench.method"
JOB_TAG = "stbench.job"


ARTIFACTS_DIR = "mlartifacts"


def default_tracking_uri(out_dir: Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def is_own_store(tracking_uri: str, out_dir: Path) -> bool:
    """The run folder's own SQLite store (``<out>/mlflow.db``), whose artifacts live in the folder too."""
    return tracking_uri == default_tracking_uri(out_dir)


def anchor_artifacts(out_dir: Path) -> int:
    """Point the artifact locations recorded in ``<out>/mlflow.db`` at ``<out>/mlartifacts``; returns how
    many experiments changed (0 when the folder has not moved, or has no store yet).

    MLflow stores each experiment's and run's artifact location as an absolute path and offers no call to
    change it, so after a copy or move they would still name the original folder (and a rerun would write
    its artifacts there). The suite's experiments keep their artifacts in ``<folder>/mlartifacts``; the
    Default experiment (id 0, which MLflow creates in every new store, located under the working directory
    of the first process that opened it) is given ``<out>/mlartifacts/0`` so nothing of the run points
    outside its folder. Raw SQL on two columns of MLflow's schema (as the report reads tags with it)."""
    import sqlite3
    from contextlib import closing

    db = Path(out_dir).resolve() / "mlflow.db"
    if not db.is_file():
        return 0
    root = (db.parent / ARTIFACTS_DIR).as_uri()
    changed = moved = 0
    try:
        with closing(sqlite3.connect(db, timeout=30)) as con, con:  # one transaction
            for experiment_id, location in con.execute(
                    "SELECT experiment_id, artifact_location FROM experiments").fetchall():
                if str(experiment_id) == "0":
                    target = f"{root}/0"
                elif location and location.rstrip("/").endswith("/" + ARTIFACTS_DIR):
                    target = root
                else:  # an experiment someone created with a location of their own: left as it is
                    continue
                if location == target:
                    continue
                old = location.rstrip("/")
                # A location already anchored in another folder's mlartifacts: the folder was moved or copied.
                # (A new store's Default experiment starts under MLflow's own default: anchoring it is no move.)
                moved += old.endswith(("/" + ARTIFACTS_DIR, f"/{ARTIFACTS_DIR}/0"))
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                            (target, experiment_id))
                # Runs' locations are the experiment's plus "/<run id>/artifacts".
                con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                            "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                            (target, len(old) + 1, experiment_id, len(old) + 1, old + "/"))
                changed += 1
    except sqlite3.Error as exc:  # e.g. a read-only copy: its runs still open, its artifacts may not
        log.warning("%s: artifact locations not updated to this folder (%s); artifacts may point at the "
                    "folder it was copied from", db, exc)
        return 0
    if moved:
        log.info("%s: artifact locations now point into %s (the folder was moved or copied)", db,
                 db.parent / ARTIFACTS_DIR)
    return changed


def _quiet_mlflow() -> None:
    # Alembic's migration chatter on a new SQLite store is noise for a benchmark user.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, run_dir: Path):
        """The benchmark's experiment in ``tracking_uri``; artifacts of a new experiment go to
        ``<run_dir>/mlartifacts``."""
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)  # creates a new store's tables
        if is_own_store(tracking_uri, run_dir):
            anchor_artifacts(run_dir)
        if found is None:
            location = (Path(run_dir).resolve() / ARTIFACTS_DIR).as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id
        self.experiment = experiment

    def method_run(self, method: str, params: dict, tags: dict) -> str:
        """The parent run of a method, reused on a rerun of the same benchmark."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = 'true' and tags.`{METHOD_TAG}` = '{method}'",
            max_results=1)
        if runs:
            run_id = runs[0].info.run_id
        else:
            run = self.client.create_run(self.experiment_id, run_name=method,
                                         tags={PARENT_TAG: "true", METHOD_TAG: method, **_str_tags(tags)})
            run_id = run.info.run_id
            self.log_params(run_id, params)
        return run_id

    def start_job(self, parent_id: str, name: str, job_key: str, tags: dict) -> str:
        """The job's run, SCHEDULED until its result is logged. A run left unfinished by an interrupted
        attempt at the same job is reused, so each job has one run however often it was started."""
        for stale in self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{JOB_TAG}` = '{job_key}' and attributes.status != 'FINISHED' "
                              f"and attributes.status != 'FAILED'", max_results=1):
            self.set_tags(stale.info.run_id, tags)
            return stale.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": parent_id, JOB_TAG: job_key, **_str_tags(tags)})
        self.client.update_run(run.info.run_id, status="SCHEDULED")
        return run.info.run_id

    def is_finished(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            return self.client.get_run(run_id).info.status == "FINISHED"
        except Exception:  # not in this store (e.g. another --tracking-uri)
            return False

    def exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    def log_job(self, run_id: str, result: dict, params: dict, folder: Path, extra_artifacts: list[Path]) -> None:
        """Everything a job saved, in few round trips; then the run is FINISHED."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        numbers = {**result["scores"], **result["timing"], **{f"fact.{k}": v for k, v in result["facts"].items()}}
        for name, value in numbers.items():
            if _loggable(value):
                metrics.append(Metric(name, float(value), now, 0))
        for point in result.get("history", []):
            if _loggable(point["value"]):
                metrics.append(Metric(point["name"], float(point["value"]), now, int(point["step"])))
        for sample in result.get("system_metrics", []):
            for name, value in sample.items():
                if name not in ("step", "timestamp_ms") and _loggable(value):
                    metrics.append(Metric(f"system/{name}", float(value), int(sample["timestamp_ms"]),
                                          int(sample["step"])))
        existing = set(self.client.get_run(run_id).data.params)
        self.log_params(run_id, params, skip=existing)  # a param logged twice must keep its value
        for i in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        encoder = {k: result["facts"][k] for k in ("encoder", "encoder_weights_sha256", "encoder_pretrained",
                                                   "encoder_checkpoint") if result["facts"].get(k) is not None}
        self.set_tags(run_id, {"pretrained": result["facts"].get("pretrained", False),
                               "host": result.get("host", ""), "executor": result.get("executor", ""), **encoder})
        self.log_artifacts(run_id, folder)
        for path in extra_artifacts:
            self.log_artifact(run_id, path)
        self.finish(run_id, ok=True)

    def log_params(self, run_id: str, params: dict, skip: set = frozenset()) -> None:
        from mlflow.entities import Param

        flat = [Param(k, _short(v)) for k, v in _flatten(params).items() if k not in skip]
        for i in range(0, len(flat), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=flat[i:i + 100])

    def log_metric(self, run_id: str, key: str, value: float, step: int | None = None) -> None:
        if value is None or not math.isfinite(float(value)):
            return  # MLflow stores NaN poorly; undefined scores are kept in the job's own files
        self.client.log_metric(run_id, key, float(value), step=step or 0)

    def set_tags(self, run_id: str, tags: dict) -> None:
        for k, v in _str_tags(tags).items():
            self.client.set_tag(run_id, k, v)

    def log_artifacts(self, run_id: str, folder: Path) -> None:
        self.client.log_artifacts(run_id, str(folder))

    def log_artifact(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def finish(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def _loggable(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _str_tags(tags: dict) -> dict:
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in tags.items()}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return text if len(text) <= 6000 else text[:5990] + "..."


EVAL_JOB_METRICS = ("spot_pearson", "ari_prediction", "nmi_prediction", "ari_truth", "nmi_truth")


def log_evaluation(evaluation, tracking_uri: str) -> dict[str, int]:
    """Log an evaluation (``bench.evaluation.evaluate.Evaluation``): ``eval.<aggregate>`` on each job's MLflow
    run (``mlflow_run_id`` of its result.json) and the per-method mean, sd and CI on the method's parent run,
    with the patient-level aggregates (``eval.patient_<aggregate>``, ``_sd`` across patients, ``_ci_low`` /
    ``_ci_high`` across patients, ``_seed_sd``; ``eval.n_patients``). Runs that are not in the store are
    reported and skipped."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from bench.evaluation import stats  # here, not at the top: workers import this module and need no statistics

    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    # Every metric the evaluation computed (the registry's names, as evaluated), on every gene set.
    aggregates = stats.aggregate_columns(evaluation.settings.get("metrics"))
    job_metrics = [c for c in aggregates if c in evaluation.per_job] + list(EVAL_JOB_METRICS)
    now = int(time.time() * 1000)
    logged = {"jobs": 0, "methods": 0, "missing": 0}
    parents: dict[tuple, str] = {}

    def send(run_id: str, values: dict) -> None:
        batch = [Metric(f"eval.{k}", float(v), now, 0) for k, v in values.items()
                 if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)]
        for i in range(0, len(batch), 1000):  # MLflow caps a batch at 1000 metrics
            client.log_batch(run_id, metrics=batch[i:i + 1000])

    for row in evaluation.per_job.to_dict("records"):
        run_id = row.get("mlflow_run_id")
        if not run_id or not isinstance(run_id, str):
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            logged["missing"] += 1
            log.warning("job %s: MLflow run %s is not in %s; not logged", row["job_key"], run_id, tracking_uri)
            continue
        send(run_id, {k: row[k] for k in job_metrics})
        logged["jobs"] += 1
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            parents[(row["dataset"], row["protocol"], row["method"])] = parent
    for row in evaluation.per_method.to_dict("records"):
        parent = parents.get((row["dataset"], row["protocol"], row["method"]))
        if parent:
            names = [c for c in row if any(c.startswith(a) for a in aggregates)] + ["mean_rank"]
            # The patient level: per-section scores averaged within each patient, then over patients, with the
            # interval across patients (hierarchical bootstrap) and the training noise over seeds.
            names += [c for c in row if c.startswith("patient_")] + ["n_patients", "n_sections"]
            send(parent, {k: row[k] for k in names + ["spot_pearson", "ari_prediction", "nmi_prediction"]
                          if k in row})
            logged["methods"] += 1
    return logged

def log_evaluation_to_store(evaluation, run_dir: Path, tracking_uri: str | None = None) -> dict[str, int] | None:
    """``log_evaluation`` into the run's store (default ``sqlite:///<run_dir>/mlflow.db``); skipped with a
    warning when that store does not exist, and when nothing was evaluated."""
    if not len(evaluation.per_job):
        return None
    uri = tracking_uri or default_tracking_uri(run_dir)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        log.warning("no MLflow store at %s; scores written to %s only", uri, Path(run_dir) / "results")
        return None
    if is_own_store(uri, run_dir):
        anchor_artifacts(run_dir)
    evaluation.settings["mlflow"] = log_evaluation(evaluation, uri)
    return evaluation.settings["mlflow"]


TIMING_METRICS = ("wall_seconds", "method_seconds", "harness_seconds", "harness_share")


def log_run_summary(tracking_uri: str, parent_runs: dict[str, str], summary=None, timing: dict | None = None) -> None:
    """On each method's parent run (``RunRecord.parent_runs``): its headline ACG r at the patient level, as
    summary.csv, the terminal and the report give it, and the run's time split as ``run.*`` (the run as a
    whole has no MLflow run of its own)."""
    if not parent_runs:
        return
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)

    def send(run_id: str, key: str, value) -> None:
        if _loggable(value):
            client.log_metric(run_id, key, float(value))

    for method, parent in parent_runs.items():
        rows = summary[summary["method"] == method] if summary is not None and len(summary) else ()
        if len(rows):
            send(parent, "acg_pearson", rows["acg_pearson"].iloc[0])
        for name in TIMING_METRICS if timing else ():
            send(parent, f"run.{name}", timing[name])

