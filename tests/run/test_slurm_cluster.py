"""submitit against a real single-node SLURM cluster (tests/slurm_cluster.py).

Marked ``slurm``: needs root and apt (installs slurm-wlm, munge, slurmdbd, mariadb-server when missing) and
ports 6817-6819 and 3306; skipped, with the reason, where the packages cannot be installed. Run with
``pytest tests/run/test_slurm_cluster.py -m slurm -s`` to see the timings; ``STBENCH_SLURM_TIMES=<file>`` also
writes them there as JSON.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest
from slurm_cluster import SlurmCluster, ensure_packages, pid_alive, port_in_use

pytestmark = pytest.mark.slurm

submitit = pytest.importorskip("submitit")
from submitit.core.utils import UncompletedJobError  # noqa: E402  (FailedJobError is a subclass)

# The job's Python does not have tests/ on sys.path, so send this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_WAIT_S = 120  # no job result may take longer than this: the test fails instead of hanging
TIMES: dict[str, float] = {}


def _record(key: str, seconds: float) -> None:
    TIMES[key] = round(seconds, 2)
    print(f"\n[slurm timing] {key}: {seconds:.2f} s")
    path = os.environ.get("STBENCH_SLURM_TIMES")
    if path:
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {}
        with open(path, "w") as f:
            json.dump({**saved, **TIMES}, f, indent=2)


# ---------------------------------------------------------------------------------- submitted functions
def square(x: int) -> int:
    return x * x


def job_identity() -> dict:
    return {"job_id": os.environ.get("SLURM_JOB_ID"), "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
            "pid": os.getpid()}


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def slurm_cluster(slurm_session):
    """The session's cluster (tests/conftest.py), with its SLURM_CONF in os.environ for this module."""
    _record("cluster_startup_s", slurm_session.startup_seconds)
    saved = {key: os.environ.get(key) for key in slurm_session.env}
    os.environ.update(slurm_session.env)  # submitit runs sbatch/sacct with os.environ
    try:
        yield slurm_session
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _executor(folder, cluster: SlurmCluster, **parameters):
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition=cluster.partition, cpus_per_task=1, **parameters)
    return executor


def _result_within(job, seconds: float = JOB_WAIT_S):
    """``job.result()`` in a watchdog thread: fail the test, not hang it, when no outcome comes in time."""
    outcome: dict = {}

    def wait() -> None:
        try:
            outcome["value"] = job.result()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=wait, name=f"wait-{job.job_id}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"SLURM job {job.job_id} gave no result within {seconds} s; stdout:\n{job.stdout()}\n"
                    f"stderr:\n{job.stderr()}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --------------------------------------------------------------------------------------------------- tests
def test_single_job_returns_value(slurm_cluster, tmp_path):
    t0 = time.monotonic()
    job = _executor(tmp_path / "submitit", slurm_cluster).submit(square, 7)
    assert _result_within(job) == 49
    _record("single_job_turnaround_s", time.monotonic() - t0)


def test_job_array_runs_as_one_array(slurm_cluster, tmp_path):
    executor = _executor(tmp_path / "submitit", slurm_cluster, slurm_array_parallelism=2)
    t0 = time.monotonic()
    jobs = executor.map_array(square, range(4))
    results = [_result_within(job) for job in jobs]
    _record("array_4_tasks_turnaround_s", time.monotonic() - t0)
    assert results == [0, 1, 4, 9]
    array_ids = {job.job_id.split("_")[0] for job in jobs}
    assert len(array_ids) == 1, [job.job_id for job in jobs]
    (array_id,) = array_ids
    assert [job.job_id for job in jobs] == [f"{array_id}_{i}" for i in range(4)]
    identities = [_result_within(job) for job in executor.map_array(lambda _: job_identity(), range(2))]
    assert sorted(int(i["array_task"]) for i in identities) == [0, 1]  # really ran as SLURM array tasks


def test_killed_job_raises_instead_of_hanging(slurm_cluster, tmp_path):
    """Needs accounting (slurmdbd): without it submitit never learns the job died and waits forever."""
    job = _executor(tmp_path / "submitit", slurm_cluster).submit(kill_myself)
    t0 = time.monotonic()
    with pytest.raises(UncompletedJobError) as excinfo:
        _result_within(job)
    _record("killed_job_detected_s", time.monotonic() - t0)
    # Killed before writing a result (not, say, an exception inside the job, a FailedJobError with a trace).
    assert "has not produced any output" in str(excinfo.value), str(excinfo.value)


def test_exit_stops_every_process_it_started(tmp_path):
    """A second, short-lived cluster on other ports (so it can run beside the module's cluster) leaves no
    daemon, job process or port behind, even with a job still running when it exits."""
    ok, reason = ensure_packages()
    if not ok:
        pytest.skip(reason)
    ports = {"slurmctld": 16817, "slurmd": 16818, "slurmdbd": 16819, "mariadbd": 13306}
    with SlurmCluster(tmp_path / "cluster", ports=ports) as cluster:
        pids = cluster.pids()
        assert set(pids) == {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"}
        assert all(pid_alive(pid) for pid in pids.values())
        env = {**os.environ, **cluster.env}
        subprocess.run(["sbatch", f"--output={tmp_path / 'sleep.out'}", "--wrap", "sleep 300"], env=env,
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], env=env, capture_output=True, text=True,
                             timeout=30).stdout.strip() == "":
            assert time.monotonic() < deadline, "the sleep job never started"
            time.sleep(0.2)
        running = set(cluster.descendant_pids())
        assert running > set(pids.values())  # the job's processes carry the marker too
    assert [pid for pid in running if pid_alive(pid)] == []
    assert cluster.descendant_pids() == []
    assert [name for name, port in ports.items() if port_in_use(port)] == []
