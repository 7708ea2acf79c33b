"""Embedding cache: each section's patch embeddings under one encoder, computed once and memory-mapped.

An entry is keyed by the encoder's identity (name, SHA-256 of its weights, input size, mean/std) and by the
section's patch file (section, window µm, px, and a hash of the image and spot positions; see
``PatchStore.key``), so every method, fold, seed and run that asks for the same encoder on the same patches
reads the same file, and anything that changes the embeddings changes the key.

Writing is atomic like the patch store's: the array goes to a temporary file, its SHA-256 into a sidecar
record, and both are moved into place; an entry whose record is missing or whose bytes do not match it (a
killed writer, a damaged disk) is rebuilt, never trusted. Nothing here runs a model: the caller passes the
function that computes a section's embeddings.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from bench.data.dataset import OutputError
from bench.data.download import sha256_file

log = logging.getLogger(__name__)
_FORMAT_VERSION = 1


def encoder_key(identity: dict) -> str:
    """A short stable hash of an encoder's identity (``Encoder.identity()``)."""
    text = json.dumps({"format": _FORMAT_VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EmbeddingCache:
    def __init__(self, cache_dir: Path):
        self.root = Path(cache_dir) / "embeddings"
        self.computed = 0  # sections embedded by this object (a second run of the same job computes none)

    def path(self, dataset_name: str, patch_key: str, identity: dict) -> Path:
        return self.root / dataset_name / f"{patch_key}-{encoder_key(identity)}.npy"

    def get(self, dataset_name: str, patch_key: str, identity: dict, n_spots: int) -> np.ndarray | None:
        """The cached embeddings, memory-mapped, or None when there is no valid entry."""
        path = self.path(dataset_name, patch_key, identity)
        record = path.with_suffix(".json")
        if not (path.is_file() and record.is_file()):
            return None
        try:
            meta = json.loads(record.read_text())
            if meta.get("sha256") != sha256_file(path):
                raise ValueError("its bytes do not match its record")
            array = np.load(path, mmap_mode="r")
            if array.ndim != 2 or array.shape[0] != n_spots or array.dtype != np.float32:
                raise ValueError(f"shape {array.shape} {array.dtype}, expected ({n_spots}, dim) float32")
        except (OSError, ValueError) as exc:
            log.warning("embedding cache %s is not valid (%s); rebuilding it", path, exc)
            return None
        return array

    def embeddings(self, dataset_name: str, patch_key: str, identity: dict, n_spots: int,
                   compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The section's embeddings: from the cache, else ``compute()`` written atomically first."""
        cached = self.get(dataset_name, patch_key, identity, n_spots)
        if cached is not None:
            return cached
        array = np.ascontiguousarray(compute(), dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != n_spots or not np.isfinite(array).all():
            raise ValueError(f"encoder {identity.get('encoder')}: embeddings of shape {array.shape} "
                             f"{'with non-finite values ' if array.size and not np.isfinite(array).all() else ''}"
                             f"for {n_spots} spots")
        self.computed += 1
        path = self.path(dataset_name, patch_key, identity)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp_record = tmp.with_suffix(".json")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.save(fh, array)
            tmp_record.write_text(json.dumps({"sha256": sha256_file(tmp), "shape": list(array.shape), **identity},
                                             indent=1, default=str))
            os.replace(tmp, path)  # the array first: a record without its array is never left behind
            os.replace(tmp_record, path.with_suffix(".json"))
        except OSError as exc:
            raise OutputError.writing(path, exc, "--cache-dir") from exc
        finally:
            tmp.unlink(missing_ok=True)
            tmp_record.unlink(missing_ok=True)
        return np.load(path, mmap_mode="r")

