"""The report's summary across metrics: a method x metric heat map per gene set, and the mean rank.

Every column is a metric of the registry the evaluation computed (``settings.metrics`` of
``friedman.json``), at the patient level (per-section score averaged within each patient, then over
patients), with its interval across patients where there are at least 3 patients. The colour says how
good a cell is within its column, by the metric's direction (arrows in the header); descriptive metrics
(Moran's I) are shown uncoloured. Controls are listed under the methods but never coloured against them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.evaluation import metric_registry, stats
from bench.report.blocks import Details, Heatmap, Paragraph, Section
from bench.report.data import RunResults, ranked_methods
from bench.report.formatting import fmt, interval

SET_TITLES = {"acg": "ACG (all panel genes)", "heg": "HEG (50 most expressed)", "hvg": "HVG (50 most variable in "
              "training)", "svg": "SVG (20 most spatially variable in training, Moran's I)"}


def evaluated_metrics(res: RunResults) -> list[metric_registry.Metric]:
    """The registry's entries for the metrics this run's evaluation computed (older results: the columns)."""
    known = metric_registry.all_metrics()
    names = res.friedman.get("settings", {}).get("metrics")
    if not names:
        names = [m for m in known if f"patient_acg_{m}" in res.per_method]
    # A metric computed by a plug-in that is not installed here keeps its column, unranked and uncoloured.
    return [known.get(n) or metric_registry.Metric(n, lambda t, p: None, "gene", None, source="not installed")
            for n in names if f"patient_acg_{n}" in res.per_method]


def _shades(values: np.ndarray, is_method: np.ndarray, higher: bool | None) -> list[float | None]:
    """0 (worst) .. 1 (best) within the column among the methods; None for controls, undefined values and
    descriptive metrics."""
    ok = np.isfinite(values) & is_method
    if higher is None or ok.sum() < 1:
        return [None] * len(values)
    lo, hi = values[ok].min(), values[ok].max()
    out: list[float | None] = []
    for v, good in zip(values, ok):
        if not good:
            out.append(None)
        elif hi == lo:
            out.append(1.0)
        else:
            share = (v - lo) / (hi - lo)
            out.append(float(share if higher else 1.0 - share))
    return out


def matrix(res: RunResults, gene_set: str, metrics: list[metric_registry.Metric]) -> Heatmap:
    pm = ranked_methods(res.per_method)
    if "mean_rank" in pm:  # the summary across metrics orders the matrix: best mean rank first
        pm = pm.assign(_r=pm["mean_rank"].astype(float).fillna(np.inf)).sort_values("_r", kind="stable")
    is_method = (pm["kind"] == "method").to_numpy()
    header = ["Method", "mean rank ↓"] + [f"{m.title} {m.arrow}" for m in metrics]
    columns = []
    for m in metrics:
        col = f"patient_{gene_set}_{m.name}"
        values = pm[col].to_numpy(dtype=np.float64) if col in pm else np.full(len(pm), np.nan)
        lows = pm.get(f"{col}_ci_low", pd.Series(np.nan, index=pm.index)).to_numpy(dtype=np.float64)
        highs = pm.get(f"{col}_ci_high", pd.Series(np.nan, index=pm.index)).to_numpy(dtype=np.float64)
        shades = _shades(values, is_method, m.higher_is_better)
        columns.append([(fmt(v), interval(lo, hi) if np.isfinite(lo) else "", s)
                        for v, lo, hi, s in zip(values, lows, highs, shades)])
    rank_col = f"rank_{gene_set}_"
    ranks = pm.filter(like=rank_col)
    set_rank = ranks.mean(axis=1, skipna=True).to_numpy(dtype=np.float64) if ranks.shape[1] else \
        np.full(len(pm), np.nan)
    rank_cells = [(fmt(r), "", s) for r, s in zip(set_rank, _shades(set_rank, is_method, False))]
    rows = []
    for i, r in enumerate(pm.to_dict("records")):
        rows.append((str(r["method"]), str(r["kind"]), [rank_cells[i]] + [c[i] for c in columns]))
    return Heatmap(f"metric-matrix-{gene_set}", header, rows, caption=SET_TITLES.get(gene_set, gene_set))


def metric_matrix_section(res: RunResults) -> Section:
    metrics = evaluated_metrics(res)
    sets = [s for s in stats.GENE_SETS if any(f"patient_{s}_{m.name}" in res.per_method for m in metrics)]
    n_patients = int(res.per_method["n_patients"].max()) if "n_patients" in res.per_method else 0
    blocks = [matrix(res, "acg", metrics)] if "acg" in sets else []
    blocks += [Details(f"the same on {SET_TITLES[s]}", [matrix(res, s, metrics)]) for s in sets if s != "acg"]
    if n_patients < 3:
        blocks.append(Paragraph(f"{n_patients} patient(s): no interval across patients (at least 3 are needed); "
                                f"see the scores per patient.", "note"))
    blocks.append(Details("where each metric's definition comes from",
                          [Paragraph("; ".join(f"{m.title} ({m.name}, per {m.level}): {m.source}" for m in metrics)
                                     + ".")]))
    intro = ("Every metric of the evaluation, per method, at the patient level (per test section, averaged "
             "within each patient, then over patients), with its 95% interval across patients below it where "
             "there are at least 3 patients. ↑: higher is better, ↓: lower is better, ·: descriptive (Moran's I of "
             "the prediction beside that of the truth: how much spatial autocorrelation a method keeps). Green: "
             "how good the cell is within its column among the methods (controls are not coloured). Mean rank "
             "(Wang et al. 2025): each method's rank on every ranked metric and gene set, averaged (1 = best; "
             "methods only); the column here is over this gene set's metrics. Undefined values (a constant "
             "prediction, an AUC with one class) are n/a, never 0.")
    return Section("metrics", "Metrics", "All metrics per method (heat map)", blocks, intro)
