"""µm per pixel fitted to the spot grid: synthetic lattices of every array geometry with a known scale,
rotation, a flipped axis and jitter must give the scale back within 0.5%; the wrong geometry is refused."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.data.dataset import DataError, um_per_px_from_spots

SQRT3 = np.sqrt(3)


def lattice(kind: str, pitch_um: float, um_per_px: float, angle_deg: float, jitter_um: float, seed: int = 0,
            flip: bool = True, drop: float = 0.2):
    """Spots of an array of this kind (st: square grid steps, visium: Space Ranger's array_col/array_row of
    a hexagonal grid), placed in pixels with a rotation, a flipped y axis (images count rows downwards),
    Gaussian jitter, and a random fifth of the spots missing (tissue covers only part of an array)."""
    rng = np.random.default_rng(seed)
    if kind == "visium":
        rows, cols = np.mgrid[0:30, 0:60]
        keep = (rows + cols) % 2 == 0  # every other column, alternating by row
        ax, ay = cols[keep], rows[keep]
        um = np.column_stack([ax * pitch_um / 2, ay * pitch_um * SQRT3 / 2])
    else:
        ay, ax = (g.ravel() for g in np.mgrid[0:33, 0:35])
        um = np.column_stack([ax, ay]) * pitch_um
    ax, ay = np.ravel(ax), np.ravel(ay)
    theta = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    if flip:
        rot = rot @ np.diag([1.0, -1.0])
    um = um @ rot.T + rng.normal(0, jitter_um, um.shape)
    px = um / um_per_px + np.array([3000.0, 4000.0])
    keep = rng.random(len(px)) > drop
    return pd.DataFrame({"array_x": ax[keep], "array_y": ay[keep], "pixel_x": px[keep, 0], "pixel_y": px[keep, 1]})


@pytest.mark.parametrize("kind, pitch, grid", [("st", 200.0, "square"), ("st", 100.0, "square"),  # ST 1k, ST 2k
                                               ("visium", 100.0, "hex")])
@pytest.mark.parametrize("um_per_px, angle", [(0.6875, 0.0), (0.2634, 7.5), (3.8, -33.0)])
def test_fitted_scale_within_half_a_percent(kind, pitch, grid, um_per_px, angle):
    obs = lattice(kind, pitch, um_per_px, angle, jitter_um=pitch * 0.07)  # her2st's spots scatter ~14 µm
    got = um_per_px_from_spots(obs, pitch, grid, where="synthetic")
    assert got == pytest.approx(um_per_px, rel=0.005)


def test_nearest_neighbour_distance_was_biased_and_the_fit_is_not():
    """The old estimate (median nearest-neighbour distance) reads high on a jittered grid; the fit does not."""
    from scipy.spatial import cKDTree

    obs = lattice("st", 200.0, 0.6875, 3.0, jitter_um=14.0, drop=0.0)
    px = obs[["pixel_x", "pixel_y"]].to_numpy()
    dist, _ = cKDTree(px).query(px, k=2)
    assert 200.0 / np.median(dist[:, 1]) > 0.6875 * 1.03
    assert um_per_px_from_spots(obs, 200.0, "square") == pytest.approx(0.6875, rel=0.005)


def test_pixels_only_uses_the_pitch_between_neighbours():
    obs = lattice("visium", 100.0, 0.5, 20.0, jitter_um=0.0)
    assert um_per_px_from_spots(obs, 100.0, "pixels") == pytest.approx(0.5, rel=0.005)


def test_a_misplaced_spot_does_not_pull_the_fit():
    obs = lattice("st", 200.0, 0.7, 0.0, jitter_um=5.0)
    obs.loc[obs.index[0], "pixel_x"] += 5000.0  # one spot in the wrong place entirely
    assert um_per_px_from_spots(obs, 200.0, "square") == pytest.approx(0.7, rel=0.005)


def test_wrong_geometry_is_refused():
    """A Visium array read as a square grid fits with 1.7x different scales along x and y: refused."""
    obs = lattice("visium", 100.0, 0.5, 0.0, jitter_um=1.0)
    with pytest.raises(DataError, match="square grid of 100 µm pitch with .*different scales"):
        um_per_px_from_spots(obs, 100.0, "square", where="V1")



def test_spots_along_one_line_fit_along_it_and_one_spot_is_refused():
    obs = lattice("st", 200.0, 0.7, 12.0, jitter_um=5.0, drop=0.0)
    row = obs[obs["array_y"] == 3]
    assert um_per_px_from_spots(row, 200.0, "square") == pytest.approx(0.7, rel=0.005)
    with pytest.raises(DataError, match="do not vary over its 1 spot"):
        um_per_px_from_spots(row.iloc[:1], 200.0, "square", where="V1")
