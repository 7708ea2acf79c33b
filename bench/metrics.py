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


def _mean_defined(r: np.ndarray) -> float:
    defined = np.isfinite(r)
    return float(np.mean(r[defined])) if defined.any() else float("nan")


def summarise_pearson(r: np.ndarray, truth: np.ndarray) -> dict:
    """ACG (mean PCC over all panel genes) and HEG (mean PCC of the 50 genes with the highest mean true
    expression in the test section), each over genes whose PCC is defined; undefined ones are counted."""
    heg = np.argsort(-np.asarray(truth).mean(axis=0), kind="stable")[:HEG_GENES]
    return {
        "mean_pcc": _mean_defined(r),
        "heg_pcc": _mean_defined(r[heg]),
        "n_genes": int(r.size),
        "n_undefined_pcc": int((~np.isfinite(r)).sum()),
    }
