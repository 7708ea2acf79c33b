"""Vectorised per-gene and per-spot scores equal scipy/sklearn computed one gene at a time."""
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error

from bench.evaluation import metrics as m
from bench.evaluation.evaluate import job_scores
from bench.evaluation.published import pcc_per_spot
from bench.evaluation.stats import gene_sets

PER_GENE = ["pearson", "spearman", "mse", "mae"]


def _data(seed=0, n_spots=60, n_genes=12):
    rng = np.random.default_rng(seed)
    truth = rng.normal(2.0, 1.0, (n_spots, n_genes))
    pred = 0.5 * truth + rng.normal(0.0, 1.0, (n_spots, n_genes))
    pred[:, 0] = 1.5  # constant prediction: r and rho undefined
    truth[:, 1] = 3.0  # constant truth: undefined
    truth[:, 2] = np.round(truth[:, 2])  # ties: average ranks
    pred[:, 2] = np.round(pred[:, 2] * 2)
    pred[:, 3] = truth[:, 3] * 2 + 1  # r = 1, p = 0
    return truth, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_gene_metrics_equal_scipy_and_sklearn_gene_by_gene(seed):
    truth, pred = _data(seed)
    got, _ = job_scores(truth, pred, gene_sets(truth.mean(axis=0), None), PER_GENE)  # the evaluation's path
    for j in range(truth.shape[1]):
        t, p = truth[:, j], pred[:, j]
        assert got["mse"][j] == pytest.approx(mean_squared_error(t, p), abs=1e-10)
        assert got["mae"][j] == pytest.approx(mean_absolute_error(t, p), abs=1e-10)
        if j in (0, 1):
            assert np.isnan(got["pearson"][j]) and np.isnan(got["spearman"][j]) and np.isnan(got["pearson_p"][j])
            continue
        r = stats.pearsonr(t, p)
        rho = stats.spearmanr(t, p)
        assert got["pearson"][j] == pytest.approx(r.statistic, abs=1e-10)
        assert got["pearson_p"][j] == pytest.approx(r.pvalue, abs=1e-10)
        assert got["spearman"][j] == pytest.approx(rho.statistic, abs=1e-10)
    assert got["pearson"][3] == pytest.approx(1.0) and got["pearson_p"][3] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(got["truth_mean"], truth.mean(axis=0), rtol=0, atol=1e-12)


def test_undefined_correlations_match_scipy_warnings_and_are_counted_not_zeroed():
    truth, pred = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(stats.pearsonr(truth[:, 0], pred[:, 0]).statistic)
        assert np.isnan(stats.spearmanr(truth[:, 1], pred[:, 1]).statistic)
    r = m.pearson_per_gene(truth, pred)
    _, scores = job_scores(truth, pred, gene_sets(truth.mean(axis=0), None), ["pearson"])
    assert scores["n_undefined_pearson"] == 2
    assert scores["acg_pearson"] == pytest.approx(np.mean(r[2:]))


def test_small_p_values_and_tiny_samples():
    rng = np.random.default_rng(5)
    t = rng.normal(size=(500, 3))
    p = t + rng.normal(0, 0.3, t.shape)
    r = m.pearson_per_gene(t, p)
    assert np.allclose(m.pearson_pvalue(r, 500), [stats.pearsonr(t[:, j], p[:, j]).pvalue for j in range(3)],
                       rtol=1e-8, atol=1e-300)
    assert np.isnan(m.pearson_pvalue(np.array([0.5]), 2)).all()


def test_single_metrics_and_per_spot_pearson():
    truth, pred = _data(3)
    assert np.allclose(m.mse_per_gene(truth, pred), ((truth - pred) ** 2).mean(axis=0))
    assert np.allclose(m.mae_per_gene(truth, pred), np.abs(truth - pred).mean(axis=0))
    rho = m.spearman_per_gene(truth, pred)
    assert np.isnan(rho[:2]).all() and np.isfinite(rho[2:]).all()
    spot = pcc_per_spot(truth, pred)
    for i in range(0, len(truth), 7):
        assert spot[i] == pytest.approx(stats.pearsonr(truth[i], pred[i]).statistic, abs=1e-10)
    flat = pred.copy()
    flat[4] = 1.0
    assert np.isnan(pcc_per_spot(truth, flat)[4])


def test_gene_stats_and_shape_errors():
    x = np.arange(12.0).reshape(4, 3)
    s = m.gene_stats(x)
    assert np.allclose(s["mean"], x.mean(axis=0)) and np.allclose(s["variance"], x.var(axis=0, ddof=1))
    with pytest.raises(ValueError, match="same"):
        job_scores(np.zeros((3, 2)), np.zeros((3, 3)), gene_sets(np.zeros(2), None), PER_GENE)
