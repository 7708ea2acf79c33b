"""Timing and memory of a job's regions: CUDA events on a GPU, wall clock on a CPU.

On CUDA, a region is bracketed by events recorded on the current stream and the device is synchronised
before reading them, so queued kernels are counted; peak GPU memory is ``max_memory_allocated`` since
the last reset. Peak RSS is the resident-set high-water mark (``getrusage``); on Linux the reset restarts it
(``/proc/self/clear_refs``), so it is the job's own peak, not that of earlier jobs run in the same process
(``peak_rss_scope``: "job", or "process" where it cannot be reset).
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Measured:
    """One timed region: its seconds, the device it ran on and the clock that measured it."""

    seconds: float = 0.0
    device: str = "cpu"
    clock: str = "wall"  # "cuda-events" on a GPU


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


@contextmanager
def timed(device: str = "cpu"):
    """``with timed(device) as t: ...`` then ``t.seconds``."""
    result = Measured(device=str(device), clock="cuda-events" if _is_cuda(device) else "wall")
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield result
        finally:
            end.record()
            torch.cuda.synchronize(device)
            result.seconds = start.elapsed_time(end) / 1000.0
    else:
        t0 = time.perf_counter()
        try:
            yield result
        finally:
            result.seconds = time.perf_counter() - t0


_rss_peak_reset = False  # whether the last reset_peak_memory restarted the RSS high-water mark


def reset_peak_memory(device: str) -> None:
    global _rss_peak_reset
    try:  # Linux: writing 5 restarts the high-water mark (VmHWM, and so ru_maxrss) at the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _rss_peak_reset = True
    except OSError:  # not Linux, or not permitted: the peak stays the process's
        _rss_peak_reset = False
    if _is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: str) -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "peak_rss_scope": "job" if _rss_peak_reset else "process"}
    if _is_cuda(device):
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
