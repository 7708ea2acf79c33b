"""Each published metric against an independent implementation (scipy, scikit-learn, or the formula written
out here one gene at a time) and, for the R definitions of HEtoSGEBench (which cannot run here), against
small cases whose expected values were worked out by hand from the R code; each says how."""
import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import normalized_mutual_info_score, r2_score, roc_auc_score

from bench.evaluation import published
from bench.evaluation.metrics import column_ranks


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(1.0, 3.0, 12), (150, 12)).astype(float)
    truth = np.log1p(counts)
    pred = 0.6 * truth + rng.normal(0, 0.6, truth.shape)  # some negative predictions: JS clips them
    return truth, pred, counts


def test_rmse_and_nrmse_hand_case_from_calculate_nrmse():
    # R: actual = c(1, 2, 3, 4), predicted = c(2, 2, 2, 2): rmse = sqrt(mean(c(1, 0, 1, 4))) = sqrt(1.5);
    # range = 4 - 1 = 3; sd(1:4) = sqrt(5/3) (n - 1). nrmse = rmse / range, rmse / sd.
    truth = np.array([[1.0], [2.0], [3.0], [4.0]])
    pred = np.full((4, 1), 2.0)
    assert published.rmse(truth, pred)[0] == pytest.approx(math.sqrt(1.5))
    assert published.nrmse_range(truth, pred)[0] == pytest.approx(math.sqrt(1.5) / 3)
    assert published.nrmse_sd(truth, pred)[0] == pytest.approx(math.sqrt(1.5) / math.sqrt(5 / 3))
    # A constant truth: R divides by 0 (Inf); undefined here, never 0.
    assert np.isnan(published.nrmse_range(np.ones((4, 1)), pred)[0])
    assert np.isnan(published.nrmse_sd(np.ones((4, 1)), pred)[0])


def _disc_ef(x, nbins):
    """infotheo's discEF written out for one vector (a loop, as its C code is)."""
    col = np.sort(x)
    n = len(x)
    freq, mod = n // nbins, n % nbins
    split, point = [], freq - 1
    for _ in range(nbins - 1):
        if mod > 0:
            split.append(col[point + 1])
            mod -= 1
        else:
            split.append(col[point])
        point += freq
    split.append(col[-1] + 0.01)
    return np.array([next(k for k in range(nbins) if v <= split[k]) for v in x])


def test_normalised_mutual_information_matches_sklearn_on_infotheo_bins(pair):
    truth, pred, _ = pair
    got = published.normalised_mutual_information(truth, pred)
    nbins = int(max(10, len(truth) ** (1 / 3)))
    for g in range(truth.shape[1]):
        bt, bp = _disc_ef(truth[:, g], nbins), _disc_ef(pred[:, g], nbins)
        if len(set(bt)) == 1 or len(set(bp)) == 1:  # entropy 0: R's 0 / 0 is NaN (sklearn says 0 by convention)
            assert np.isnan(got[g])
            continue
        assert got[g] == pytest.approx(normalized_mutual_info_score(bt, bp, average_method="geometric"), abs=1e-12)


def test_normalised_mutual_information_hand_cases():
    # n = 10, nbins = max(10, 10^(1/3)) = 10: freq = 1, mod = 0, so each of 10 distinct values is its own
    # bin; any two vectors of distinct values then share all information: MI = H = log(10), NMI = 1.
    rng = np.random.default_rng(1)
    truth = rng.permutation(10).astype(float)[:, None]
    pred = rng.normal(size=(10, 1))
    assert published.normalised_mutual_information(truth, pred)[0] == pytest.approx(1.0)
    # A constant prediction: one bin, entropy 0, MI / sqrt(0 * H) is 0/0: undefined.
    assert np.isnan(published.normalised_mutual_information(truth, np.ones((10, 1)))[0])


