"""Aggregates, bootstrap and significance tests against direct scipy/statsmodels/scikit-posthocs calls."""
import math

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests

from bench.evaluation import metric_registry, stats


def test_wilcoxon_on_a_hand_checkable_example_with_undefined_genes_dropped():
    b = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2])
    a = np.array([1.0, 2.0, 3.0, -4.0, 5.0, 6.0, np.nan]) / 10
    out = stats.wilcoxon_pair(a, b)
    # |d| ranks 1..6, the negative one has rank 4: W = min(17, 4) = 4; exact p = 2 * 7/64.
    assert out["statistic"] == 4 and out["p_value"] == pytest.approx(14 / 64)
    direct = ss.wilcoxon(a[:6], b[:6], alternative="two-sided")
    assert (out["statistic"], out["p_value"]) == (pytest.approx(direct.statistic), pytest.approx(direct.pvalue))
    assert out["n_genes"] == 6 and out["n_dropped_undefined"] == 1
    assert out["median_difference"] == pytest.approx(0.25) and out["share_improved"] == pytest.approx(5 / 6)
    same = stats.wilcoxon_pair(a, a)
    assert same["p_value"] == 1.0 and same["median_difference"] == 0


def test_bh_equals_statsmodels_and_keeps_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5, 0.002])
    got = stats.bh_adjust(p)
    finite = np.isfinite(p)
    assert np.isnan(got[2])
    assert np.allclose(got[finite], multipletests(p[finite], method="fdr_bh")[1])
    assert got[0] == pytest.approx(0.01 * 5 / 2)  # rank 2 of 5: p * m / rank


def test_friedman_nemenyi_and_cd_on_a_hand_checkable_example():
    # Four folds, three methods, the same order every time: ranks 1, 2, 3.
    matrix = pd.DataFrame({"a": [0.5, 0.6, 0.55, 0.7], "b": [0.4, 0.5, 0.45, 0.6], "c": [0.3, 0.2, 0.1, 0.0]})
    out = stats.friedman_nemenyi(matrix)
    # chi2 = 12 N / (k (k + 1)) * sum R_j^2 - 3 N (k + 1) = 4 * 14 - 48 = 8; 2 df: p = exp(-8 / 2).
    assert out["statistic"] == pytest.approx(8.0) and out["p_value"] == pytest.approx(math.exp(-4))
    direct = ss.friedmanchisquare(matrix["a"], matrix["b"], matrix["c"])
    assert out["statistic"] == pytest.approx(direct.statistic) and out["p_value"] == pytest.approx(direct.pvalue)
    assert out["average_ranks"] == {"a": 1.0, "b": 2.0, "c": 3.0}
    # Demsar 2006, table 5: q_0.05 = 2.343 for k = 3; CD = q sqrt(k (k + 1) / (6 N)).
    assert out["critical_difference"] == pytest.approx(2.343 * math.sqrt(12 / 24), abs=1e-3)
    posthoc = sp.posthoc_nemenyi_friedman(matrix.to_numpy())
    studentized = ss.studentized_range.sf(2 / math.sqrt(12 / 24) * math.sqrt(2), 3, np.inf)
    assert out["nemenyi_p"]["a"]["c"] == pytest.approx(posthoc.iloc[0, 2]) == pytest.approx(studentized)
    assert out["nemenyi_p"]["a"]["b"] == pytest.approx(posthoc.iloc[0, 1])


def test_friedman_excludes_undefined_methods_and_drops_incomplete_blocks():
    matrix = pd.DataFrame({"a": [0.5, 0.6, np.nan, 0.7], "b": [0.4, 0.5, 0.45, 0.6], "c": [0.3, 0.2, 0.1, 0.0],
                           "mean": [np.nan] * 4})
    out = stats.friedman_nemenyi(matrix)
    assert out["excluded_methods"] == ["mean"] and out["n_blocks"] == 3 and out["n_blocks_dropped"] == 1
    assert stats.friedman_nemenyi(matrix[["a", "mean"]])["p_value"] is None
    # Lower is better for errors: ranks flip.
    assert stats.friedman_nemenyi(matrix[["b", "c"]].assign(d=1.0).iloc[:3], higher_is_better=False)[
        "average_ranks"]["c"] == 1.0


def _per_gene(rng, methods, folds=3, genes=30):
    rows = []
    for fold in range(folds):
        base = rng.normal(0.3, 0.2, genes)
        for i, m in enumerate(methods):
            r = base + 0.05 * i + rng.normal(0, 0.05, genes)
            rows.append(pd.DataFrame({"dataset": "d", "protocol": "lopo", "method": m, "seed": 0, "fold": fold,
                                      "gene": [f"g{j}" for j in range(genes)], "pearson": r}))
    return pd.concat(rows, ignore_index=True)


