"""Activation checkpointing of torchvision's DenseNet, with the same numbers as without it.

DenseNet-121's training memory is mostly its dense layers' bottleneck inputs: each layer concatenates every
earlier feature map of its block, normalises and rectifies the concatenation, and keeps all three for the
backward pass. torchvision's ``memory_efficient=True`` recomputes that bottleneck (``torch.utils.checkpoint``)
instead of keeping it, but its recomputation also runs the first BatchNorm's running-statistics update a
second time in training mode: after training, the running means and variances (and so every prediction in
eval mode) differ from the network trained without it. ``checkpoint_dense_layers`` turns the checkpointing
on with a recomputation that normalises with the batch's statistics (as the first pass did, so the
gradients are the same) without touching the running statistics: the trained network is the same.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def checkpoint_dense_layers(model: torch.nn.Module) -> int:
    """Recompute the bottleneck of every torchvision dense layer in ``model`` in the backward pass instead of
    keeping its activations (the same results; ~2x less training memory for DenseNet-121). Returns the number
    of layers changed (0 for a network without dense layers)."""
    from torchvision.models.densenet import _DenseLayer

    changed = 0
    for layer in model.modules():
        if isinstance(layer, _DenseLayer):
            if not hasattr(layer, "call_checkpoint_bottleneck"):  # the hook this relies on
                raise RuntimeError("torchvision's _DenseLayer has no call_checkpoint_bottleneck in this version: "
                                   "run with memory_efficient=False")
            layer.memory_efficient = True
            layer.call_checkpoint_bottleneck = types.MethodType(_checkpointed_bottleneck, layer)
            changed += 1
    return changed


def _checkpointed_bottleneck(layer, inputs: list[torch.Tensor]) -> torch.Tensor:
    """torchvision's ``bn_function`` (concatenate, norm1, relu1, conv1) under a checkpoint; only its first run
    (the forward pass) updates norm1's running statistics."""
    runs = []

    def bottleneck(*features):
        norm = layer.norm1
        x = torch.cat(features, 1)
        if runs and norm.training:
            # The backward pass's recomputation: the batch's statistics again, the running ones updated in
            # throw-away copies (so the same tensors are saved for the gradient as in the first run).
            x = F.batch_norm(x, norm.running_mean.clone(), norm.running_var.clone(), norm.weight, norm.bias,
                             True, norm.momentum or 0.0, norm.eps)
        else:
            x = norm(x)
        runs.append(True)
        return layer.conv1(layer.relu1(x))

    return checkpoint(bottleneck, *inputs, use_reentrant=False)
