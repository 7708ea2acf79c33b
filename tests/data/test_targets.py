"""Prediction targets (bench.data.preprocess.TARGETS): per-spot (default) and per-gene (the published one)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import HER2ST

from bench.data.preprocess import normalise, parse_target

# Made once with scprep 1.2.3 in a throwaway virtual environment (scprep is not a dependency of the suite):
#   genes = ["GNAS", "FASN", "MUC1", "HPS6", "TNC", "NR1H2", "NUP93", "HNRNPUL2"]   # of the 785-gene panel
#   x = pd.read_csv("her2st/data/ST-cnts/B4.tsv.gz", sep="\t", index_col=0)[genes].to_numpy(float)
#   expected = scprep.transform.log(scprep.normalize.library_size_normalize(x.T, rescale="median")).T
# i.e. the genes x spots matrix, rows scaled to the median row total, log10(1 + x). rescale="median" is
# named because it was scprep's default only before 1.0 (since 1.0 the default is 10000).
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "scprep_per_gene_B4.npz"


def test_per_gene_target_equals_scprep_on_real_her2st_counts():
    data = np.load(FIXTURE)
    ours = normalise(data["counts"], "per-gene")
    assert ours.shape == data["expected"].shape == (283, 8)
    np.testing.assert_allclose(ours, data["expected"], rtol=1e-6, atol=1e-7)
    # Not trivially equal to the suite's default target.
    assert not np.allclose(normalise(data["counts"], "per-spot"), data["expected"], atol=1e-2)


@pytest.mark.skipif(not (HER2ST / "data" / "ST-cnts" / "B4.tsv.gz").is_file(), reason="no real her2st copy")
def test_scprep_fixture_holds_the_real_b4_counts():
    data = np.load(FIXTURE)
    table = pd.read_csv(HER2ST / "data" / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0)
    real = table.loc[data["spots"], list(data["genes"])].to_numpy()
    np.testing.assert_array_equal(real, data["counts"])


def test_per_gene_target_keeps_sequencing_depth_and_per_spot_removes_it():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.2, 5.0, size=200)  # planted: every spot the same composition, only depth varies
    profile = np.array([50.0, 20.0, 5.0, 1.0])
    counts = depth[:, None] * profile[None, :]
    per_spot = normalise(counts, "per-spot")
    per_gene = normalise(counts, "per-gene")
    assert np.ptp(per_spot, axis=0).max() < 1e-5  # depth divided out
    for g in range(4):
        assert np.corrcoef(per_gene[:, g], np.log(depth))[0, 1] > 0.95  # depth is the signal


def test_per_gene_target_rows_scaled_to_the_median_gene_total():
    counts = np.array([[1.0, 0.0, 10.0], [3.0, 0.0, 30.0]])  # gene totals 4, 0, 40; median 4
    out = normalise(counts, "per-gene")
    expected = np.log10(1 + np.array([[1.0, 0.0, 1.0], [3.0, 0.0, 3.0]]))  # an all-zero gene stays zero
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match="unknown target 'per-cell'.*per-spot, per-gene"):
        parse_target("per-cell")
