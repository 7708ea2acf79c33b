"""The commands a new user runs first, timed as they would see them (a fresh `python -m bench` process each):
`bench list` (goal < 2 s), `bench data info her2st` (goal < 10 s) and a `bench run` rerun with nothing new
(goal < 10 s). Issue 22, item 6: they took 10-21 s, 52 s and 65 s.

Wall times go to ``extra_info`` and are printed, never asserted (they depend on the machine and its load);
what is asserted is that each command did its job (the listing, 36 sections, nothing redone).

Modes: short (default, in CI) reruns a synthetic run of the mean control; full (``STBENCH_BENCH_FULL=1``)
reruns a her2st run of the mean control, as in the issue (its first run, not timed, takes about a minute).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import REPO, SHARED_DATA, needs_her2st

FULL = os.environ.get("STBENCH_BENCH_FULL") == "1"


def _bench(*args: str, env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    return seconds, done.stdout


def _record(benchmark, what: str, seconds: float, goal: float) -> None:
    benchmark.extra_info.update({"command": what, "seconds": seconds, "goal_seconds": goal})
    print(f"\n{what}: {seconds:.2f} s (goal < {goal:g} s)")


def test_bench_list(benchmark):
    seconds, out = benchmark.pedantic(_bench, args=("list",), rounds=1, iterations=1)
    assert "st-net" in out and "her2st" in out and "lopo" in out
    _record(benchmark, "python -m bench list", seconds, 2)


@needs_her2st
def test_bench_data_info_her2st(benchmark):
    seconds, out = benchmark.pedantic(_bench, args=("data", "info", "her2st"),
                                      kwargs={"env": {"STBENCH_DATA": str(SHARED_DATA)}}, rounds=1, iterations=1)
    assert "36 sections from 8 patients" in out
    assert sum(" spots " in line for line in out.splitlines()) == 36
    _record(benchmark, "python -m bench data info her2st", seconds, 10)


def _rerun_args(tmp_path) -> tuple[list[str], dict]:
    env = {"STBENCH_CACHE": str(tmp_path / "cache")}
    if FULL:
        if not (SHARED_DATA / "her2st" / "data" / "ST-cnts").is_dir():
            import pytest

            pytest.skip(f"real her2st data not found in {SHARED_DATA}")
        env["STBENCH_DATA"] = str(SHARED_DATA)
        return ["run", "--methods", "mean", "--out", str(tmp_path / "run"), "--no-progress", "--no-fetch"], env
    return ["run", "--methods", "mean", "--dataset", "synthetic", "--panel", "top-mean:10",
            "--out", str(tmp_path / "run"), "--no-progress"], env


def test_bench_run_rerun_with_nothing_new(tmp_path, benchmark):
    args, env = _rerun_args(tmp_path)
    _bench(*args, env=env)  # the run itself, not timed
    seconds, out = benchmark.pedantic(_bench, args=tuple(args), kwargs={"env": env}, rounds=1, iterations=1)
    assert "0 job(s) run" in out and "Nothing new" in out
    _record(benchmark, f"rerun of `python -m bench {' '.join(args[:3])}` ({'her2st' if FULL else 'synthetic'})",
            seconds, 10)
