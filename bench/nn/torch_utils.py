"""Torch helpers shared by methods: seeding, device choice, torchvision backbones with optional weights."""
from __future__ import annotations

import logging
import os
import random

import numpy as np

from bench.errors import EnvironmentUnavailableError, InputError

log = logging.getLogger(__name__)
# Architectures whose weights could not be had in this process: not retried (each try hits the network).
_unavailable_weights: set[str] = set()


class PretrainedUnavailableError(EnvironmentUnavailableError):
    """--pretrained yes, and the weights cannot be had here."""


def seed_everything(seed: int) -> None:
    """Seed every generator and ask torch for deterministic kernels, so a seed gives the same run on CPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentUnavailableError(f"device {device!r} requested but CUDA is not available on this machine")
    return device


def torchvision_backbone(arch: str, pretrained: str = "auto", facts: dict | None = None):
    """A torchvision model with its default ImageNet weights when they can be had.

    ``pretrained``: "yes" (fail if the weights cannot be loaded), "no" (random init) or "auto" (weights
    if available from the local cache or a download, else random init with one warning).
    ``facts`` (a method's ``runtime.facts``): records ``pretrained`` (whether the weights were loaded) and
    ``imagenet_encoder`` (the architecture: one that published methods start from ImageNet weights), so
    that scores of a network that had to start from random initialisation say so wherever they are shown.
    Returns (model, used_pretrained).
    """
    model, used = _backbone(arch, pretrained)
    if facts is not None:
        facts.update(pretrained=used, imagenet_encoder=arch)
    return model, used


def _backbone(arch: str, pretrained: str):
    import torchvision

    if pretrained not in ("auto", "yes", "no"):
        raise InputError(f"pretrained must be auto, yes or no; got {pretrained!r}")
    if pretrained == "no":
        return torchvision.models.get_model(arch, weights=None), False
    try:
        if arch in _unavailable_weights:
            raise PretrainedUnavailableError("an earlier attempt in this process failed")
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        return torchvision.models.get_model(arch, weights=weights), True
    except Exception as exc:  # offline, blocked or corrupt cache: all mean "no weights"
        if pretrained == "yes":
            raise PretrainedUnavailableError(
                f"ImageNet weights for {arch} could not be loaded ({exc}); put them in the torch hub cache "
                f"({_hub_dir()}) or run with --pretrained auto/no") from exc
        if arch not in _unavailable_weights:
            _unavailable_weights.add(arch)
            log.warning("ImageNet weights for %s unavailable (%s); continuing from random initialisation "
                        "(recorded as pretrained=false)", arch, type(exc).__name__)
        return torchvision.models.get_model(arch, weights=None), False


def _hub_dir() -> str:
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def bf16_autocast(device, enabled: bool = True):
    """bf16 autocast on CUDA (when enabled); a no-op context on a CPU."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and is_cuda(device))


def imagenet_normalise(images):
    """(N, 3, H, W) in [0, 1] -> standardised with the ImageNet mean/std torchvision's weights expect."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std
