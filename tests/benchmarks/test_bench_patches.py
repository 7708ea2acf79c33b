"""Patch store at her2st scale (issue 7, item 2): a cold build of the store costs at most 1.5x the floor
(decoding each section image once), and a warm load of the 6-section store takes < 1 s.

Measured on the real her2st sections (skipped where the data are absent), default PatchSpec (165 µm ->
224 px), in a fresh cache:
- floor: ``section.image.read()`` of each section, nothing else;
- cold: ``PatchStore.patches`` of each section into the empty cache (decode, cut, resample, write);
- warm open: a new ``PatchStore`` on the same cache opens every section's memory-mapped array;
- warm read: the same, then reads every patch once (the stricter reading of "load"; the files were just
  written, so they come from the page cache, as on a second run on the same machine).
Counts are loaded before any timing (the floor and the cold build both need them; neither is about them).
Figures go to ``extra_info`` and are printed; they are never asserted (wall time depends on the
machine). What is asserted is correctness: warm arrays equal the cold ones, shapes, and one section
equal to ``cut_patches`` in memory.

Modes: short (default, in CI) uses the first 2 sections; full (``STBENCH_BENCH_FULL=1``) all 6, the
issue's measurement.
"""
from __future__ import annotations

import os
import time

import numpy as np
from conftest import needs_her2st

from bench.data.patches import PatchSpec, PatchStore, cut_patches

FULL = os.environ.get("STBENCH_BENCH_FULL") == "1"


@needs_her2st
def test_patch_store_cold_build_and_warm_load(her2st, tmp_path, benchmark):
    sections = [her2st[sid] for sid in her2st.imaged_sections()[: 6 if FULL else 2]]
    spec = PatchSpec()
    for section in sections:
        section.counts  # noqa: B018 - parsed now, outside every timing

    def run():
        seconds = {}
        start = time.perf_counter()
        for section in sections:
            section.image.read()
        seconds["floor"] = time.perf_counter() - start

        start = time.perf_counter()
        cold = [PatchStore(tmp_path).patches("her2st", section, spec) for section in sections]
        seconds["cold"] = time.perf_counter() - start

        start = time.perf_counter()
        store = PatchStore(tmp_path)
        warm = [store.patches("her2st", section, spec) for section in sections]
        seconds["warm_open"] = time.perf_counter() - start
        read = [np.array(array) for array in warm]
        seconds["warm_read"] = time.perf_counter() - start
        return seconds, cold, read

    seconds, cold, read = benchmark.pedantic(run, rounds=1, iterations=1)
    for section, cold_array, read_array in zip(sections, cold, read):
        assert cold_array.shape == (section.counts.n_obs, 224, 224, 3) and cold_array.dtype == np.uint8
        assert np.array_equal(read_array, cold_array)
    assert np.array_equal(cold[0], cut_patches(sections[0], spec)[0])

    ratio = seconds["cold"] / seconds["floor"]
    benchmark.extra_info.update({"mode": "full" if FULL else "short", "sections": len(sections),
                                 "spots": int(sum(len(a) for a in cold)),
                                 **{f"{name}_s": value for name, value in seconds.items()},
                                 "cold_over_floor": ratio})
    print(f"\npatch store, {len(sections)} her2st sections, {sum(len(a) for a in cold)} spots at 224 px: "
          f"floor {seconds['floor']:.2f} s, cold build {seconds['cold']:.2f} s ({ratio:.2f}x the floor), "
          f"warm open {seconds['warm_open']:.3f} s, warm open + read every patch {seconds['warm_read']:.3f} s")
