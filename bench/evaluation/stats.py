"""Aggregates and significance tests over per-gene scores (pure functions over arrays and tables).

Everything here treats genes as the replicates, so it describes the test sections at hand; claims about
new patients rest on ``bench.evaluation.patients`` (patients resampled, patients paired).

- Per job: ACG (mean over all panel genes), HEG (the 50 genes with the highest mean true expression in
  the test section) and HVG (the 50 genes with the highest variance of the targets in the TRAINING
  sections) of Pearson r, Spearman rho, MSE and MAE. Undefined (NaN) values are left out and counted.
- Per method: mean and sd over folds (and seeds), and a seeded percentile bootstrap CI that resamples
  genes within each job (the same resampled genes for every method of a fold, so CIs are paired).
- Between methods: a two-sided Wilcoxon signed-rank test over genes on per-gene r averaged over the folds
  both methods ran, Benjamini-Hochberg corrected across all pairs (statsmodels ``multipletests``).
- Friedman's test over blocks x methods, Nemenyi's post-hoc test (scikit-posthocs
  ``posthoc_nemenyi_friedman``) and the critical difference of average ranks; the evaluation's blocks are
  patients (``patients.friedman_from_patients``).
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd

from bench.evaluation import metric_registry
from bench.evaluation.metrics import HEG_GENES, top_genes

N_TOP = HEG_GENES
N_SVG = 20  # spatially variable genes: the 20 with the highest Moran's I in the training sections
# The default metrics: every registered one (entry points included). An evaluation may compute fewer
# (``--metrics``); the functions below take the names they should iterate.
METRICS = tuple(metric_registry.names(metric_registry.resolve()))
GENE_SETS = ("acg", "heg", "hvg", "svg")
JOB_COLUMNS = ["dataset", "protocol", "method", "seed", "fold"]


def higher_is_better(metric: str) -> bool | None:
    """The registry's direction of ``metric`` (None: descriptive, e.g. Moran's I; unknown names: higher)."""
    known = metric_registry.all_metrics()
    return known[metric].higher_is_better if metric in known else True


def gene_sets(truth_mean: np.ndarray, train_variance: np.ndarray | None, n: int = N_TOP,
              train_morans_i: np.ndarray | None = None, n_svg: int = N_SVG) -> dict[str, np.ndarray]:
    """Masks over the panel: ``acg`` every gene, ``heg`` top-n mean true expression in the test section,
    ``hvg`` top-n variance of the training targets, ``svg`` the top-``n_svg`` Moran's I of the training
    targets (each all False when its training statistic is unknown). None is chosen by test-set scores."""
    truth_mean = np.asarray(truth_mean)
    none = np.zeros(truth_mean.shape, bool)
    hvg = top_genes(train_variance, n) if train_variance is not None else none
    svg = top_genes(train_morans_i, n_svg) if train_morans_i is not None else none.copy()
    return {"acg": np.ones(truth_mean.shape, dtype=bool), "heg": top_genes(truth_mean, n), "hvg": hvg, "svg": svg}


def aggregate_columns(metrics=None) -> list[str]:
    """``<set>_<metric>`` for every gene set and metric (default: every registered metric)."""
    return [f"{s}_{m}" for s in GENE_SETS for m in (METRICS if metrics is None else metrics)]


def bootstrap_ci(jobs: list[np.ndarray], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of ``mean over jobs of (mean over genes)``, resampling genes within each job.

    ``jobs``: one ``(n_genes_in_set, n_metrics)`` array per job (NaN = undefined, left out of that
    replicate's mean). Jobs are used in the order given and the generator is seeded, so the same job
    sizes in the same order resample the same genes: methods of one fold get paired replicates.
    Returns (low, high), each of length n_metrics."""
    jobs = [np.asarray(j, dtype=np.float64) for j in jobs if len(j)]
    if not jobs:
        return np.array([np.nan]), np.array([np.nan])
    n_metrics = jobs[0].shape[1]
    rng = np.random.default_rng(seed)
    total = np.zeros((n_boot, n_metrics))
    n_defined = np.zeros((n_boot, n_metrics))
    for values in jobs:
        finite = np.isfinite(values)
        filled = np.where(finite, values, 0.0)
        n = len(values)
        idx = rng.integers(0, n, size=(n_boot, n))
        # How often each replicate draws each gene; sums over the drawn genes are then one matrix product.
        weights = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
        weights = weights.reshape(n_boot, n).astype(np.float64)
        sums = weights @ filled
        counts = weights @ finite
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts
        ok = counts > 0
        total += np.where(ok, means, 0.0)
        n_defined += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = total / n_defined  # mean over the jobs whose replicate is defined (NaN if none is)
    low = np.full(n_metrics, np.nan)
    high = np.full(n_metrics, np.nan)
    for k in range(n_metrics):
        col = stat[:, k][np.isfinite(stat[:, k])]
        if len(col):
            low[k], high[k] = np.percentile(col, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return low, high


def method_aggregates(per_job: pd.DataFrame, per_gene: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05, metrics=None) -> pd.DataFrame:
    """One row per (dataset, protocol, method): ``<set>_<metric>`` mean over jobs, ``_sd`` over jobs, and
    ``_ci_low``/``_ci_high`` from ``bootstrap_ci`` (genes resampled within each job; per-gene metrics only:
    a spot-level score has no per-gene values to resample)."""
    metrics = [m for m in (METRICS if metrics is None else metrics) if f"acg_{m}" in per_job]
    gene_level = [m for m in metrics if m in per_gene]
    rows = []
    per_gene = per_gene.sort_values(["seed", "fold"], kind="stable")
    genes_by_job = {k: g for k, g in per_gene.groupby(JOB_COLUMNS, sort=False)}
    for (dataset, protocol, method), jobs in per_job.groupby(["dataset", "protocol", "method"], sort=False):
        jobs = jobs.sort_values(["seed", "fold"], kind="stable")
        row = {"dataset": dataset, "protocol": protocol, "method": method, "n_jobs": len(jobs)}
        for col in aggregate_columns(metrics):
            row[col] = float(jobs[col].mean())
            row[f"{col}_sd"] = float(jobs[col].std()) if len(jobs) > 1 else float("nan")
        keys = [tuple(r) for r in jobs[JOB_COLUMNS].itertuples(index=False)]
        for s in GENE_SETS:
            tables = [genes_by_job[k] for k in keys if k in genes_by_job]
            values = [t.loc[t[f"in_{s}"], gene_level].to_numpy(dtype=np.float64) for t in tables
                      if f"in_{s}" in t]
            low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed, alpha=alpha)
            for m in metrics:
                i = gene_level.index(m) if m in gene_level else len(low)
                row[f"{s}_{m}_ci_low"] = float(low[i]) if i < len(low) else float("nan")
                row[f"{s}_{m}_ci_high"] = float(high[i]) if i < len(high) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def bh_adjust(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels ``multipletests``); NaN entries stay NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="fdr_bh")[1]
    return out


