"""The reproduce page's figure: each method's score step by step, from the published number through each setting.

One panel per score (ACG, HEG). The x axis is the table's columns in order (the published number, then each
setting); a method is a line through its defined scores, so a step that changes the score shows as a slope.
The depth-oracle and the spatial-oracle are drawn as dashed reference lines across the same steps: the first
says how much of a score sequencing depth alone explains, the second what spatial smoothing of the truth gets.
Controls whose score is undefined (the mean control's constant prediction) have nothing to draw; the page's
caption says so in words. Generic over columns and rows: a new setting or method is one more tick or line.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.evaluation.reproduce import PUBLISHED_COLUMN, SCORES
from bench.report.figures import _png, _style

REFERENCES = {"depth-oracle": ("#7f7f7f", (0, (5, 3))), "spatial-oracle": ("#a0724a", (0, (2, 2)))}
METHOD_COLOURS = ("#3b6ea8", "#d1495b", "#2a9d8f", "#e9a03b", "#6a4c93", "#1d3557", "#8ab17d", "#bc6c25")


def step_columns(table: pd.DataFrame) -> list[str]:
    """The score columns of a comparison table, in order: the published one (if any), then each setting."""
    return [c for c in table.columns if c not in ("method", "kind")]


def drawn_rows(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(methods, reference controls) that have at least one defined score, in the table's order."""
    cols = step_columns(table)
    defined = table[cols].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)
    methods = [m for m, k, ok in zip(table["method"], table["kind"], defined) if k == "method" and ok]
    references = [m for m, ok in zip(table["method"], defined) if m in REFERENCES and ok]
    return methods, references


def decomposition(tables: dict[str, pd.DataFrame], ticks: dict[str, str], annotate_max: int = 4) -> str:
    """Both scores' panels as a base64 PNG. ``ticks``: column -> its axis label (the column, what the step to it
    removes, its fold count); a column missing from ``ticks`` is labelled by its name. Each method's point is
    labelled with its value when there are at most ``annotate_max`` methods (more would overlap)."""
    with _style() as plt:
        fig, axes = plt.subplots(1, len(SCORES), figsize=(12, 4.6), sharey=False)
        handles = {}
        for ax, (key, _, title) in zip(np.atleast_1d(axes), SCORES):
            table = tables[key]
            cols = step_columns(table)
            x = np.arange(len(cols))
            methods, references = drawn_rows(table)
            rows = table.set_index("method")
            values = rows[cols].apply(pd.to_numeric, errors="coerce")
            for i, method in enumerate(methods):
                y = values.loc[method].to_numpy(dtype=np.float64)
                colour = METHOD_COLOURS[i % len(METHOD_COLOURS)]
                # A line through the defined points only (a gap would hide a step whose neighbours exist).
                ok = np.isfinite(y)
                (line,) = ax.plot(x[ok], y[ok], "-o", color=colour, lw=1.8, ms=5, label=method, zorder=3)
                handles.setdefault(method, line)
                if PUBLISHED_COLUMN in cols and ok[cols.index(PUBLISHED_COLUMN)]:
                    p = cols.index(PUBLISHED_COLUMN)  # the published number: an open marker, it was not run here
                    ax.plot(x[p], y[p], "o", ms=8, mfc="white", mec=colour, mew=1.8, zorder=4)
                if len(methods) <= annotate_max:
                    for xi, yi in zip(x[ok], y[ok]):
                        ax.annotate(f"{yi:.3f}", (xi, yi), textcoords="offset points", xytext=(7, 6), fontsize=7,
                                    color=colour)
            for reference in references:
                colour, dash = REFERENCES[reference]
                y = values.loc[reference].to_numpy(dtype=np.float64)
                ok = np.isfinite(y)
                (line,) = ax.plot(x[ok], y[ok], color=colour, ls=dash, lw=1.4, label=f"{reference} (reference)",
                                  zorder=2)
                handles.setdefault(f"{reference} (reference)", line)
                last = np.flatnonzero(ok)[-1]
                ax.annotate(reference, (x[last], y[last]), textcoords="offset points", xytext=(6, -3), fontsize=7,
                            color=colour)
            ax.axhline(0, color="#cccccc", lw=0.8, zorder=1)
            ax.set_xticks(x, [ticks.get(c, c) for c in cols], fontsize=7.5)
            ax.set_xlim(-0.4, len(cols) - 0.3)
            ax.set_title(f"{title}: mean Pearson r over folds, step by step")
            ax.set_ylabel("mean Pearson r")
            ax.grid(axis="y", alpha=0.3)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6),
                       frameon=False, fontsize=8, bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        return _png(fig)
