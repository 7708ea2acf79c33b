"""Figures of the report: matplotlib (Agg) and seaborn, rendered to PNG in memory and base64-encoded.

Names from the data (methods, genes, sections) may contain anything, so mathtext is off: a ``$`` in a
gene name is drawn as a dollar sign, never parsed.
"""
from __future__ import annotations

import base64
import io
from contextlib import contextmanager

import numpy as np
import pandas as pd

from bench.method import KINDS, kind_of

DPI = 100
KIND_COLOURS = {name: kind.colour for name, kind in KINDS.items()}  # bench.method.KINDS: the one vocabulary
STYLE = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 9, "axes.spines.top": False,
         "axes.spines.right": False, "figure.dpi": DPI}


@contextmanager
def _style():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        yield plt


def _png(fig) -> str:
    """The figure as base64 PNG, reduced to a 256-colour palette (a third of the size, no visible loss)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        small = io.BytesIO()
        image.convert("RGB").quantize(256).save(small, format="PNG", optimize=True)
    return base64.b64encode(small.getvalue()).decode("ascii")


def _colour(kind: str) -> str:
    return kind_of(kind).colour


def forest(table: pd.DataFrame, per_patient: pd.DataFrame, column: str = "acg_pearson",
           label: str = "ACG Pearson r") -> str:
    """Per method, best at the top: its score on each patient (open dots, just below), their mean over patients
    (filled) and the 95% interval across patients where there are enough patients; controls in grey and brown."""
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(table) + 1.0))
        y = np.arange(len(table))[::-1]
        for yi, row in zip(y, table.to_dict("records")):
            colour = _colour(row["kind"])
            mine = per_patient.loc[per_patient["method"] == row["method"], column] if len(per_patient) else []
            mine = np.asarray(mine, dtype=np.float64)
            mine = mine[np.isfinite(mine)]
            ax.scatter(mine, np.full(len(mine), yi - 0.22), s=16, facecolors="none", edgecolors=colour, lw=0.9)
            mean, low, high = (row[f"patient_{column}{end}"] for end in ("", "_ci_low", "_ci_high"))
            if np.isfinite(mean):
                ax.errorbar(mean, yi, xerr=[[mean - low], [high - mean]] if np.isfinite(low) else None,
                            fmt="o", color=colour, capsize=3, ms=6)
            else:
                ax.text(0, yi, "undefined", va="center", fontsize=8, color=colour)
        ax.set_yticks(y, [str(m) for m in table["method"]])
        ax.axvline(0, color="#bbbbbb", lw=0.8)
        ax.set_xlabel(f"{label}: per patient (open), mean over patients with its 95% interval across patients")
        ax.grid(axis="x", alpha=0.3)
        return _png(fig)


def gene_distributions(per_gene: pd.DataFrame, order: list[str], kinds: dict[str, str]) -> str:
    """Per-gene Pearson r (each gene of each fold) per method: violins with the quartiles marked."""
    import seaborn as sns

    data = per_gene.loc[np.isfinite(per_gene["pearson"]), ["method", "pearson"]]
    shown = [m for m in order if (data["method"] == m).any()]
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(7.5, 0.5 * max(len(order), 1) + 1.2))
        if shown:
            sns.violinplot(data=data, x="pearson", y="method", order=shown, hue="method", hue_order=shown,
                           palette={m: _colour(kinds.get(m, "method")) for m in shown}, inner="quart",
                           cut=0, density_norm="width", linewidth=0.8, ax=ax, legend=False)
        ax.axvline(0, color="#bbbbbb", lw=0.8)
        ax.set_xlabel("Pearson r per gene and fold (undefined genes left out)")
        ax.set_ylabel("")
        return _png(fig)


def cd_diagram(ranks: dict[str, float], cd: float, alpha: float) -> str:
    """Critical-difference diagram (Demsar 2006): average ranks on an axis (1 = best, on the left); methods
    joined by a thick bar do not differ by more than the critical difference."""
    names = sorted(ranks, key=ranks.get)
    values = [ranks[n] for n in names]
    k = len(names)
    cliques = []  # maximal runs of consecutive methods whose ranks lie within CD of each other
    for i in range(k):
        j = i
        while j + 1 < k and values[j + 1] - values[i] <= cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    half = (k + 1) // 2
    first_label = 0.35 + 0.18 * len(cliques)
    depth = first_label + 0.35 * half
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(7.5, 1.1 + 0.55 * depth))
        ax.set_xlim(1 - 0.05 * k, k + 0.05 * k)
        ax.set_ylim(-depth - 0.1, 1.0)
        ax.axis("off")
        ax.hlines(0, 1, k, color="black", lw=1)
        for r in range(1, k + 1):
            ax.vlines(r, 0, 0.12, color="black", lw=1)
            ax.text(r, 0.2, str(r), ha="center", va="bottom", fontsize=8)
        ax.hlines(0.75, 1, min(1 + cd, k + 0.05 * k), color="#b03030", lw=2)
        ax.text(1, 0.82, f"CD = {cd:.3f} (alpha = {alpha:g})", ha="left", va="bottom", fontsize=8, color="#b03030")
        for n, (i, j) in enumerate(cliques):
            y = -0.2 - 0.18 * n
            ax.hlines(y, values[i] - 0.04, values[j] + 0.04, color="#2a7a3a", lw=4)
        for i, (name, rank) in enumerate(zip(names, values)):
            left = i < half
            y = -first_label - 0.35 * (i if left else k - 1 - i)
            end = 1 - 0.04 * k if left else k + 0.04 * k
            ax.plot([rank, rank, end], [0, y, y], color="#444444", lw=0.8)
            ax.text(end + (-0.02 if left else 0.02) * k, y, f"{name} ({rank:.2f})", va="center",
                    ha="right" if left else "left", fontsize=8)
        return _png(fig)


def spatial_maps(xy: np.ndarray, genes: list[str], rows: list[tuple[str, np.ndarray]],
                 notes: dict[tuple[str, str], str] | None = None, tissue=None, shared_scale: bool = True) -> str:
    """One column per gene, one row per source (truth, then methods): spots coloured by expression, on the
    section's H&E when ``tissue`` is given (an image and each spot's position on it; else at their array
    coordinates). ``shared_scale``: one colour scale per gene for the truth and every prediction, so a
    prediction that spans a narrow range looks flat; else each panel its own scale, so its pattern shows.
    ``rows``: (title, spots x len(genes) matrix); ``notes[(gene, title)]`` is added to that panel's title."""
    notes = notes or {}
    n_rows, n_cols = len(rows), len(genes)
    with _style() as plt:
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.5 * n_cols, 2.5 * n_rows), squeeze=False)
        for j, gene in enumerate(genes):
            limits = colour_limits([values[:, j] for _, values in rows]) if shared_scale else (None, None)
            for i, (title, values) in enumerate(rows):
                ax = axes[i, j]
                points = _spots(ax, xy, tissue, c=values[:, j], cmap="viridis", vmin=limits[0], vmax=limits[1])
                fig.colorbar(points, ax=ax, shrink=0.75, pad=0.02)
                note = notes.get((gene, title))
                ax.set_title(f"{gene}\n{title}" + (f" ({note})" if note else ""), fontsize=8)
        fig.tight_layout()
        return _png(fig)


