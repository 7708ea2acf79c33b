"""Executors and crash-proof resume: parallel local jobs, a driver or a worker killed with SIGKILL.

Every run here goes through the command line in a subprocess, as a user would run it, so a SIGKILL
really ends the driver's process.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import SUICIDAL_METHOD

from bench.records import JobKey, Setting

SETTING = Setting("lopo", "top-mean:40")
SUICIDAL = str(JobKey("synthetic", SETTING, 0, "suicidal", 0))  # SETTING: bench_run's

# Every test runs `bench run` in subprocesses, several of them in parallel or killed: out of the fast loop.
pytestmark = pytest.mark.slow
METHODS = "mean,mclstexp"
MCLSTEXP_FAST = ["--set", "mclstexp.epochs=1", "--set", "mclstexp.patch_px=32", "--set", "mclstexp.top_k=20",
                 "--folds", "0,1"]

def bench_run(out, *args, env=None, timeout=600):
    command = [sys.executable, "-m", "bench", "run", "--dataset", "synthetic", "--panel", "top-mean:40",
               "--pretrained", "no", "--no-progress", "--out", str(out), "--cache-dir", str(Path(out).parent / "cache"),
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def job_keys(methods=("mean", "mclstexp"), folds=(0, 1)):
    return [JobKey("synthetic", SETTING, f, m, 0) for m in methods for f in folds]


def scores(out) -> pd.DataFrame:
    """Every per-gene number of a run, in a fixed order, without run-specific ids."""
    table = pd.read_parquet(Path(out) / "results" / "per_gene.parquet")
    return table.sort_values(["method", "fold", "gene"]).reset_index(drop=True)


def job_runs(out) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{Path(out) / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["stbench-synthetic-lopo"])
    return runs[runs["tags.stbench.job"].notna()]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential") / "run"
    done = bench_run(out, "--methods", METHODS, *MCLSTEXP_FAST)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_parallel_jobs_give_the_results_of_one_at_a_time(sequential, tmp_path):
    out = tmp_path / "run"
    done = bench_run(out, "--methods", METHODS, *MCLSTEXP_FAST, "--jobs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 job(s) run, 0 already complete, 0 failed" in done.stdout
    pd.testing.assert_frame_equal(scores(out), scores(sequential))
    for key in job_keys():
        ours = np.load(key.folder(out) / "predictions.npz")["prediction"]
        theirs = np.load(key.folder(sequential) / "predictions.npz")["prediction"]
        assert np.array_equal(ours, theirs), key
    runs = job_runs(out)
    assert len(runs) == 4 and (runs["status"] == "FINISHED").all()
    assert runs["metrics.system/cpu_utilization_percentage"].notna().any()
    # Each job ran in its own process, with its own log.
    assert len(list((out / "executor").glob("local-*/*_log.err"))) == 4


def test_a_driver_killed_after_two_jobs_is_finished_by_running_again(sequential, tmp_path):
    out = tmp_path / "run"
    killed = bench_run(out, "--methods", METHODS, *MCLSTEXP_FAST, env={"STBENCH_TEST_KILL_AFTER_JOBS": "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    complete = [k for k in job_keys() if (k.folder(out) / "COMPLETE").is_file()]
    assert len(complete) == 2
    written = {k: (k.folder(out) / "COMPLETE").stat().st_mtime_ns for k in complete}
    # Every job got its run when it was planned; the second job was written but never logged.
    runs = job_runs(out).set_index("tags.stbench.job")["status"]
    assert sorted(runs.index) == sorted(map(str, job_keys()))
    assert sorted(runs[[str(k) for k in complete]]) == ["FINISHED", "SCHEDULED"]

    again = bench_run(out, "--methods", METHODS, *MCLSTEXP_FAST)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 job(s) run, 2 already complete, 0 failed" in again.stdout
    assert {k: (k.folder(out) / "COMPLETE").stat().st_mtime_ns for k in complete} == written, "no job ran twice"
    pd.testing.assert_frame_equal(scores(out), scores(sequential))
    runs = job_runs(out)
    assert (runs["status"] == "FINISHED").all() and sorted(runs["tags.stbench.job"]) == sorted(map(str, job_keys()))
    for key in complete:  # the interrupted job's metrics reached its own run
        run = runs[runs["tags.stbench.job"] == str(key)].iloc[0]
        assert run["run_id"] == json.loads((key.folder(out) / "result.json").read_text())["mlflow_run_id"]
        assert np.isfinite(run["metrics.fit_seconds"])


def test_a_killed_worker_is_reported_with_its_log_and_rerun_later(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "suicidal.py").write_text(SUICIDAL_METHOD)
    marker = tmp_path / "die"
    marker.touch()
    env = {"STBENCH_METHODS_PATH": str(plugins), "STBENCH_TEST_MARKER": str(marker)}
    out = tmp_path / "run"
    # One fold: the mean job and the suicidal one run side by side in two workers; the second worker dies.
    first = bench_run(out, "--methods", "mean,suicidal", "--jobs", "2", "--folds", "0", env=env)
    assert first.returncode == 1
    assert "1 job(s) run, 0 already complete, 1 failed" in first.stdout
    line = next(x for x in first.stderr.splitlines() if x.startswith(f"FAILED {SUICIDAL}"))
    log_path = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log_path.is_file(), line
    assert not JobKey("synthetic", SETTING, 0, "suicidal", 0).folder(out).exists()
    assert JobKey("synthetic", SETTING, 0, "mean", 0).folder(out).is_dir()  # the other worker's job survived
    runs = job_runs(out)
    assert list(runs[runs["status"] == "FAILED"]["tags.stbench.job"]) == [SUICIDAL]

    marker.unlink()
    second = bench_run(out, "--methods", "mean,suicidal", "--jobs", "2", "--folds", "0", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "1 job(s) run, 1 already complete, 0 failed" in second.stdout


def test_eight_jobs_finishing_together_lose_no_mlflow_run(tmp_path):
    out = tmp_path / "run"
    done = bench_run(out, "--methods", "mean", "--seeds", "0,1,2", "--folds", "0,1", "--jobs", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = job_runs(out)
    expected = sorted(str(JobKey("synthetic", SETTING, f, "mean", s)) for s in (0, 1, 2) for f in (0, 1))
    assert sorted(runs["tags.stbench.job"]) == expected
    assert (runs["status"] == "FINISHED").all()
    assert runs["metrics.fit_seconds"].notna().all() and runs["metrics.eval.acg_mse"].notna().all()
    client = mlflow.MlflowClient()
    for run_id in runs["run_id"]:
        assert {"predictions.npz", "result.json"} <= {a.path for a in client.list_artifacts(run_id)}
