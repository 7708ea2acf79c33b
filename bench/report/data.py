"""What the report reads: the saved results of a run, nothing recomputed beyond plotting.

Sources: ``<run-dir>/results/*`` (written by ``bench.evaluation.evaluate``), ``<run-dir>/config.json``, and each
evaluated job folder's ``result.json``, ``config.json`` and ``predictions.npz`` (for maps and timing).
Git commit and package versions are the tags the runner put on each job's MLflow run; they are read from
the run's own SQLite store, read-only (a remote tracking server is never contacted).
"""
from __future__ import annotations

import json
import logging
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import MissingFileError

log = logging.getLogger(__name__)
RESULT_FILES = ("per_method.parquet", "per_job.parquet", "per_gene.parquet", "pairwise.parquet",
                "clustering.parquet", "per_patient.parquet", "patient_pairwise.parquet", "friedman.json")
TABLES = ("per_method", "per_job", "per_gene", "pairwise", "clustering", "per_patient", "patient_pairwise")
SPOT_ID = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*x\s*(-?\d+(?:\.\d+)?)\s*$")


@dataclass
class RunResults:
    run_dir: Path
    config: dict
    per_method: pd.DataFrame
    per_job: pd.DataFrame
    per_gene: pd.DataFrame
    pairwise: pd.DataFrame
    friedman: dict
    clustering: pd.DataFrame
    per_patient: pd.DataFrame = field(default_factory=pd.DataFrame)  # method x patient (bench.evaluation.patients)
    patient_pairwise: pd.DataFrame = field(default_factory=pd.DataFrame)  # per pair: paired over patients
    jobs: dict[str, dict] = field(default_factory=dict)  # job_key -> {"folder", "result", "job_config"}
    mlflow_tags: dict[str, dict] = field(default_factory=dict)  # run id -> tags

    @property
    def methods(self) -> list[str]:
        """Methods in the order of the run's configuration, then any others in the order evaluated."""
        listed = [m for m in self.config.get("methods", []) if m in set(self.per_method["method"])]
        return listed + [m for m in self.per_method["method"] if m not in listed]

    def kinds(self) -> dict[str, str]:
        return dict(zip(self.per_method["method"], self.per_method["kind"].astype(str)))


def missing_results(run_dir: Path) -> list[Path]:
    results = Path(run_dir) / "results"
    return [results / name for name in RESULT_FILES if not (results / name).is_file()]


def load_results(run_dir: Path) -> RunResults:
    """The run's saved tables. The report only reads them: a missing one is an error naming the command that
    makes it (``bench evaluate``, or ``bench run`` for a folder without jobs)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"{run_dir}: no such run folder")
    missing = missing_results(run_dir)
    if missing:
        make = (f"python -m bench evaluate {run_dir}" if (run_dir / "jobs").is_dir()
                else f"python -m bench run --out {run_dir}")
        raise MissingFileError(f"{missing[0]}: missing; make it with `{make}`, then draw the report again")
    results = run_dir / "results"
    tables = {name: pd.read_parquet(results / f"{name}.parquet") for name in TABLES}
    if tables["per_method"].empty:
        raise MissingFileError(f"{results / 'per_method.parquet'}: no evaluated job (is jobs/ empty?)")
    friedman = json.loads((results / "friedman.json").read_text())
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    out = RunResults(run_dir, config, friedman=friedman, **tables)
    out.jobs = _job_records(run_dir, out.per_job)
    # The run folder's own store first (it moves with the folder), else the one the run was configured with.
    own = run_dir / "mlflow.db"
    uri = f"sqlite:///{own.resolve()}" if own.is_file() else config.get("tracking_uri")
    out.mlflow_tags = _mlflow_tags(uri, list(out.per_job["mlflow_run_id"].dropna()))
    return out


def _job_records(run_dir: Path, per_job: pd.DataFrame) -> dict[str, dict]:
    from bench.records import job_folder

    records = {}
    for row in per_job.to_dict("records"):
        folder = job_folder(run_dir, row["job_key"])
        record = {"folder": folder, "result": {}, "job_config": {}}
        for name, key in (("result.json", "result"), ("config.json", "job_config")):
            try:
                record[key] = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                log.warning("%s: unreadable; left out of the report", folder / name)
        records[row["job_key"]] = record
    return records


def _mlflow_tags(tracking_uri: str | None, run_ids: list[str]) -> dict[str, dict]:
    """Tags of these runs from a local SQLite MLflow store, opened read-only; {} for anything else."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///") or not run_ids:
        return {}
    path = Path(tracking_uri[len("sqlite:///"):])
    if not path.is_file():
        return {}
    tags: dict[str, dict] = {}
    try:
        with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as db:
            marks = ",".join("?" * len(run_ids))
            for run_id, key, value in db.execute(
                    f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({marks})", run_ids):
                tags.setdefault(run_id, {})[key] = value
    except sqlite3.Error as exc:
        log.warning("%s: MLflow tags not readable (%s); provenance from the job folders only", path, exc)
        return {}
    return tags


def load_predictions(folder: Path) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / "predictions.npz", allow_pickle=False) as saved:
        return {k: saved[k] for k in saved.files}


def job_coordinates(arrays, rows) -> np.ndarray | None:
    """Array coordinates of the given rows of a job's predictions: saved with the predictions, or (runs
    written before they were saved) parsed from the spot ids."""
    if "array_coords" in arrays:
        return np.asarray(arrays["array_coords"], dtype=np.float64)[rows]
    return spot_coordinates(np.asarray(arrays["spot_ids"])[rows])


def spot_coordinates(spot_ids) -> np.ndarray | None:
    """Array coordinates from spot ids of the form ``<x>x<y>`` (ST arrays, the synthetic data); None when
    any id is not of that form."""
    xy = []
    for spot in np.asarray(spot_ids, dtype=str):
        match = SPOT_ID.match(spot)
        if not match:
            return None
        xy.append((float(match.group(1)), float(match.group(2))))
    return np.array(xy, dtype=np.float64).reshape(-1, 2)


def distinct(values) -> list[str]:
    """Distinct non-empty values as text, in first-seen order."""
    seen: dict[str, None] = {}
    for v in values:
        if v is not None and str(v) != "":
            seen.setdefault(str(v), None)
    return list(seen)


def score_column(per_method: pd.DataFrame) -> str:
    """What methods are ranked by: the patient-level ACG r (per-section r averaged within each patient, then
    over patients); the pooled per-fold ACG r for results written before it existed."""
    return "patient_acg_pearson" if "patient_acg_pearson" in per_method else "acg_pearson"


def ranked_methods(per_method: pd.DataFrame) -> pd.DataFrame:
    """Methods by ``score_column``, best first; undefined scores last (stable otherwise)."""
    key = per_method[score_column(per_method)].astype(float).fillna(-np.inf)
    return per_method.assign(_key=key).sort_values("_key", ascending=False, kind="stable").drop(columns="_key")


def contenders(per_method: pd.DataFrame) -> pd.DataFrame:
    """Ranked methods that can win: real methods with a defined score (controls only when there are none)."""
    ranked = ranked_methods(per_method)
    defined = ranked[np.isfinite(ranked[score_column(per_method)].astype(float))]
    real = defined[defined["kind"] == "method"]
    return real if len(real) else defined
