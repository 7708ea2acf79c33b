"""MLflow tracking: one experiment per benchmark, a parent run per method, a nested run per job.

Default store: an embedded SQLite database under the output directory (``sqlite:///<out>/mlflow.db``,
artifacts in ``<out>/mlartifacts``); ``--tracking-uri`` points at a server instead. The client API is
used directly (no global "active run"), so jobs in other processes or on a cluster can log too.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)
PARENT_TAG = "stbench.parent"  # marks a method's parent run
METHOD_TAG = "stbench.method"
JOB_TAG = "stbench.job"


def default_tracking_uri(out_dir: Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def _quiet_mlflow() -> None:
    # Alembic's migration chatter on a new SQLite store is noise for a benchmark user.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_dir: Path | None = None):
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = Path(artifact_dir).resolve().as_uri() if artifact_dir else None
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
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": parent_id, JOB_TAG: job_key, **_str_tags(tags)})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        flat = [Param(k, _short(v)) for k, v in _flatten(params).items()]
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
