"""Patch store: physical windows, caching, off-image policy."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.data.dataset import ArrayImage, DataError, Section
from bench.data.patches import PatchSpec, PatchStore


def _section(image, centres, sid="S1", pitch_px=20.0):
    """A section whose spots sit on a grid with the given pixel pitch (200 µm per grid step)."""
    import anndata as ad

    centres = np.asarray(centres, dtype=float)
    grid = np.round((centres - centres.min(axis=0)) / pitch_px).astype(int)
    obs = pd.DataFrame({"array_x": grid[:, 0], "array_y": grid[:, 1], "pixel_x": centres[:, 0],
                        "pixel_y": centres[:, 1], "pathology_label": np.nan, "cluster_label": np.nan},
                       index=[f"s{i}" for i in range(len(centres))])
    adata = ad.AnnData(X=np.ones((len(centres), 2), dtype=np.float32), obs=obs,
                       var=pd.DataFrame(index=["A", "B"]))
    return Section(sid, "P", load_counts=lambda: adata, image=ArrayImage(image, f"test:{sid}"))


def _gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


def test_patches_are_cut_once_then_memory_mapped(tmp_path, monkeypatch):
    image = _gradient(100, 100)
    section = _section(image, [(30, 30), (50, 30), (30, 50), (50, 50)])
    store = PatchStore(tmp_path)
    spec = PatchSpec(window_um=100.0, px=10)  # 200 µm per 20 px -> 10 µm/px -> 10 px window, no resampling
    first = store.patches("t", section, spec)
    assert first.shape == (4, 10, 10, 3) and first.dtype == np.uint8
    assert np.array_equal(first[0], image[25:35, 25:35])
    monkeypatch.setattr(section.image, "read", lambda: (_ for _ in ()).throw(AssertionError("re-read")))
    second = store.patches("t", section, spec)
    assert isinstance(second, np.memmap)
    assert np.array_equal(first, second)
    assert store.info("t", section, spec).n_padded == 0


def test_same_physical_window_at_two_resolutions_gives_the_same_patch(tmp_path):
    """A 2x finer image is resampled to the same field of view."""
    coarse = np.zeros((100, 100, 3), np.uint8)
    coarse[:, :50] = 200  # left half bright
    fine = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
    spec = PatchSpec(window_um=200.0, px=20)
    a = PatchStore(tmp_path).patches("t", _section(coarse, [(40, 40), (60, 40)], "C", 20.0), spec)
    b = PatchStore(tmp_path).patches("t", _section(fine, [(80, 80), (120, 80)], "F", 40.0), spec)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 5


def test_window_off_the_image_is_padded_and_counted_or_refused(tmp_path):
    image = np.full((60, 60, 3), 100, np.uint8)
    section = _section(image, [(5, 30), (25, 30), (45, 30)])
    store = PatchStore(tmp_path)
    patches = store.patches("t", section, PatchSpec(window_um=200.0, px=20))
    assert store.info("t", section, PatchSpec(window_um=200.0, px=20)).n_padded == 1
    assert (patches[0][:, :5] == 255).all() and (patches[0][:, 5:] == 100).all()
    with pytest.raises(DataError, match=r"spot s0 .*runs off"):
        store.patches("t", section, PatchSpec(window_um=200.0, px=20, off_image="error"))


def test_spot_centre_outside_the_image_is_an_error_naming_the_field(tmp_path):
    section = _section(np.zeros((50, 50, 3), np.uint8), [(10, 10), (30, 10), (70, 10)])
    with pytest.raises(DataError, match=r"s2 .*pixel_x/pixel_y .*outside"):
        PatchStore(tmp_path).patches("t", section, PatchSpec(window_um=100.0, px=10))
    assert not list(tmp_path.rglob("*.npy")), "nothing half-written"


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    section = _section(_gradient(80, 80), [(30, 30), (50, 30)])
    store, spec = PatchStore(tmp_path), PatchSpec(window_um=100.0, px=10)
    good = np.array(store.patches("t", section, spec))
    [path] = list(tmp_path.rglob("*.npy"))
    path.write_bytes(b"garbage")
    assert np.array_equal(store.patches("t", section, spec), good)


def test_stacked_patches_read_rows_from_the_files(tmp_path):
    """Rows of memory-mapped parts are read from their files (not through the mapping), in any order."""
    from bench.data.patches import StackedPatches

    store, spec = PatchStore(tmp_path), PatchSpec(window_um=100.0, px=10)
    parts = [store.patches("t", _section(_gradient(100, 100), centres, sid), spec)
             for sid, centres in (("A", [(30, 30), (50, 30), (70, 30)]), ("B", [(30, 50), (50, 50)]))]
    expected = np.concatenate([np.array(p) for p in parts])
    stacked = StackedPatches(parts)
    for rows in ([4, 0, 2], [1], [3, 4]):
        assert np.array_equal(stacked[np.array(rows)], expected[rows])
    assert np.array_equal(stacked[4], expected[4]) and np.array_equal(np.asarray(stacked), expected)
    view = StackedPatches([parts[0][1:], parts[1]])  # a view of a mapping starts further into the file
    assert np.array_equal(view[np.array([0, 3, 1])], expected[[1, 4, 2]])


def test_reading_an_epoch_of_patches_does_not_keep_them_resident(tmp_path):
    """An epoch of shuffled batches over 60 MB of patch files leaves well under that mapped in memory."""
    from bench.data.patches import StackedPatches
    from bench.nn.batching import PatchBatches

    def mapped_mb(path):  # resident pages of this file's mappings in this process
        total, inside = 0, False
        for line in open("/proc/self/smaps"):
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total / 1024

    if not Path("/proc/self/smaps").exists():
        pytest.skip("needs Linux /proc")
    path = tmp_path / "p.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(20_000, 32, 32, 3))
    array[:] = 7
    del array
    stacked = StackedPatches([np.load(path, mmap_mode="r")])
    for _, batch in PatchBatches(stacked, 128, shuffle=True):
        assert batch[0, 0, 0, 0] == 7
    assert mapped_mb(path) < 10
