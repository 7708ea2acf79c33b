"""Mini-batches of patches (or of any row-indexed array: frozen-encoder embeddings) for training loops, read
ahead in a background thread.

Patches come from the patch store (memory-mapped uint8 arrays): a batch is one fancy-indexed read,
never a per-item crop of a full image. While the model works on batch i, a thread reads batch i+1, and
the time the training loop spends blocked waiting for data is measured, so starvation shows up in the
job's results (``data_wait_fraction``).
"""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch


class PatchBatches:
    def __init__(self, patches, batch_size: int, shuffle: bool = False, rng: np.random.Generator | None = None,
                 drop_last: bool = False, prefetch: int = 2, pin_memory: bool | None = None, reshuffle: bool = True):
        self.patches = patches
        self.batch_size = batch_size
        self.shuffle = shuffle
        # reshuffle=False: one shuffled order, drawn on the first pass and kept for every later pass (as a
        # PyTorch DistributedSampler whose set_epoch is never called)
        self.reshuffle = reshuffle
        self._order: np.ndarray | None = None
        self.rng = rng or np.random.default_rng(0)
        self.drop_last = drop_last
        self.prefetch = prefetch
        # Batches are pinned in the reader thread when a GPU is present (None: decide by that).
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.wait_seconds = 0.0
        self.total_seconds = 0.0

    def batch_indices(self) -> list[np.ndarray]:
        if not self.shuffle:
            order = np.arange(len(self.patches))
        elif self.reshuffle or self._order is None:
            order = self._order = self.rng.permutation(len(self.patches))
        else:
            order = self._order
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self):
        batches = self.batch_indices()  # drawn here, in the caller's thread, so the order is reproducible
        pin = self.pin_memory
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for rows in batches:
                    if stop.is_set():
                        return
                    # Sorted reads are sequential on disk; the original order is restored afterwards.
                    order = np.argsort(rows)
                    dtype = getattr(self.patches, "dtype", np.uint8)  # uint8 patches, or float embeddings
                    data = np.empty((len(rows),) + tuple(self.patches.shape[1:]), dtype=dtype)
                    data[order] = self.patches[rows[order]]
                    if pin:  # page-locked, so the copy to the GPU runs asynchronously (non_blocking)
                        data = torch.from_numpy(data).pin_memory()
                    ready.put((rows, data))
                ready.put(None)
            except BaseException as exc:  # hand the error to the consumer instead of dying silently
                ready.put(exc)

        worker = threading.Thread(target=produce, daemon=True)
        start = time.perf_counter()
        worker.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = ready.get()
                self.wait_seconds += time.perf_counter() - t0
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # drain so a blocked producer can finish
                try:
                    ready.get_nowait()
                except queue.Empty:
                    worker.join(timeout=0.05)
            self.total_seconds += time.perf_counter() - start

    @property
    def wait_fraction(self) -> float:
        return self.wait_seconds / self.total_seconds if self.total_seconds > 0 else 0.0


def to_tensor(batch, device: str, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, H, W, 3) array or tensor -> float (N, 3, H, W) in [0, 1] on the device (converted there,
    4x less copying)."""
    x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
    x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def embedding_tensor(batch, device: str) -> torch.Tensor:
    """Rows of frozen-encoder embeddings (a batch of ``PatchBatches`` over ``SpotData.embeddings``) as a float
    tensor on the device: what a learned method's heads read instead of images when its encoder is frozen."""
    x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
    return x.to(device, non_blocking=True).float()
