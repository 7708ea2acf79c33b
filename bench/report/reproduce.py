"""The comparison of evaluation settings as report sections and as a page of its own (``bench reproduce``).

Renders the tables built by ``bench.evaluation.reproduce.comparison_tables``: one per score (ACG, HEG),
methods by setting, the published number first where one exists for the setting it sits beside. A run
folder's report opens with them when the folder holds more than one setting (``results/settings_*.csv``,
written by ``bench run``); ``bench reproduce`` writes them as ``reproduce.html``, opened by a figure of the
decomposition (``bench.report.decomposition``). Every cell says what happened, in the words of
``bench.evaluation.cells``: a number, "undefined (constant prediction)", "not run" or "not published"; every
column header says how many folds it averages.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from bench.evaluation.reproduce import PUBLISHED_COLUMN, SCORES, column_fold_counts, comparison_cells
from bench.report.blocks import Figure, Paragraph, Section, Table
from bench.report.decomposition import REFERENCES, decomposition, drawn_rows, step_columns
from bench.report.formatting import kind_label
from bench.report.render import render_page

SETTINGS_TABLE = "settings_{score}.csv"  # under <run>/results/: written when a run folder holds several settings
SETTINGS_FOLDS = "settings_folds.csv"  # under <run>/results/: folds per method and setting (0: not run)
REFERENCE_TEXT = {"depth-oracle": "depth-oracle predicts each gene from the test spot's true total count alone (how "
                                  "much of a score sequencing depth explains)",
                  "spatial-oracle": "spatial-oracle is the true test expression smoothed over each spot's neighbours "
                                    "(a positive control: it sees the truth)"}


def decomposition_section(tables: dict[str, pd.DataFrame], steps: dict[str, str], folds: pd.DataFrame | None,
                          of: dict[str, int] | None) -> Section:
    """The figure: each method from its published number through every setting, the oracles as references;
    below it, in words, each row the figure cannot draw (a control with no defined score, a method never run)."""
    first = tables[SCORES[0][0]]
    counts = column_fold_counts(first, folds, of)
    ticks = {col: "\n".join(t for t in (col, steps.get(col, ""), counts.get(col, "")) if t)
             for col in step_columns(first)}
    blocks = [Figure(decomposition(tables, ticks), "each method's mean Pearson r from the published number through "
                     "each setting, for ACG and HEG, with the depth-oracle and spatial-oracle as reference lines",
                     "Open marker: the published number (not run here). Each tick names the setting and what changed "
                     "since the tick before it (every step between the two, where settings in between were not "
                     "run); the drop from one tick to the next is that change's effect.")]
    undrawn: dict[str, dict[str, None]] = {}  # method -> what its cells say, in order
    for key, _, _ in SCORES:
        table = tables[key]
        drawn = set().union(*drawn_rows(table))
        cols = step_columns(table)
        for method, row_cells in zip(table["method"], comparison_cells(table, folds, of)[1]):
            if method not in drawn:
                undrawn.setdefault(method, {}).update(
                    dict.fromkeys(c for col, c in zip(cols, row_cells) if col != PUBLISHED_COLUMN))
    if undrawn:
        blocks.append(Paragraph("Not drawn (no score in any setting): " + "; ".join(
            f"{m}: {' / '.join(words)}" for m, words in undrawn.items()) + ".", "note"))
    shown = [r for r in REFERENCES if any(r in set(t["method"]) for t in tables.values())]
    intro = ("Reference lines (dashed): " + "; ".join(REFERENCE_TEXT[r] for r in shown) + ".") if shown else ""
    return Section("decomposition", "Decomposition", "From the published number to the leakage-free score",
                   blocks, intro)


def comparison_sections(tables: dict[str, pd.DataFrame], legend: list[str], notes: list[str],
                        folds: pd.DataFrame | None = None, of: dict[str, int] | None = None,
                        steps: dict[str, str] | None = None) -> list[Section]:
    """With ``steps`` (column -> what changed since the column before it) the decomposition figure first; then one
    section per score (a table: methods by setting, controls shaded, each header with its fold count), then what the
    columns are. ``folds``/``of``: ``fold_counts`` and ``published_fold_counts`` of ``bench.evaluation.reproduce``."""
    out = [decomposition_section(tables, steps, folds, of)] if steps else []
    for key, _, title in SCORES:
        t = tables[key]
        headers, cells = comparison_cells(t, folds, of)
        rows = [[m, kind_label(k), *c] for m, k, c in zip(t["method"], t["kind"], cells)]
        out.append(Section(f"settings-{key}", f"{title} by setting", f"{title}: mean Pearson r over folds, by setting",
                           [Table(f"settings-{key}", ["method", "kind", *headers], rows, row_classes=list(t["kind"]),
                                  numeric_from=2, wrap=True)]))  # wrap: "undefined (constant prediction)"
    out.append(Section("settings-legend", "Settings", "What each setting is",
                       [Paragraph(x) for x in legend] + [Paragraph(n, "note") for n in notes]))
    return out


def settings_sections(run_dir: Path) -> list[Section]:
    """The comparison sections of a run folder that holds several settings; [] when it holds one."""
    results = Path(run_dir) / "results"
    paths = {key: results / SETTINGS_TABLE.format(score=key) for key, _, _ in SCORES}
    if not all(p.is_file() for p in paths.values()):
        return []
    tables = {key: pd.read_csv(p) for key, p in paths.items()}
    folds = pd.read_csv(results / SETTINGS_FOLDS) if (results / SETTINGS_FOLDS).is_file() else None
    legend = ["Columns are protocol / panel / target. The published number stands beside the setting it was "
              "made in, and only there."]
    return comparison_sections(tables, legend, [], folds)


def write_comparison_page(path: Path, title: str, tables: dict[str, pd.DataFrame], legend: list[str],
                          notes: list[str], footer: str = "", folds: pd.DataFrame | None = None,
                          of: dict[str, int] | None = None, steps: dict[str, str] | None = None) -> Path:
    """The comparison as a page of its own, written atomically (arguments as ``comparison_sections``)."""
    text = render_page(title, "the published setting beside the leakage-free one",
                       comparison_sections(tables, legend, notes, folds, of, steps), footer)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