def colour_limits(panels: list[np.ndarray]) -> tuple[float | None, float | None]:
    """One colour scale for several panels of a gene: the range of all their finite values (None: each its own)."""
    values = np.concatenate([np.asarray(v, dtype=float).ravel() for v in panels])
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if len(values) else (None, None)


def _spots(ax, xy: np.ndarray, tissue, **style):
    """Spots on one map panel: over the H&E thumbnail (smaller, so the tissue shows between them) when there
    is one, else at their array coordinates."""
    if tissue is None:
        points = ax.scatter(xy[:, 0], xy[:, 1], s=_spot_size(xy), linewidths=0, **style)
        _map_axes(ax)
        return points
    image, at = tissue
    ax.imshow(image, interpolation="bilinear")  # image rows grow downwards: the y axis is already flipped
    points = ax.scatter(at[:, 0], at[:, 1], s=_spot_size(xy, fill=0.55), linewidths=0, alpha=0.9, **style)
    _map_axes(ax, flip=False)
    return points


def cluster_maps(xy: np.ndarray, columns: list[tuple[str, np.ndarray]], tissue=None) -> str:
    """Domain labels or KMeans clusters per spot, one panel per source. The first column is the reference;
    the clusters of the others are renumbered to match it as well as possible (Hungarian assignment), so
    that the same colour means the same domain wherever the clustering agrees. ``tissue``: as for
    ``spatial_maps``."""
    n = len(columns)
    per_row = min(n, 4)
    rows = (n + per_row - 1) // per_row
    with _style() as plt:
        fig, axes = plt.subplots(rows, per_row, figsize=(2.6 * per_row, 2.6 * rows), squeeze=False)
        for ax in axes.ravel()[n:]:
            ax.axis("off")
        reference = None
        for ax, (title, labels) in zip(axes.ravel(), columns):
            codes, _ = pd.factorize(pd.Series(labels).astype(str), sort=True)
            if reference is None:
                reference = codes
            else:
                codes = _match(codes, reference)
            _spots(ax, xy, tissue, c=codes % 10, cmap="tab10", vmin=0, vmax=9)
            ax.set_title(title, fontsize=8)
        fig.tight_layout()
        return _png(fig)


def _match(codes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Renumber cluster ``codes`` so each takes the reference label it overlaps most (one-to-one)."""
    from scipy.optimize import linear_sum_assignment

    n = max(codes.max(), reference.max()) + 1
    overlap = np.zeros((n, n))
    np.add.at(overlap, (codes, reference), 1)
    rows, cols = linear_sum_assignment(-overlap)
    mapping = dict(zip(rows, cols))
    return np.array([mapping[c] for c in codes])


def _spot_size(xy: np.ndarray, panel_points: float = 140.0, fill: float = 0.8) -> float:
    """Marker area (points²) whose diameter is ``fill`` of the distance between neighbouring spots of an
    array grid in a panel (0.8: they nearly touch)."""
    extent = float(np.ptp(xy, axis=0).max()) + 1 if len(xy) else 1.0
    return max(2.0, (fill * panel_points / extent) ** 2)


def _map_axes(ax, flip: bool = True) -> None:
    ax.set_aspect("equal")
    if flip:
        ax.invert_yaxis()  # array rows grow downwards, as on the slide
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