def test_pairwise_tests_average_over_folds_and_correct_across_pairs():
    rng = np.random.default_rng(0)
    per_gene = _per_gene(rng, ["x", "y", "z"])
    per_gene.loc[(per_gene["method"] == "y") & (per_gene["gene"] == "g3") & (per_gene["fold"] == 1), "pearson"] = np.nan
    table = stats.pairwise_tests(per_gene)
    assert list(zip(table["method_a"], table["method_b"])) == [("x", "y"), ("x", "z"), ("y", "z")]
    means = per_gene.pivot_table(index="gene", columns="method", values="pearson", aggfunc="mean", sort=False)
    xy = table.iloc[0]
    keep = means.index != "g3"  # undefined in one fold for y: dropped from y's pairs
    direct = ss.wilcoxon(means.loc[keep, "x"], means.loc[keep, "y"])
    assert xy["p_value"] == pytest.approx(direct.pvalue) and xy["n_dropped_undefined"] == 1
    assert table.iloc[1]["n_dropped_undefined"] == 0 and table.iloc[1]["n_genes"] == 30
    assert xy["share_improved"] < 0.5 and xy["median_difference"] < 0  # y is better than x by design
    assert np.allclose(table["p_bh"], multipletests(table["p_value"], method="fdr_bh")[1])


def test_pairwise_uses_only_folds_both_methods_ran():
    rng = np.random.default_rng(1)
    per_gene = _per_gene(rng, ["x", "y"])
    per_gene = per_gene[~((per_gene["method"] == "y") & (per_gene["fold"] == 2))]
    row = stats.pairwise_tests(per_gene).iloc[0]
    assert row["n_folds"] == 2
    shared = per_gene[per_gene["fold"] < 2]
    means = shared.pivot_table(index="gene", columns="method", values="pearson", aggfunc="mean")
    assert row["p_value"] == pytest.approx(ss.wilcoxon(means["x"], means["y"]).pvalue)


def test_gene_sets_and_their_aggregates():
    truth_mean = np.arange(60.0)
    train_var = np.arange(60.0)[::-1]
    sets = stats.gene_sets(truth_mean, train_var)
    assert np.flatnonzero(sets["heg"]).tolist() == list(range(10, 60))
    assert np.flatnonzero(sets["hvg"]).tolist() == list(range(0, 50))
    assert not stats.gene_sets(truth_mean, None)["hvg"].any()
    r = np.where(np.arange(60) < 10, 0.9, 0.1)
    r[20] = np.nan
    metrics = {"pearson": r, "spearman": r, "mse": np.ones(60), "mae": np.arange(60.0)}
    block = metric_registry.Block(np.zeros((2, 60)), np.zeros((2, 60)))  # gene-level values are given
    agg = metric_registry.aggregates(block, metric_registry.resolve(list(metrics)), metrics, sets)
    assert agg["heg_pearson"] == pytest.approx(0.1) and agg["n_undefined_pearson"] == 1
    assert agg["hvg_pearson"] == pytest.approx((10 * 0.9 + 39 * 0.1) / 49)
    assert agg["acg_mae"] == pytest.approx(29.5) and agg["heg_mae"] == pytest.approx(34.5)


def test_bootstrap_is_seeded_paired_and_covers_the_mean():
    rng = np.random.default_rng(2)
    jobs = [rng.normal(0.4, 0.2, (200, 2)) for _ in range(3)]
    low, high = stats.bootstrap_ci(jobs, n_boot=500, seed=7)
    again = stats.bootstrap_ci(jobs, n_boot=500, seed=7)
    assert np.array_equal(low, again[0]) and np.array_equal(high, again[1])
    mean = np.mean([j.mean(axis=0) for j in jobs], axis=0)
    assert np.all(low < mean) and np.all(mean < high) and np.all(high - low < 0.1)
    # Same job sizes, same seed: the same genes are drawn, so a shift of every gene shifts the CI exactly.
    shifted = stats.bootstrap_ci([j + 0.1 for j in jobs], n_boot=500, seed=7)
    assert np.allclose(shifted[0], low + 0.1) and np.allclose(shifted[1], high + 0.1)
    with_nan = [j.copy() for j in jobs]
    with_nan[0][:, 1] = np.nan  # one job undefined on a metric: the others still give a CI
    assert np.isfinite(stats.bootstrap_ci(with_nan, n_boot=100)[0]).all()
