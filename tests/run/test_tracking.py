"""A run folder's MLflow store is self-contained: copied elsewhere, its runs open with their own artifacts."""
from __future__ import annotations

import logging
import shutil
import sqlite3

from bench.run.tracking import Tracker, anchor_artifacts, default_tracking_uri


def _locations(db) -> list[str]:
    with sqlite3.connect(db) as con:
        return [row[0] for row in con.execute("SELECT artifact_location FROM experiments UNION ALL "
                                              "SELECT artifact_uri FROM runs")]


def _log_one_job(run_dir, job_dir) -> str:
    tracker = Tracker(default_tracking_uri(run_dir), "stbench-test", run_dir)
    parent = tracker.method_run("m", {"alpha": 1}, {})
    run_id = tracker.start_job(parent, "m fold0", "ds/lopo/m/seed0/fold0", {"fold": 0})
    tracker.log_artifacts(run_id, job_dir)
    tracker.finish(run_id, ok=True)
    return run_id


def test_a_copied_run_folder_opens_its_runs_and_artifacts_after_the_original_is_deleted(tmp_path, monkeypatch, caplog):
    from mlflow.tracking import MlflowClient

    caplog.set_level(logging.INFO, logger="bench.run.tracking")

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # MLflow puts its Default experiment under the working directory of a new store
    job = tmp_path / "job"
    job.mkdir()
    (job / "result.json").write_text('{"scores": {"mean_pcc": 0.5}}')
    original = tmp_path / "original"
    run_id = _log_one_job(original, job)
    assert (original / "mlartifacts").is_dir()
    assert "moved or copied" not in caplog.text  # a first run in a new folder moved nothing

    copy = tmp_path / "shared" / "runs"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    assert anchor_artifacts(copy) >= 1  # what `bench ui`, `bench evaluate` and a rerun do when they open it
    assert "(the folder was moved or copied)" in caplog.text
    assert anchor_artifacts(copy) == 0  # once in place, nothing changes
    assert all(str(copy / "mlartifacts") in location for location in _locations(copy / "mlflow.db"))

    client = MlflowClient(tracking_uri=default_tracking_uri(copy))
    runs = client.search_runs([client.get_experiment_by_name("stbench-test").experiment_id])
    assert run_id in {r.info.run_id for r in runs}
    got = client.download_artifacts(run_id, "result.json", str(tmp_path))
    assert open(got).read() == '{"scores": {"mean_pcc": 0.5}}'

    # A rerun into the moved folder logs there too, never into the deleted original.
    (job / "result.json").write_text('{"scores": {"mean_pcc": 0.6}}')
    _log_one_job(copy, job)
    assert not original.exists()
    assert not any(cwd.iterdir()), "nothing of the run belongs in the working directory"
