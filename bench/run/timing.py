"""Timing and memory of a job's regions: CUDA events on a GPU, wall clock on a CPU.

On CUDA, a region is bracketed by events recorded on the current stream and the device is synchronised
before reading them, so queued kernels are counted; peak GPU memory is ``max_memory_allocated`` since
the last reset. Peak RSS is the process's high-water mark (``getrusage``), which covers earlier jobs
run in the same process too.
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


def reset_peak_memory(device: str) -> None:
    if _is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: str) -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if _is_cuda(device):
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
