"""Embedding throughput (patches/s) of a CNN and a ViT on this machine's device, and the read throughput of
cached embeddings, which is what every run after the first pays (pytest-benchmark, one round).

Short by default (32 patches); STBENCH_BENCH_FULL=1 embeds 512. A GPU session adds a ViT-L-sized model
(vit_large_patch16_224, the size of UNI) when CUDA is present. Patches/s is printed with -s."""
import os
import time

import numpy as np
import pytest
import torch

from bench.data.embeddings import EmbeddingCache
from bench.nn.encoders import load_encoder

FULL = os.environ.get("STBENCH_BENCH_FULL") == "1"
N_PATCHES = 512 if FULL else 32
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ENCODERS = ["resnet50", "timm:vit_small_patch16_224"] + (["timm:vit_large_patch16_224"] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("name", ENCODERS)
def test_embedding_throughput(benchmark, name):
    encoder = load_encoder(name, pretrained="no").to(DEVICE)
    patches = np.random.default_rng(0).integers(0, 256, (N_PATCHES, 224, 224, 3), dtype=np.uint8)
    encoder.embed(patches[:8], DEVICE, batch_size=8)  # warm-up (allocations, cuDNN choices)

    def run():
        start = time.perf_counter()
        out = encoder.embed(patches, DEVICE, batch_size=32)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    out, seconds = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["patches_per_second"] = N_PATCHES / seconds
    print(f"\n{name} on {DEVICE}: {N_PATCHES / seconds:,.1f} patches/s ({encoder.spec.dim}-d)")
    assert out.shape == (N_PATCHES, encoder.spec.dim) and np.isfinite(out).all()


def test_cached_embedding_read_throughput(benchmark, tmp_path):
    n_spots, dim = (200_000 if FULL else 20_000), 1024
    cache = EmbeddingCache(tmp_path)
    identity = {"encoder": "bench", "weights_sha256": "0" * 64, "px": 224}
    array = np.random.default_rng(0).normal(size=(n_spots, dim)).astype(np.float32)
    cache.embeddings("d", "section", identity, n_spots, lambda: array)

    def run():
        start = time.perf_counter()
        fresh = EmbeddingCache(tmp_path)  # a new job: validates the entry, then reads every row
        got = fresh.embeddings("d", "section", identity, n_spots, lambda: pytest.fail("recomputed"))
        total = float(np.asarray(got, dtype=np.float64).sum())
        return total, time.perf_counter() - start

    total, seconds = benchmark.pedantic(run, rounds=1, iterations=1)
    # The time measured inside run(), not benchmark.stats: under --benchmark-disable there are no stats (None).
    benchmark.extra_info["spots_per_second"] = n_spots / max(seconds, 1e-9)
    print(f"\ncached read: {n_spots:,} x {dim} embeddings in {seconds:.3f} s with validation "
          f"({n_spots / max(seconds, 1e-9):,.0f} spots/s)")
    assert np.isclose(total, float(array.astype(np.float64).sum()))
