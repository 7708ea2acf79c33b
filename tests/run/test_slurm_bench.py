"""`python -m bench run --executor slurm` on a real single-node SLURM cluster (tests/slurm_cluster.py).

The same benchmark runs through SLURM job arrays and through the local executor; the per-gene results
must be identical. A job that dies inside SLURM must be reported as failed with its log, promptly.
Marked ``slurm`` (root + apt; see tests/run/test_slurm_cluster.py). ``-s`` prints the timings.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import SUICIDAL_METHOD

from bench.records import JobKey, Setting

SETTING = Setting("lopo", "top-mean:40")
SUICIDAL = str(JobKey("synthetic", SETTING, 0, "suicidal", 0))  # SETTING: BENCH's

pytestmark = pytest.mark.slurm
pytest.importorskip("submitit")

# 2 seeds x 2 folds: each method is one SLURM array of 4 tasks, at most 2 running at once. One CPU per
# job and one torch thread in both executors (results depend on the thread count).
BENCH = ["--dataset", "synthetic", "--panel", "top-mean:40", "--pretrained", "no", "--no-progress",
         "--seeds", "0,1", "--folds", "0,1", "--threads", "1", "--methods", "mean,mclstexp", "--set", "mclstexp.epochs=1",
         "--set", "mclstexp.patch_px=32", "--set", "mclstexp.top_k=20"]
SLURM = ["--executor", "slurm", "--resources", "cpus=1", "--resources", "mem_gb=4", "--resources", "time_min=10",
         "--array-parallelism", "2"]


@pytest.fixture
def cluster(slurm_session):
    return slurm_session  # started once per session (tests/conftest.py)


def bench(out: Path, *args, env: dict | None = None, timeout: float = 900):
    command = [sys.executable, "-m", "bench", "run", "--out", str(out), "--cache-dir", str(out.parent / "cache"),
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          cwd=out.parent)


def per_gene(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out / "results" / "per_gene.parquet")
    return table.sort_values(["method", "seed", "fold", "gene"]).reset_index(drop=True)


def test_a_benchmark_on_slurm_job_arrays_equals_the_local_run(cluster, tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "slurm").mkdir()
    local = bench(tmp_path / "local" / "run", *BENCH)
    assert local.returncode == 0, local.stderr[-3000:]

    out = tmp_path / "slurm" / "run"
    started = time.perf_counter()
    on_slurm = bench(out, *BENCH, *SLURM, "--partition", cluster.partition, env=cluster.env)
    turnaround = time.perf_counter() - started
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    print(f"\n[slurm] 8 jobs in two 4-task arrays, from submission to report: {turnaround:.1f} s")
    assert "8 job(s) run, 0 already complete, 0 failed" in on_slurm.stdout
    # Each method went in as one array of 4 tasks: "<array id>_<task>".
    arrays = re.findall(r"submitted 4 (\w+) job\(s\) to SLURM as array (\d+)", on_slurm.stderr)
    assert sorted(m for m, _ in arrays) == ["mclstexp", "mean"], on_slurm.stderr[-2000:]
    for method, array in arrays:
        logs = sorted((out / "executor").glob(f"slurm-*/{array}_*_0_log.err"))
        assert len(logs) == 4, (method, logs)
    pd.testing.assert_frame_equal(per_gene(out), per_gene(tmp_path / "local" / "run"))
    for seed in (0, 1):
        result = json.loads((JobKey("synthetic", SETTING, 0, "mclstexp", seed).folder(out) / "result.json")
                            .read_text())
        assert result["executor"] == "slurm" and result["timing"]["torch_threads"] == 1

    again = bench(out, *BENCH, *SLURM, "--partition", cluster.partition, env=cluster.env)
    assert again.returncode == 0 and "0 job(s) run, 8 already complete" in again.stdout, "nothing resubmitted"


def test_a_job_killed_inside_slurm_is_reported_failed_with_its_log(cluster, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "suicidal.py").write_text(SUICIDAL_METHOD)
    out = tmp_path / "run"
    started = time.perf_counter()
    done = bench(out, "--dataset", "synthetic", "--panel", "top-mean:40", "--no-progress", "--methods",
                 "mean,suicidal", "--folds", "0", *SLURM, "--partition", cluster.partition,
                 env={**cluster.env, "STBENCH_METHODS_PATH": str(plugins)}, timeout=300)
    print(f"\n[slurm] killed job reported after {time.perf_counter() - started:.1f} s")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "1 job(s) run, 0 already complete, 1 failed" in done.stdout
    line = next(x for x in done.stderr.splitlines() if x.startswith(f"FAILED {SUICIDAL}"))
    log_path = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log_path.is_file() and log_path.parent.parent == out / "executor"
    assert not JobKey("synthetic", SETTING, 0, "suicidal", 0).folder(out).exists()
