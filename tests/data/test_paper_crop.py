"""The paper profiles cut the published pixel crop (224 px, or 112 px for the whole-slide methods) of the
image as it is, not a window in µm resampled: on her2st (0.687 µm/px) 165 µm would be 240 px, 7% wider."""
import logging

import numpy as np
import pytest

from bench.data.patches import PatchSpec, PatchStore, cut_patches, window_pixels
from bench.method import build_method
from bench.registry import get_method_class


def _section(image, centres, pitch_px=20.0):
    """A section whose spots sit on a grid with the given pixel pitch (200 µm per grid step)."""
    import anndata as ad
    import pandas as pd

    from bench.data.dataset import ArrayImage, Section

    centres = np.asarray(centres, dtype=float)
    grid = np.round((centres - centres.min(axis=0)) / pitch_px).astype(int)
    obs = pd.DataFrame({"array_x": grid[:, 0], "array_y": grid[:, 1], "pixel_x": centres[:, 0],
                        "pixel_y": centres[:, 1], "pathology_label": np.nan, "cluster_label": np.nan},
                       index=[f"s{i}" for i in range(len(centres))])
    adata = ad.AnnData(X=np.ones((len(centres), 2), dtype=np.float32), obs=obs, var=pd.DataFrame(index=["A", "B"]))
    return Section("S1", "P", load_counts=lambda: adata, image=ArrayImage(image, "test:S1"))


def _gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)

PUBLISHED_CROP = {"st-net": 224, "bleep": 224, "mclstexp": 224, "histogene": 112, "hist2st": 112,
                  "thitogene": 112}


@pytest.mark.parametrize("name", sorted(PUBLISHED_CROP))
def test_paper_profile_cuts_the_published_pixel_crop_without_resampling(name):
    spec = build_method(get_method_class(name), "paper", {}).patch_spec()
    assert spec.window_px == spec.px == PUBLISHED_CROP[name]
    # her2st's scale: the window stays the published pixels whatever the µm/px
    assert window_pixels(spec, 0.687) == window_pixels(spec, 0.5) == PUBLISHED_CROP[name]
    # quick (and --set <method>.window_px=None) cut a window in µm: the same tissue area on any dataset
    for spec in (build_method(get_method_class(name), "quick", {}).patch_spec(),
                 build_method(get_method_class(name), "paper", {"window_px": None}).patch_spec()):
        assert spec.window_px is None and window_pixels(spec, 0.687) == round(spec.window_um / 0.687)


def test_native_window_is_the_image_pixels_as_they_are(tmp_path, caplog):
    image = _gradient(120, 120)
    # 20 px per 200 µm grid step: 10 µm/px. A 100 µm window would be 10 px; the native one is 14 px.
    section = _section(image, [(40, 40), (60, 40), (40, 60), (60, 60)])
    with caplog.at_level(logging.WARNING):
        patches, info = cut_patches(section, PatchSpec(window_um=100.0, px=14, window_px=14))
    assert info.window_px == 14
    assert np.array_equal(patches[0], image[33:47, 33:47])
    assert "native 14 px window covers 140 µm" in caplog.text  # a coarse image is named
    # resampled from the same native crop: the same field of view at fewer pixels
    small, _ = cut_patches(section, PatchSpec(px=7, window_px=14))
    assert small.shape == (4, 7, 7, 3)
    assert abs(small[0].astype(float).mean() - patches[0].astype(float).mean()) < 3
    # the cache keeps a native crop apart from a µm window of the same size
    store = PatchStore(tmp_path)
    assert store.key("t", section, PatchSpec(window_um=140.0, px=14)) != \
        store.key("t", section, PatchSpec(px=14, window_px=14))
    assert "-native-14src-14px-" in store.key("t", section, PatchSpec(px=14, window_px=14))


@pytest.mark.parametrize("bad", [0, -3, 22.5, "224", True])
def test_bad_window_px_is_refused(bad):
    with pytest.raises(ValueError, match="window_px"):
        PatchSpec(window_px=bad)
