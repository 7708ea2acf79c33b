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


def summarise_pearson(r: np.ndarray) -> dict:
    """Mean PCC over genes with a defined correlation, and how many were undefined."""
    defined = np.isfinite(r)
    return {
        "mean_pcc": float(np.mean(r[defined])) if defined.any() else float("nan"),
        "n_genes": int(r.size),
        "n_undefined_pcc": int((~defined).sum()),
    }
