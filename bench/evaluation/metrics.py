"""Scores computed from predictions and truths (pure functions, vectorised over genes)."""
from __future__ import annotations

import numpy as np


def pearson_per_gene(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson r of each gene (column) over spots. NaN where truth or prediction has zero variance:
    the correlation is undefined there and must be counted, not averaged in as 0."""
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} must be the same (spots, genes) shape")
    tc = t - t.mean(axis=0)
    pc = p - p.mean(axis=0)
    denom = np.sqrt((tc**2).sum(axis=0) * (pc**2).sum(axis=0))
    # Relative threshold: a column that is constant up to float rounding has no variance.
    tiny = denom <= 1e-12 * max(1.0, float(np.abs(t).max(initial=0)) * float(np.abs(p).max(initial=0))) * len(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (tc * pc).sum(axis=0) / denom
    r[tiny] = np.nan
    return np.clip(r, -1.0, 1.0)


HEG_GENES = 50


def top_genes(values: np.ndarray, n: int = HEG_GENES) -> np.ndarray:
    """Boolean mask of the ``n`` largest values (ties broken by gene order). All False if any value is NaN
    (e.g. a job folder written before training statistics were saved): the set is then unknown."""
    values = np.asarray(values, dtype=np.float64)
    mask = np.zeros(values.shape, dtype=bool)
    if values.size and np.isfinite(values).all():
        mask[np.argsort(-values, kind="stable")[:n]] = True
    return mask


def _check_pair(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} must be the same (spots, genes) shape")
    return t, p


def column_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n within each column, ties sharing their average rank: ``scipy.stats.rankdata(x, axis=0)``
    (finite values), one sort for all columns at once (scipy's axis path is slower by an order of magnitude)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return x.copy()
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    starts = np.ones(xs.shape, dtype=bool)
    starts[1:] = xs[1:] != xs[:-1]  # a tie group starts where the sorted value changes
    ends = np.ones(xs.shape, dtype=bool)
    ends[:-1] = starts[1:]
    position = np.arange(1, n + 1, dtype=np.float64)[:, None]
    first = np.maximum.accumulate(np.where(starts, position, 0.0), axis=0)
    last = np.minimum.accumulate(np.where(ends, position, n + 1.0)[::-1], axis=0)[::-1]
    ranks = np.empty_like(xs)
    np.put_along_axis(ranks, order, (first + last) / 2.0, axis=0)
    return ranks


def spearman_per_gene(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Spearman rho of each gene: Pearson r of the column ranks (ties get their average rank, as in
    ``scipy.stats.spearmanr``). NaN where truth or prediction is constant."""
    t, p = _check_pair(truth, pred)
    return pearson_per_gene(column_ranks(t), column_ranks(p))


def pearson_pvalue(r: np.ndarray, n: int) -> np.ndarray:
    """Two-sided p-value of each Pearson r from ``n`` pairs under the null of no correlation (normal data).

    Under the null, (r + 1) / 2 follows Beta(n/2 - 1, n/2 - 1), so P(|R| >= |r|) = 2 I_{(1-|r|)/2}(a, a)
    with I the regularised incomplete beta function (the distribution ``scipy.stats.pearsonr`` uses).
    NaN where r is NaN or n < 3."""
    from scipy.special import betainc

    r = np.asarray(r, dtype=np.float64)
    if n < 3:
        return np.full(r.shape, np.nan)
    a = n / 2.0 - 1.0
    with np.errstate(invalid="ignore"):
        p = 2.0 * betainc(a, a, (1.0 - np.abs(r)) / 2.0)
    return np.clip(p, 0.0, 1.0)


def mse_per_gene(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    t, p = _check_pair(truth, pred)
    return ((t - p) ** 2).mean(axis=0)


def mae_per_gene(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    t, p = _check_pair(truth, pred)
    return np.abs(t - p).mean(axis=0)


def gene_stats(expression: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and (sample) variance of each gene's targets, e.g. over the training spots of a fold (HVG)."""
    x = np.asarray(expression, dtype=np.float64)
    return {"mean": x.mean(axis=0), "variance": x.var(axis=0, ddof=1) if len(x) > 1 else np.full(x.shape[1], np.nan)}
