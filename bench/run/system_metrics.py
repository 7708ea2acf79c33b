"""System metrics of a job (CPU, memory, GPU), sampled in the job's own process.

The samplers are MLflow's own (``mlflow.system_metrics``: psutil for CPU and memory, nvidia-ml-py for
NVIDIA GPUs), but the samples are kept with the job's result instead of being written to the tracking
store from the worker: with the default SQLite store, many workers writing at once would fight over
the database lock. The driver logs them as ``system/<name>`` metrics, which the MLflow UI shows in its
"System metrics" tab. A machine without NVML (no NVIDIA driver, or nvidia-ml-py missing) samples CPU
and memory only, and says why.
"""
from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)


def _monitors() -> tuple[list, dict]:
    """MLflow's CPU monitor, and its GPU monitor when NVML works; plus why a monitor is missing."""
    monitors, missing = [], {}
    try:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

        monitors.append(CPUMonitor())
    except ImportError as exc:  # psutil missing
        missing["cpu"] = str(exc)
    try:
        import pynvml  # noqa: F401  (MLflow's GPU monitor needs it imported first)
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception as exc:  # no nvidia-ml-py, no driver, no GPU: CPU metrics only
        missing["gpu"] = f"{type(exc).__name__}: {exc}"
    return monitors, missing


class SystemSampler:
    """``with SystemSampler(interval) as s: ...`` then ``s.samples``: one dict per interval with
    ``step``, ``timestamp_ms`` and MLflow's metric names (averaged over the interval), plus this
    process's resident memory."""

    def __init__(self, interval_seconds: float = 10.0, per_interval: int = 5):
        self.interval = float(interval_seconds)
        self.per_interval = per_interval
        self.samples: list[dict] = []
        self.missing: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "SystemSampler":
        monitors, self.missing = _monitors()
        try:
            import psutil

            process = psutil.Process(os.getpid())
        except ImportError:
            process = None
        self._thread = threading.Thread(target=self._run, args=(monitors, process), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, monitors, process) -> None:
        tick = self.interval / self.per_interval
        step = 0
        while True:
            stopped = False
            for _ in range(self.per_interval):
                for m in monitors:
                    try:
                        m.collect_metrics()
                    except Exception as exc:  # a sensor failing must never fail the job
                        log.debug("system metric sampling failed: %s", exc)
                if self._stop.wait(tick):
                    stopped = True
                    break
            row = {}
            for m in monitors:
                if m.metrics:
                    row.update(m.aggregate_metrics())
                    m.clear_metrics()
            if process is not None:
                row["process_rss_megabytes"] = process.memory_info().rss / 1e6
            if row:
                self.samples.append({"step": step, "timestamp_ms": int(time.time() * 1000), **row})
                step += 1
            if stopped:
                return
