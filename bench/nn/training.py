"""The epoch loop shared by the trained methods: step, log the mean loss per epoch, show progress."""
from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from bench.method import Runtime


def train_epochs(runtime: Runtime, name: str, epochs: int, batches: Iterable,
                 loss_of: Callable[[object], "tuple[torch.Tensor, int] | None"], optimizer: torch.optim.Optimizer,
                 scheduler=None) -> list[float]:
    """Run ``epochs`` passes over ``batches`` (re-iterated each epoch).

    ``loss_of(batch)`` returns (loss, n_items) or None to skip a batch (e.g. one a loss cannot use).
    The scheduler, if any, steps once per epoch. Logs ``train_loss`` (item-weighted mean) and
    ``epoch_seconds`` per epoch and returns the per-epoch losses.
    """
    history = []
    for epoch in tqdm(range(epochs), desc=f"{name} epochs", disable=not runtime.progress, leave=False):
        started = time.perf_counter()
        # The loss is summed on the device: reading it every step (``.item()``) would make the CPU wait
        # for the GPU to finish each step before it can queue the next.
        total, count = None, 0
        for batch in batches:
            result = loss_of(batch)
            if result is None:
                continue
            loss, n = result
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            weighted = loss.detach().double() * n
            total, count = weighted if total is None else total + weighted, count + n
        if scheduler is not None:
            scheduler.step()
        mean_loss = total.item() / count if count else 0.0
        if count and not torch.isfinite(torch.tensor(mean_loss)):
            raise FloatingPointError(f"{name}: training loss became {mean_loss} in epoch {epoch}; "
                                     f"lower the learning rate")
        history.append(mean_loss)
        runtime.log_metric("train_loss", mean_loss, epoch)
        runtime.log_metric("epoch_seconds", time.perf_counter() - started, epoch)
    return history
