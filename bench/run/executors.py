"""Where jobs run: in this process, in parallel local processes, or on a SLURM cluster.

Every executor runs the same function, ``bench.run.job.execute_job`` (in a worker process through
``execute_job_in_worker``), on the same ``JobSpec`` and hands each
outcome back to the driver as it arrives: ``on_done(spec, result)`` or ``on_failed(spec, message,
log_path)``. The driver (bench/run/runner.py) decides what to run and logs to MLflow; the pipeline evaluates.

- ``local``, ``--jobs 1``: jobs run one after another in the driver's process (no start-up cost).
- ``local``, ``--jobs N``: at most N jobs at once, each in its own process (submitit's LocalExecutor),
  each with its own log file; torch threads are divided among them.
- ``slurm``: submitit submits one job array per method (its resources: GPUs, CPUs, memory, time), at most
  ``array_parallelism`` tasks of an array at once, on the chosen partition/account/QOS.

One error policy under every executor. An error in one job fails that job only (its key, its error and
the path of its log are reported; the run goes on with the others), except the two errors that every
other job would meet the same way: the user's data is unreadable (``DataError``) or results cannot be
written (``OutputError``). Those stop the run wherever the job ran: once the driver sees one, no job is
started, jobs still running are cancelled, and the error is the run's one line and exit code 2. A worker
that dies (out of memory, ``kill -9``, a SLURM time limit, ``scancel``) is a failed job. Rerunning the same
command runs only what is missing.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from dataclasses import dataclass
from typing import Callable

from tqdm.auto import tqdm

from bench.data.dataset import DataError, OutputError
from bench.run.config import BenchConfig, job_resources
from bench.run.job import JobSpec, execute_job

log = logging.getLogger(__name__)
OnDone = Callable[[JobSpec, dict], None]
OnFailed = Callable[[JobSpec, str, Path], None]
POLL_SECONDS = 1.0

# The errors one job meets that every other job would meet too: they stop the run under every executor.
STOPS_THE_RUN = (DataError, OutputError)


@dataclass(frozen=True)
class StoppedRun:
    """What a worker process hands back instead of a result when its job raised an error that stops the run.

    submitit turns a worker's exception into the text of its traceback; returned as a value, the error keeps
    its type, so the driver can raise it exactly as the in-process executor does."""

    error: Exception


def execute_job_in_worker(spec: JobSpec) -> dict | StoppedRun:
    """``execute_job`` as a worker process runs it (local workers, SLURM)."""
    try:
        return execute_job(spec)
    except STOPS_THE_RUN as exc:
        log.error("job %s: %s", spec.key, exc)  # in the worker's log as well
        return StoppedRun(exc)


def run_jobs(config: BenchConfig, specs: list[JobSpec], on_done: OnDone, on_failed: OnFailed, dataset=None) -> None:
    if not specs:
        return
    if config.executor == "local" and config.jobs == 1:
        run_in_process(config, specs, on_done, on_failed, dataset)
    else:
        run_with_submitit(config, specs, on_done, on_failed)


def failure_log_path(config: BenchConfig, spec: JobSpec) -> Path:
    return Path(config.out) / "failures" / (str(spec.key).replace("/", "__") + ".log")


def run_in_process(config: BenchConfig, specs: list[JobSpec], on_done: OnDone, on_failed: OnFailed,
                   dataset=None) -> None:
    bar = tqdm(specs, desc="jobs", disable=not config.progress)
    for spec in bar:
        bar.set_postfix_str(str(spec.key))
        try:
            result = execute_job(spec, dataset)
        except STOPS_THE_RUN:
            raise
        except Exception as exc:  # one failing job must not stop the others
            path = failure_log_path(config, spec)
            try:
                path.parent.mkdir(exist_ok=True)
                path.write_text(traceback.format_exc())
            except OSError as write_error:  # e.g. a full disk: the failure itself is still reported
                log.warning("traceback of %s not saved: %s", spec.key, write_error.strerror)
            on_failed(spec, f"{type(exc).__name__}: {exc}", path)
            continue
        on_done(spec, result)


def _submitit_folder(config: BenchConfig) -> Path:
    # One folder per driver start, so logs of earlier attempts stay readable next to the new ones.
    return Path(config.out) / "executor" / f"{config.executor}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _local_executor(config: BenchConfig, folder: Path):
    import submitit

    # Each worker's torch uses every core unless --threads says otherwise (results depend on the thread
    # count, so it never follows --jobs). OpenMP threads that spin while waiting would then starve each
    # other (measured: 8x slower with 2 jobs on 2 cores); passive waiting does not change any result.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the worker processes
    executor = submitit.LocalExecutor(folder=folder)
    request = max((job_resources(config, m) for m in config.methods), key=lambda r: r["time_min"])
    executor.update_parameters(timeout_min=int(request["time_min"]), gpus_per_node=0)
    return executor


def _slurm_executor(config: BenchConfig, folder: Path, method: str):
    import submitit

    request = job_resources(config, method)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = {"timeout_min": int(request["time_min"]), "cpus_per_task": int(request["cpus"]),
              "mem_gb": float(request["mem_gb"]), "tasks_per_node": 1, "nodes": 1,
              "name": f"stbench-{method}"}
    if request["gpus"]:
        params["gpus_per_node"] = int(request["gpus"])
    slurm = config.slurm
    if slurm.get("partition"):
        params["slurm_partition"] = slurm["partition"]
    if slurm.get("array_parallelism"):
        params["slurm_array_parallelism"] = int(slurm["array_parallelism"])
    extra = {k: slurm[k] for k in ("account", "qos") if slurm.get(k)}
    if extra:
        params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor


def run_with_submitit(config: BenchConfig, specs: list[JobSpec], on_done: OnDone, on_failed: OnFailed) -> None:
    """Submit, then poll until every job has finished or failed (a dead worker counts as failed)."""
    folder = _submitit_folder(config)
    folder.mkdir(parents=True, exist_ok=True)
    pending = list(specs)
    running: list[tuple[JobSpec, object]] = []
    bar = tqdm(total=len(specs), desc=f"jobs ({config.executor})", disable=not config.progress)
    if config.executor == "slurm":
        # One array per method: its tasks share one resource request.
        for method in dict.fromkeys(s.key.method for s in specs):
            group = [s for s in pending if s.key.method == method]
            jobs = _slurm_executor(config, folder, method).map_array(execute_job_in_worker, group)
            running.extend(zip(group, jobs))
            log.info("submitted %d %s job(s) to SLURM as array %s", len(jobs), method,
                     jobs[0].job_id.split("_")[0] if jobs else "-")
        pending = []
        bar.set_postfix_str(f"{len(running)} submitted")
    else:
        executor = _local_executor(config, folder)
    try:
        while pending or running:
            states = [(spec, job, job.done()) for spec, job in running]
            finished = [(spec, job) for spec, job, done in states if done]
            running = [(spec, job) for spec, job, done in states if not done]
            # Free slots are refilled before the finished jobs are logged: logging one job to MLflow takes
            # seconds, and a worker slot must not stand idle meanwhile.
            while config.executor == "local" and pending and len(running) < config.jobs:
                spec = pending.pop(0)
                running.append((spec, executor.submit(execute_job_in_worker, spec)))
            for spec, job in finished:
                _collect(spec, job, on_done, on_failed)
                bar.update(1)
            if running:
                time.sleep(POLL_SECONDS)
    except STOPS_THE_RUN:
        for spec, job in running:  # their results would be thrown away with the run's
            log.info("cancelling job %s: the run stopped", spec.key)
            job.cancel(check=False)
        raise
    finally:
        bar.close()


def _collect(spec: JobSpec, job, on_done: OnDone, on_failed: OnFailed) -> None:
    log_path = Path(job.paths.stderr)
    try:
        result = job.result()
    except Exception as exc:  # FailedJobError (the job raised), UncompletedJobError (it was killed)
        first = str(exc).strip().splitlines()
        reason = next((line for line in reversed(first) if line.strip()), type(exc).__name__)
        on_failed(spec, f"{type(exc).__name__}: {reason[:300]}", log_path)
        return
    if isinstance(result, StoppedRun):
        raise result.error
    on_done(spec, result)
