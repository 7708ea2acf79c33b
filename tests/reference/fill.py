"""Deterministic weights and inputs for the whole-model references, shared by the script that runs the original
code (make_references.py) and the test that runs the suite's model (tests/test_whole_model_reference.py).

Every tensor's values come from its name in the ORIGINAL model's state dict and its shape alone, so nothing
but the names and shapes needs to be stored: the test rebuilds the original's state dict from them and maps
it onto the suite's parameter names. Pure numpy (a seed from the name's CRC-32), the same on every machine.
"""
from __future__ import annotations

import math
import zlib

import numpy as np


def values(name: str, shape) -> np.ndarray:
    """float64 values for the tensor ``name`` of ``shape``: weights ~ N(0, 1/fan_in), norm scales ~ 1 + N(0,
    0.1²), biases ~ N(0, 0.1²), BatchNorm running variances in [0.5, 1.5); ``input:*`` names ~ N(0, 1)."""
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape)
    if leaf == "running_var":
        return 0.5 + rng.random(shape)
    if leaf == "running_mean" or name.startswith("input:"):
        return (0.1 if leaf == "running_mean" else 1.0) * rng.standard_normal(shape)
    if len(shape) <= 1:
        return (1.0 if leaf == "weight" else 0.0) + 0.1 * rng.standard_normal(shape)
    fan_in = math.prod(shape[1:])
    return rng.standard_normal(shape) / math.sqrt(fan_in)


def raw_image(name: str, shape) -> np.ndarray:
    """Whole numbers 0-255 (as float64): the raw patch values the whole-slide methods take."""
    return np.random.default_rng(zlib.crc32(name.encode())).integers(0, 256, tuple(shape)).astype(np.float64)


def state_dict(names, shapes) -> dict:
    """The original's state dict as {name: float64 array}, from its names and shapes."""
    return {n: values(n, s) for n, s in zip(names, shapes)}


def pack_shapes(shapes) -> tuple[np.ndarray, np.ndarray]:
    """Shapes of any rank as a flat int array and offsets (npz holds no ragged arrays)."""
    flat = [int(d) for s in shapes for d in s]
    offsets = np.cumsum([0] + [len(s) for s in shapes])
    return np.asarray(flat, dtype=np.int64), offsets.astype(np.int64)


def unpack_shapes(flat, offsets) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in flat[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]