def test_jensen_shannon_matches_scipy_after_the_r_normalisation(pair):
    truth, pred, _ = pair
    got = published.jensen_shannon(truth, pred)
    assert not truth[:, -1].any()  # the fixture's last gene is never counted: R's 1/length, a uniform vector

    def r_normalise(x):
        return x / x.sum() if x.sum() != 0 else np.full(len(x), 1 / len(x))

    for g in range(truth.shape[1]):
        p = r_normalise(np.maximum(pred[:, g], 0))
        expected = jensenshannon(r_normalise(truth[:, g]), p, base=2) ** 2  # scipy returns the sqrt
        assert got[g] == pytest.approx(expected, abs=1e-12)


def test_jensen_shannon_hand_cases():
    # exprs = c(1, 0), pred = c(0, 1): disjoint supports, JSD = 0.5 * (1 * log2(2)) + 0.5 * (1 * log2(2)) = 1.
    assert published.jensen_shannon(np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]]))[0] == pytest.approx(1.0)
    # pred = c(-1, -1): pmax(pred, 0) sums to 0, so R uses 1/length = c(0.5, 0.5); exprs = c(0.5, 0.5): JSD 0.
    assert published.jensen_shannon(np.array([[2.0], [2.0]]), np.array([[-1.0], [-1.0]]))[0] == pytest.approx(0)


def _r_cut(x, levels=256):
    """R's cut(x, levels, labels = FALSE) - 1 written out: the breaks of cut.default, then .bincode."""
    lo, hi = x.min(), x.max()
    dx = hi - lo
    if dx == 0:
        dx = abs(lo) if lo != 0 else 1.0
        breaks = np.linspace(lo - dx / 1000, hi + dx / 1000, levels + 1)
    else:
        breaks = np.linspace(lo, hi, levels + 1)
        breaks[0], breaks[-1] = lo - dx / 1000, hi + dx / 1000
    return np.array([next(k for k in range(levels) if breaks[k] < v <= breaks[k + 1]) for v in x])


def test_ssim_matches_the_formula_written_out(pair):
    truth, pred, _ = pair
    got = published.ssim_global(truth, pred)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    def scaled(v):  # R: all zeros when max(v) == 0, else v / max(v)
        return np.zeros(len(v)) if v.max() == 0 else v / v.max()

    for g in range(truth.shape[1]):
        x, y = _r_cut(scaled(pred[:, g])), _r_cut(scaled(truth[:, g]))
        cov = np.cov(x, y)  # n - 1, as R's cov and var
        expected = ((2 * x.mean() * y.mean() + c1) * (2 * cov[0, 1] + c2)) / (
            (x.mean() ** 2 + y.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2))
        assert got[g] == pytest.approx(expected, rel=1e-12)


def test_ssim_hand_cases():
    # x = y = c(0, 1): scaled by max (1), cut into 256 levels: 0 -> level 0, 1 -> level 255 (the top
    # interval). Equal vectors: numerator == denominator, SSIM = 1.
    v = np.array([[0.0], [1.0]])
    assert published.ssim_global(v, v)[0] == pytest.approx(1.0)
    # pred = c(0, 1) -> levels (0, 255): mean 127.5, var 32512.5; truth = c(3, 3) -> scaled c(1, 1), a zero
    # range: R widens it to 1 +- 1/1000 and 1 falls in interval 128, level 127 (var 0, cov 0). Hence
    # SSIM = (2*127.5*127 + C1) * C2 / ((127.5^2 + 127^2 + C1) * (32512.5 + C2)).
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * 127.5 * 127 + c1) * c2 / ((127.5 ** 2 + 127 ** 2 + c1) * (32512.5 + c2))
    assert published.ssim_global(np.array([[3.0], [3.0]]), v)[0] == pytest.approx(expected)


