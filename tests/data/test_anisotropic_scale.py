"""An image whose two axes have different scales (public ST mouse olfactory bulb sections fit their square
grid with 1.11x): each axis's µm/px is fitted, windows are cut to their size in µm along each, the file is
named in a warning, and a user who knows the scale gives it (``um_per_px``), after which the checks only warn.

The data are ST-like .h5ad sections made here: a square grid of 100 µm pitch (ST "2k"), placed on an image of
1.00 µm/px along x and 1.11 µm/px along y, striped every 20 µm along each axis (so a patch shows how many µm
it covers along x and along y)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.data.dataset import DataError, fit_grid, um_per_px_from_spots, um_per_px_xy_from_spots
from bench.data.patches import PatchSpec, cut_patches

UM_X, UM_Y = 1.0, 1.11  # µm per pixel along image x and y: 11% anisotropic
PITCH = 100.0
MARGIN_UM = 300.0
STRIPE_UM = 20.0


def st_lattice(n: int = 12, seed: int = 0, jitter_um: float = 3.0) -> pd.DataFrame:
    """Square-grid spots (every grid position; column + row parity varies, as on an ST array) in pixels."""
    rng = np.random.default_rng(seed)
    ay, ax = (g.ravel() for g in np.mgrid[0:n, 0:n])
    um = np.column_stack([ax, ay]) * PITCH + MARGIN_UM + rng.normal(0, jitter_um, (len(ax), 2))
    px = um / np.array([UM_X, UM_Y])
    return pd.DataFrame({"array_x": ax, "array_y": ay, "pixel_x": px[:, 0], "pixel_y": px[:, 1]},
                        index=[f"s{i}" for i in range(len(ax))])


def striped_image(n: int = 12) -> np.ndarray:
    """Red stripes every STRIPE_UM along x, green every STRIPE_UM along y, in µm, at each axis's scale."""
    extent_um = (n - 1) * PITCH + 2 * MARGIN_UM
    width, height = int(extent_um / UM_X), int(extent_um / UM_Y)
    x_um = np.arange(width) * UM_X
    y_um = np.arange(height) * UM_Y
    image = np.full((height, width, 3), 120, dtype=np.uint8)
    image[:, :, 0] = np.where((x_um // STRIPE_UM) % 2 == 0, 220, 40)[None, :]
    image[:, :, 1] = np.where((y_um // STRIPE_UM) % 2 == 0, 220, 40)[:, None]
    return image


def write_st_section(path: Path, patient: str, seed: int = 0) -> Path:
    import anndata as ad

    spots = st_lattice(seed=seed)
    rng = np.random.default_rng(seed)
    X = rng.poisson(4.0, (len(spots), 12)).astype(np.float32)
    obs = spots[["array_x", "array_y"]].rename(columns={"array_x": "array_col", "array_y": "array_row"})
    obs["patient"] = patient
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(X.shape[1])]))
    a.obsm["spatial"] = spots[["pixel_x", "pixel_y"]].to_numpy()
    a.uns["spatial"] = {path.stem: {"images": {"hires": striped_image()}, "scalefactors": {"tissue_hires_scalef": 1.0}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path


def stripe_period(profile: np.ndarray) -> float:
    """Mean distance in pixels between rising edges of a two-level profile."""
    high = profile > profile.mean()
    rising = np.flatnonzero(~high[:-1] & high[1:])
    return float(np.diff(rising).mean())


def test_each_axis_scale_is_fitted_and_the_wrong_geometry_names_the_way_through(caplog):
    spots = st_lattice()
    fit = fit_grid(spots, "square", PITCH)
    assert fit.anisotropy == pytest.approx(UM_Y / UM_X, rel=0.005)
    assert fit.um_per_px_xy == pytest.approx((UM_X, UM_Y), rel=0.005)
    # One scale for the things that want one (thumbnails, records): the geometric mean.
    assert um_per_px_from_spots(spots, PITCH, "square") == pytest.approx(np.sqrt(UM_X * UM_Y), rel=0.005)
    with caplog.at_level(logging.WARNING):
        assert um_per_px_xy_from_spots(spots, PITCH, "square", where="MOB1 (mob1.h5ad)") == \
            pytest.approx((UM_X, UM_Y), rel=0.005)
        um_per_px_xy_from_spots(spots, PITCH, "square", where="MOB1 (mob1.h5ad)")
    warned = [r.getMessage() for r in caplog.records if "differs between its axes" in r.getMessage()]
    assert len(warned) == 1 and "mob1.h5ad" in warned[0] and "1.11x" in warned[0]
    # Read as a hexagonal grid it is refused, saying how the other geometry fits and what lets it through.
    with pytest.raises(DataError) as refused:
        um_per_px_from_spots(spots, PITCH, "hex", where="MOB1 (mob1.h5ad)")
    message = str(refused.value)
    assert "mob1.h5ad" in message and "as a square grid they fit with 1.11x" in message
    assert "grid=st-2k" in message and "um_per_px=<x>,<y>" in message


def test_windows_cover_the_same_microns_along_both_axes():
    """The window is 165 µm along x (165 px) and along y (149 px), so the 40 µm stripe period repeats at the
    same patch-pixel period along both axes of the square patch (one window of 157 px, the mean scale, would
    make them differ by 1.11x)."""
    from bench.data.dataset import ArrayImage, Section
    from bench.data.formats import spot_anndata

    spots = st_lattice()
    counts = spot_anndata(np.ones((len(spots), 3)), spots, ["A", "B", "C"], "MOB1", "test")
    section = Section("MOB1", "P1", lambda: counts, ArrayImage(striped_image(), "mob1.png"), spot_pitch_um=PITCH)
    patches, info = cut_patches(section, PatchSpec(window_um=165.0, px=132))
    assert (info.window_px, info.window_px_y) == (165, round(165 / UM_Y))
    assert info.um_per_px_y / info.um_per_px == pytest.approx(UM_Y / UM_X, rel=0.005)
    expected = 132 * 2 * STRIPE_UM / 165.0  # patch pixels per stripe period: 32
    along_x = np.mean([stripe_period(p[66, :, 0].astype(float)) for p in patches[::7]])
    along_y = np.mean([stripe_period(p[:, 66, 1].astype(float)) for p in patches[::7]])
    assert along_x == pytest.approx(expected, rel=0.02) and along_y == pytest.approx(expected, rel=0.02)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STBENCH_DATA", raising=False)


def test_an_anisotropic_st_section_loads_and_runs(tmp_path, cache, capsys, caplog):
    """The MOB-like case end to end: refused without a pitch (saying which options pass), loaded with
    grid=st-2k (a warning naming the file), with um_per_px=x,y (the scale given wins), and run."""
    folder = tmp_path / "data" / "h5ad"
    write_st_section(folder / "MOB1.h5ad", "P1", seed=0)
    write_st_section(folder / "MOB2.h5ad", "P2", seed=1)
    assert main(["data", "info", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "grid=st-2k" in err and "um_per_px=" in err
    with caplog.at_level(logging.WARNING):
        assert main(["data", "info", str(folder), "--data-option", "grid=st-2k"]) == 0
    out = capsys.readouterr().out
    assert "MOB1" in out and "µm/px" in out
    assert any("MOB1.h5ad" in r.getMessage() and "1.11x" in r.getMessage() for r in caplog.records)
    # The user's scale: no fit needed, and the grid fit, where there is one, only warns on disagreement.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["data", "info", str(folder), "--data-option", f"um_per_px={UM_X},{UM_Y}"]) == 0
        assert main(["data", "info", str(folder), "--data-option", "grid=st", "--data-option",
                     f"um_per_px={UM_X},{UM_Y}"]) == 0  # 200 µm pitch: the fit says 2x; warned, not refused
    assert any("using the given scale" in r.getMessage() for r in caplog.records)
    capsys.readouterr()
    assert main(["data", "info", str(folder), "--data-option", "um_per_px=0,1"]) == 2
    assert "um_per_px" in capsys.readouterr().err
    from bench.data.formats import load_path

    section = load_path(folder, grid="st-2k")["MOB1"]
    assert section.um_per_px_xy == pytest.approx((UM_X, UM_Y), rel=0.005)
    assert load_path(folder, um_per_px=f"{UM_X},{UM_Y}")["MOB1"].um_per_px_xy == (UM_X, UM_Y)
    # A run's fold inputs, through the patch store (a full `bench run` spends ~35 s starting MLflow here).
    from bench.data.patches import PatchStore
    from bench.data.splits import make_folds
    from bench.run.inputs import build_fold_inputs

    dataset = load_path(folder, grid="st-2k")
    fold = make_folds("lopo", {sid: s.patient_id for sid, s in dataset.sections.items()}, seed=0)[0]
    inputs = build_fold_inputs(dataset, fold, ["G0", "G1"], PatchStore(tmp_path / "cache"),
                               PatchSpec(window_um=165.0, px=32))
    assert inputs.train.patches.shape == (144, 32, 32, 3) and inputs.test.patches.shape == (144, 32, 32, 3)
    assert inputs.train.um_per_px["MOB1" if "MOB1" in fold.train else "MOB2"] == \
        pytest.approx(np.sqrt(UM_X * UM_Y), rel=0.005)


def write_checkerboard_section(path: Path, *, um_xy=(UM_X, UM_Y), spot_diameter_px: float | None = None,
                               hexagonal: bool = False) -> Path:
    """A section of one parity of column + row: an ST "2k" checkerboard (a square grid of 100 µm pitch with
    every other position, spots at even array_col + array_row) or, ``hexagonal``, Visium's grid
    (conftest.visium_lattice); pixels at ``um_xy`` µm/px along x and y. ``spot_diameter_px``: the scale factors
    then give the scale (spot_diameter_fullres, for a 55 µm spot), one value for both axes."""
    import anndata as ad
    from conftest import visium_lattice

    if hexagonal:
        ay, ax, um = visium_lattice(8, 16)
    else:
        ay, ax = (g.ravel() for g in np.mgrid[0:12, 0:12])
        keep = (ax + ay) % 2 == 0
        ax, ay = ax[keep], ay[keep]
        um = np.column_stack([ax, ay]) * PITCH
    px = (um + MARGIN_UM + np.random.default_rng(0).normal(0, 3.0, um.shape)) / np.array(um_xy)
    obs = pd.DataFrame({"array_col": ax, "array_row": ay}, index=[f"s{i}" for i in range(len(ax))])
    a = ad.AnnData(X=np.random.default_rng(1).poisson(4.0, (len(ax), 5)).astype(np.float32), obs=obs,
                   var=pd.DataFrame(index=[f"G{j}" for j in range(5)]))
    a.obsm["spatial"] = px
    factors = {"tissue_hires_scalef": 1.0}
    if spot_diameter_px is not None:
        factors["spot_diameter_fullres"] = spot_diameter_px
    a.uns["spatial"] = {path.stem: {"images": {"hires": striped_image()}, "scalefactors": factors}}
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path


def test_grid_auto_tells_an_st_2k_checkerboard_from_a_visium_grid_and_says_which(tmp_path, caplog):
    """Both lattices have one parity of column + row; the pixel positions fit the right one with ~1x (1.11x
    here: the image is resized unevenly) and the wrong one with ~1.7x or more."""
    from bench.data.dataset import check_section
    from bench.data.formats import load_path

    write_checkerboard_section(tmp_path / "st2k" / "MOB.h5ad")
    write_checkerboard_section(tmp_path / "visium" / "V1.h5ad", um_xy=(1.0, 1.0), hexagonal=True)
    with caplog.at_level(logging.INFO):
        section = load_path(tmp_path / "st2k")["MOB"]  # grid=auto
        check_section(section)
    chose = [r.getMessage() for r in caplog.records if "grid=auto" in r.getMessage()]
    assert len(chose) == 1 and "MOB.h5ad" in chose[0] and "read as grid=st-2k" in chose[0]
    assert "fit a square grid best (axes' scales 1.11x apart" in chose[0]
    assert (section.grid, section.spot_pitch_um) == ("square", 100.0)
    assert section.um_per_px_xy == pytest.approx((UM_X, UM_Y), rel=0.01)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        visium = load_path(tmp_path / "visium")["V1"]
    assert (visium.grid, visium.spot_pitch_um) == ("hex", 100.0)
    assert "read as grid=visium" in caplog.text and "fit a hex grid best" in caplog.text
    assert visium.um_per_px == pytest.approx(1.0, rel=0.01)


def test_uneven_axes_are_warned_about_under_a_scale_factor_too(tmp_path, caplog):
    """The scale factors give one µm/px (spot_diameter_fullres), the grid fit says the axes differ by 1.11x:
    the same warning as a fitted scale gets, naming the file and the option that cuts each axis to size."""
    from bench.data.dataset import check_section
    from bench.data.formats import load_path

    mean_um = np.sqrt(UM_X * UM_Y)
    write_checkerboard_section(tmp_path / "MOB.h5ad", spot_diameter_px=55.0 / mean_um)
    section = load_path(tmp_path / "MOB.h5ad", grid="st-2k")["MOB"]
    with caplog.at_level(logging.WARNING):
        check_section(section)
        check_section(section)  # once per section
    warned = [r.getMessage() for r in caplog.records if "differs between its axes" in r.getMessage()]
    assert len(warned) == 1 and "MOB.h5ad" in warned[0] and "1.11x" in warned[0]
    assert "um_per_px=<x>,<y>" in warned[0] and "spot_diameter_fullres" in warned[0]
    assert section.um_per_px_xy == pytest.approx((mean_um, mean_um))  # the layout's scale is still the one used
