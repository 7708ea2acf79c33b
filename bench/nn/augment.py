"""Augmentations applied to whole batches of image tensors (N, 3, H, W, values in [0, 1]).

Each sample draws its own random parameters, as a per-item torchvision pipeline would, but the work
runs as a few batched tensor operations instead of a Python loop over patches.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high, generator=generator)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Like torchvision's ColorJitter(brightness, contrast, saturation) with hue 0, per sample.

    Factors are drawn from [max(0, 1 - v), 1 + v]. The three adjustments are applied in a fixed order
    (brightness, contrast, saturation); torchvision shuffles the order per call, which is a minor,
    documented difference.
    """
    n, device = x.shape[0], x.device
    shape = (n, 1, 1, 1)
    if brightness:
        x = x * _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator, device).view(shape)
        x = x.clamp(0, 1)
    if contrast:
        gray_mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        factor = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator, device).view(shape)
        x = (factor * x + (1 - factor) * gray_mean).clamp(0, 1)
    if saturation:
        factor = _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator, device).view(shape)
        x = (factor * x + (1 - factor) * _grayscale(x)).clamp(0, 1)
    return x


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R 601 luma, as torchvision uses


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_rotation(x: torch.Tensor, degrees: float, generator: torch.Generator | None = None,
                    interpolation: str = "nearest") -> torch.Tensor:
    """Rotate each sample by an angle from [-degrees, degrees] about its centre; corners filled with 0.
    ``interpolation`` "nearest" (torchvision's RandomRotation default, with its default fill 0) or
    "bilinear"."""
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
    n = x.shape[0]
    angle = _uniform(n, -degrees, degrees, generator, x.device) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=False)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 symmetries of the square: k % 4 quarter turns, then a flip when k >= 4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each sample gets one of the 8 flip/90°-rotation symmetries, chosen uniformly."""
    choice = torch.randint(0, 8, (x.shape[0],), device=x.device, generator=generator)
    out = torch.empty_like(x)
    for k in range(8):
        rows = choice == k
        if rows.any():
            out[rows] = dihedral(x[rows], k)
    return out