def test_auc_matches_roc_auc_score_and_is_undefined_with_one_class(pair):
    truth, pred, counts = pair
    ranks = column_ranks(pred)
    for cutoff in published.AUC_CUTOFFS:
        got = published.auc_at(counts, pred, cutoff, ranks=ranks)
        for g in range(truth.shape[1]):
            y = counts[:, g] > cutoff
            one_sided = (counts[:, g] > 0).all() or not (counts[:, g] > 0).any()
            if one_sided or y.all() or not y.any():
                assert np.isnan(got[g])
            else:
                assert got[g] == pytest.approx(roc_auc_score(y, pred[:, g]), abs=1e-12)
    # R's first check: counts all above 0 give NA at every cut-off, even where "> 5" has both classes.
    counts = np.array([[1.0], [3.0], [7.0], [9.0]])
    assert np.isnan(published.auc_at(counts, counts, 5)[0])
    # Ties count half (pROC): counts c(0, 2), predictions equal -> AUC 0.5.
    assert published.auc_at(np.array([[0.0], [2.0]]), np.ones((2, 1)), 1)[0] == pytest.approx(0.5)


def test_r2_per_gene_and_per_spot_match_sklearn(pair):
    truth, pred, _ = pair
    got = published.r2_per_gene(truth, pred)
    # The last gene is all zeros: no variance, undefined (SpaRED drops it; sklearn reports 0 by convention).
    assert np.isnan(got[-1])
    np.testing.assert_allclose(got[:-1], r2_score(truth[:, :-1], pred[:, :-1], multioutput="raw_values"),
                               rtol=1e-12)
    np.testing.assert_allclose(published.r2_per_spot(truth, pred),
                               r2_score(truth.T, pred.T, multioutput="raw_values"), rtol=1e-12)
    assert np.isnan(published.r2_per_gene(np.ones((5, 1)), np.zeros((5, 1)))[0])  # no variance: undefined


def test_pcc_per_spot_is_spared_cosine_of_centred_rows(pair):
    truth, pred, _ = pair
    t = truth - truth.mean(axis=1, keepdims=True)
    p = pred - pred.mean(axis=1, keepdims=True)
    cosine = (t * p).sum(1) / np.sqrt((t ** 2).sum(1) * (p ** 2).sum(1))
    np.testing.assert_allclose(published.pcc_per_spot(truth, pred), cosine, rtol=1e-10)


def test_morans_i_matches_the_double_sum_and_hand_cases():
    rng = np.random.default_rng(3)
    coords = np.array([(x, y) for x in range(6) for y in range(5)], dtype=float)
    values = rng.normal(size=(30, 3))
    values[:, 1] = coords[:, 0]  # a gradient: strong positive autocorrelation
    graph = published.spot_graph(coords)
    dense = graph.toarray()
    assert dense[0].sum() == 3 and dense[7].sum() == 8  # corner: 3 neighbours; inside: the 8 around it
    got = published.morans_i(values, graph)
    for g in range(3):
        z = values[:, g] - values[:, g].mean()
        num = sum(dense[i, j] * z[i] * z[j] for i in range(30) for j in range(30))
        assert got[g] == pytest.approx(30 / dense.sum() * num / (z ** 2).sum(), rel=1e-12)
    assert got[1] > 0.5
    # By hand: 2 x 2 spots are all within 1.5 x the spacing of each other (a complete graph), and there
    # sum_{i != j} z_i z_j = (sum z)^2 - sum z^2 = -sum z^2, so I = n / (n (n - 1)) * (-1) = -1/3.
    square = np.array([(0, 0), (0, 1), (1, 0), (1, 1)], dtype=float)
    assert published.morans_i(np.array([[1.0], [5.0], [2.0], [9.0]]), published.spot_graph(square))[0] == \
        pytest.approx(-1 / 3)
    assert np.isnan(published.morans_i(np.ones((4, 1)), published.spot_graph(square))[0])  # constant
    # Per section, then averaged: two copies of the 2 x 2 square, each -1/3.
    pair_values = np.array([[1.0], [5.0], [2.0], [9.0], [3.0], [1.0], [4.0], [1.0]])
    assert published.morans_i_by_section(pair_values, np.vstack([square, square]), ["a"] * 4 + ["b"] * 4)[0] == \
        pytest.approx(-1 / 3)
    # Spots of different sections are never neighbours, even at the same array position.
    two = published.spot_graph(np.vstack([square, square]), ["a"] * 4 + ["b"] * 4).toarray()
    assert two[:4, 4:].sum() == 0 and two[:4, :4].sum() == 12
