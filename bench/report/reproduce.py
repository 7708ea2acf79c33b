"""The comparison of evaluation settings as report sections and as a page of its own (``bench reproduce``).

Renders the tables built by ``bench.evaluation.reproduce.comparison_tables``: one per score (ACG, HEG),
methods by setting, the published number first where one exists for the setting it sits beside. A run
folder's report opens with them when the folder holds more than one setting (``results/settings_*.csv``,
written by ``bench run``); ``bench reproduce`` writes them as ``reproduce.html``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from bench.evaluation.reproduce import PUBLISHED_COLUMN, SCORES
from bench.report.blocks import Paragraph, Section, Table
from bench.report.formatting import fmt, kind_label
from bench.report.render import render_page

SETTINGS_TABLE = "settings_{score}.csv"  # under <run>/results/: written when a run folder holds several settings


def comparison_sections(tables: dict[str, pd.DataFrame], legend: list[str], notes: list[str]) -> list[Section]:
    """One section per score (a table: methods by setting, controls shaded), then what the columns are."""
    out = []
    for key, _, title in SCORES:
        t = tables[key]
        cols = [c for c in t.columns if c not in ("method", "kind")]
        rows = [[r["method"], kind_label(r["kind"])] + [fmt(r[c]) if np.isfinite(r[c]) else "not run" for c in cols]
                for _, r in t.iterrows()]
        header = ["method", "kind"] + ["published" if c == PUBLISHED_COLUMN else c for c in cols]
        out.append(Section(f"settings-{key}", f"{title} by setting", f"{title}: mean Pearson r over folds, by setting",
                           [Table(f"settings-{key}", header, rows, row_classes=list(t["kind"]), numeric_from=2)]))
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
    legend = ["Columns are protocol / panel / target. The published number stands beside the setting it was "
              "made in, and only there."]
    return comparison_sections(tables, legend, [])


def write_comparison_page(path: Path, title: str, tables: dict[str, pd.DataFrame], legend: list[str],
                          notes: list[str], footer: str = "") -> Path:
    """The comparison as a page of its own, written atomically."""
    text = render_page(title, "the published setting beside the leakage-free one",
                       comparison_sections(tables, legend, notes), footer)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