def gene_means(per_gene: pd.DataFrame, metric: str = "pearson") -> pd.Series:
    """Each gene's metric averaged over the jobs given; NaN when it is undefined in any of them."""
    values = per_gene[metric]
    means = values.groupby(per_gene["gene"], sort=False).mean()
    undefined = values.isna().groupby(per_gene["gene"], sort=False).any()
    return means.where(~undefined)


def wilcoxon_pair(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired per-gene values ``a`` vs ``b``. Pairs where either is
    NaN are dropped and counted. ``median_difference`` and ``share_improved`` are of a - b (a > b)."""
    from scipy.stats import wilcoxon

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    valid = np.isfinite(a) & np.isfinite(b)
    d = a[valid] - b[valid]
    out = {"n_genes": int(valid.sum()), "n_dropped_undefined": int((~valid).sum()),
           "median_difference": float(np.median(d)) if len(d) else float("nan"),
           "mean_difference": float(d.mean()) if len(d) else float("nan"),
           "share_improved": float((d > 0).mean()) if len(d) else float("nan"),
           "statistic": float("nan"), "p_value": float("nan")}
    if len(d) and not np.any(d):
        out.update(statistic=0.0, p_value=1.0)  # identical on every gene: no evidence of a difference
    elif len(d):
        res = wilcoxon(a[valid], b[valid], alternative="two-sided")
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    return out


def pairwise_tests(per_gene: pd.DataFrame, metric: str = "pearson") -> pd.DataFrame:
    """Every pair of methods within each (dataset, protocol), on the (seed, fold) jobs both ran: Wilcoxon
    over genes on the per-gene metric averaged over those jobs; ``p_bh`` corrects across all pairs."""
    rows = []
    for (dataset, protocol), group in per_gene.groupby(["dataset", "protocol"], sort=False):
        methods = list(pd.unique(group["method"]))
        blocks = {m: set(map(tuple, group.loc[group["method"] == m, ["seed", "fold"]].drop_duplicates()
                             .itertuples(index=False))) for m in methods}
        for a, b in combinations(methods, 2):
            common = blocks[a] & blocks[b]
            if not common:
                continue
            in_common = pd.Series(list(zip(group["seed"], group["fold"])), index=group.index).isin(common)
            shared = group[in_common]
            mean_a = gene_means(shared[shared["method"] == a], metric)
            mean_b = gene_means(shared[shared["method"] == b], metric)
            genes = mean_a.index.intersection(mean_b.index)
            rows.append({"dataset": dataset, "protocol": protocol, "method_a": a, "method_b": b, "metric": metric,
                         "n_folds": len(common),
                         **wilcoxon_pair(mean_a.loc[genes].to_numpy(), mean_b.loc[genes].to_numpy())})
    table = pd.DataFrame(rows, columns=["dataset", "protocol", "method_a", "method_b", "metric", "n_folds",
                                        "n_genes", "n_dropped_undefined", "median_difference", "mean_difference",
                                        "share_improved", "statistic", "p_value"])
    table["p_bh"] = bh_adjust(table["p_value"].to_numpy()) if len(table) else []
    return table


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks (Demsar 2006): CD = q_alpha * sqrt(k (k + 1) / (6 N)),
    with q_alpha = the (1 - alpha) quantile of the studentized range for k groups and infinite degrees of
    freedom, divided by sqrt(2). Two methods whose average ranks differ by more than CD differ."""
    from scipy.stats import studentized_range

    q_alpha = float(studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q_alpha * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def friedman_nemenyi(matrix: pd.DataFrame, higher_is_better: bool = True, alpha: float = 0.05) -> dict:
    """Friedman test over blocks (rows, e.g. folds) x methods (columns), Nemenyi post-hoc p-values, average
    ranks (1 = best) and the critical difference. Methods with no defined value are excluded; then blocks
    with any undefined value are dropped; both are reported."""
    from scipy.stats import friedmanchisquare, rankdata

    excluded = [str(c) for c in matrix.columns if matrix[c].isna().all()]
    m = matrix.drop(columns=excluded)
    complete = m.notna().all(axis=1)
    m = m[complete]
    out = {"methods": [str(c) for c in m.columns], "excluded_methods": excluded, "n_blocks": int(len(m)),
           "n_blocks_dropped": int((~complete).sum()), "alpha": alpha, "statistic": None, "p_value": None,
           "average_ranks": {}, "critical_difference": None, "nemenyi_p": {}, "note": ""}
    k, n = m.shape[1], m.shape[0]
    if k < 3 or n < 2:
        out["note"] = f"Friedman's test needs at least 3 methods and 2 blocks with defined values (have {k}, {n})"
        return out
    values = m.to_numpy(dtype=np.float64)
    stat, p = friedmanchisquare(*values.T)
    ranks = rankdata(-values if higher_is_better else values, axis=1).mean(axis=0)
    nemenyi = nemenyi_friedman(values)
    out.update(statistic=float(stat), p_value=float(p),
               average_ranks={str(c): float(r) for c, r in zip(m.columns, ranks)},
               critical_difference=critical_difference(k, n, alpha),
               nemenyi_p={str(a): {str(b): float(nemenyi[i, j]) for j, b in enumerate(m.columns)}
                          for i, a in enumerate(m.columns)})
    return out


def nemenyi_friedman(values: np.ndarray) -> np.ndarray:
    """Nemenyi post-hoc p-values (k x k) for a blocks x methods array (scikit-posthocs)."""
    import scikit_posthocs as sp

    return sp.posthoc_nemenyi_friedman(np.asarray(values, dtype=np.float64)).to_numpy()


def mean_ranks(per_method: pd.DataFrame, metrics, prefix: str = "patient_") -> pd.DataFrame:
    """Wang et al. 2025's summary across metrics: within each (dataset, protocol), every method is ranked on
    each ranked metric and gene set (1 = best, by the registry's direction; ties share the average rank;
    a method whose value is undefined is left out of that ranking), and its ranks are averaged. Scores are
    the patient-level ones (``prefix``). Controls are not ranked: they bracket the methods, they are not
    competitors. Returns dataset, protocol, method, ``mean_rank``, ``n_rankings`` (how many rankings the
    mean is over) and ``rank_<set>_<metric>`` for each."""
    from scipy.stats import rankdata

    rows = []
    ranked = [m for m in metrics if higher_is_better(m) is not None]
    for (dataset, protocol), group in per_method.groupby(["dataset", "protocol"], sort=False):
        is_method = (group["kind"] == "method") if "kind" in group else pd.Series(True, index=group.index)
        table = pd.DataFrame({"dataset": dataset, "protocol": protocol, "method": group["method"]})
        for s in GENE_SETS:
            for m in ranked:
                col = f"{prefix}{s}_{m}"
                out = np.full(len(group), np.nan)
                if col in group:
                    values = group[col].to_numpy(dtype=np.float64)
                    ok = np.isfinite(values) & is_method.to_numpy()
                    if ok.sum() >= 2:  # one method alone has no rank to speak of
                        out[ok] = rankdata(-values[ok] if higher_is_better(m) else values[ok])
                table[f"rank_{s}_{m}"] = out
        ranks = table.filter(like="rank_")
        table["mean_rank"] = ranks.mean(axis=1, skipna=True)
        table["n_rankings"] = ranks.notna().sum(axis=1)
        rows.append(table)
    if not rows:
        return pd.DataFrame(columns=["dataset", "protocol", "method", "mean_rank", "n_rankings"])
    return pd.concat(rows, ignore_index=True)
