"""The comparison of evaluation settings as a self-contained HTML page (``bench reproduce``), and as text.

Renders the tables built by ``bench.evaluation.reproduce.comparison_tables``: one per score (ACG, HEG),
methods by setting, the published number first where one exists for the setting it sits beside.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.evaluation.reproduce import PUBLISHED_COLUMN, SCORES, Setting
from bench.report.html import fmt, kind_label, page, paragraph, section, table

REPRODUCE_PAGE = "reproduce.html"


def comparison_html(tables: dict[str, pd.DataFrame], columns: dict[str, Setting], notes: list[str]) -> str:
    """The sections of the page: one table per score, then what each column is and where numbers come from."""
    body = ""
    for key, _, title in SCORES:
        t = tables[key]
        cols = [c for c in t.columns if c not in ("method", "kind")]
        header = ["method", "kind"] + [_header(c, columns) for c in cols]
        rows = [[r["method"], kind_label(r["kind"])] + [fmt(r[c]) if np.isfinite(r[c]) else "not run" for c in cols]
                for _, r in t.iterrows()]
        body += section(f"reproduce-{key}", f"{title}: mean Pearson r over folds, by setting",
                        table(f"reproduce-{key}", header, rows, row_classes=list(t["kind"]), numeric_from=2))
    legend = [f"{label}: {setting.describe()}" for label, setting in columns.items()]
    body += section("reproduce-settings", "Settings", "".join(paragraph(x) for x in legend + notes))
    return body


def _header(column: str, columns: dict[str, Setting]) -> str:
    return "published" if column == PUBLISHED_COLUMN else column


def write_comparison_page(path: Path, title: str, tables: dict[str, pd.DataFrame], columns: dict[str, Setting],
                          notes: list[str], footer: str = "") -> Path:
    body = comparison_html(tables, columns, notes)
    nav = [(f"reproduce-{k}", t) for k, _, t in SCORES] + [("reproduce-settings", "Settings")]
    Path(path).write_text(page(title, "published setting beside the leakage-free one", nav, body, footer))
    return Path(path)
