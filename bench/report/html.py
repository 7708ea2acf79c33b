"""HTML pieces of the report: the one number formatter, escaping, tables and the page shell (inline CSS only).

Every string that comes from data (gene, section and method names, configuration values) goes through
``esc`` (``html.escape``); the table helper escapes every cell, so callers pass plain text.
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import numpy as np

MISSING = "n/a"
NUM = ' class="num"'
KIND_LABELS = {"method": "method", "positive-control": "positive control", "negative-control": "negative control"}


def fmt(value, style: str = "r") -> str:
    """The report's only number formatter; tests format the results tables with it too.

    Styles: ``r`` (scores, differences, ranks: 3 decimals), ``p`` (p-values: 3 decimals, or 2 significant
    digits in scientific notation below 0.001), ``pct`` (a share in [0, 1] as a whole percentage),
    ``int``, ``s`` (seconds: 2 decimals, scientific below 0.01), ``rate`` and ``mb`` (whole numbers with
    thousands separators). Missing and undefined values (None, NaN) are ``n/a``; booleans are yes/no."""
    if value is None or (isinstance(value, str) and value == ""):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    v = float(value)
    if not math.isfinite(v):
        return MISSING
    if style == "r":
        return f"{v:.3f}"
    if style == "p":
        return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"
    if style == "pct":
        return f"{100 * v:.0f}%"
    if style == "int":
        return f"{int(round(v))}"
    if style == "s":
        return f"{v:.2f}" if v >= 0.01 else f"{v:.1e}"
    if style in ("rate", "mb"):
        return f"{v:,.0f}"
    raise ValueError(f"unknown number style {style!r}")


def mean_sd(mean, sd) -> str:
    """``mean ± sd``; the mean alone when the sd is undefined (one fold), n/a when the mean is."""
    if fmt(mean) == MISSING or fmt(sd) == MISSING:
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(sd)}"


def interval(low, high) -> str:
    if fmt(low) == MISSING and fmt(high) == MISSING:
        return MISSING
    return f"[{fmt(low)}, {fmt(high)}]"


def kind_label(kind) -> str:
    return KIND_LABELS.get(str(kind), str(kind))


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(value) -> str:
    """Escaped text; a tuple is a main value with a second, smaller line (e.g. a CI under a mean)."""
    if isinstance(value, tuple):
        return "<br>".join(f"<small>{esc(v)}</small>" if i else esc(v) for i, v in enumerate(value))
    return esc(value)


def table(table_id: str, header: Sequence[str], rows: Iterable[Sequence], caption: str = "",
          row_classes: Sequence[str] | None = None, numeric_from: int = 1, wrap: bool = False) -> str:
    """An HTML table; every cell is escaped plain text. Columns from ``numeric_from`` on align right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        cells = "".join(f"<td{NUM if j >= numeric_from else ''}>{_cell(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    attrs = f'id="{esc(table_id)}"' + (' class="wrap"' if wrap else "")
    return (f'<div class="scroll"><table {attrs}>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def definition_list(items: Iterable[tuple[str, object]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def figure(png_base64: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{png_base64}">{cap}</figure>'


def section(anchor: str, title: str, body: str, intro: str = "") -> str:
    text = f'<p class="intro">{esc(intro)}</p>' if intro else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{text}{body}</section>'


def paragraph(text: str, cls: str = "") -> str:
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<p{attr}>{esc(text)}</p>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9;
line-height:1.45}
header{background:#24324a;color:#fff;padding:20px 32px}header h1{margin:0 0 4px;font-size:1.6em}
header p{margin:0;color:#c9d3e6}
nav{background:#fff;border-bottom:1px solid #dde1e8;padding:8px 32px;font-size:.9em}
nav a{margin-right:14px;color:#24507a;text-decoration:none}
main{max-width:1180px;margin:0 auto;padding:8px 24px 48px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:18px 0;padding:8px 22px 18px}
h2{font-size:1.25em;margin:12px 0 8px;color:#24324a}
.intro{color:#555f70;font-size:.92em;margin-top:0}
.verdict{font-size:1.08em;background:#eef5ee;border-left:5px solid #3c8d50;padding:10px 14px;margin:10px 0}
.verdict.weak{background:#fff6e5;border-left-color:#d89a1e}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{flex:1 1 200px;background:#f3f6fb;border-radius:6px;padding:10px 14px}
.card b{display:block;font-size:1.35em;color:#24324a}.card span{font-size:.85em;color:#555f70}
.scroll{overflow-x:auto;margin:8px 0}
table{border-collapse:collapse;font-size:.88em;min-width:40%}
caption{text-align:left;font-size:.9em;color:#555f70;padding:4px 0;caption-side:top}
th,td{padding:4px 10px;border-bottom:1px solid #e4e7ed;text-align:left;white-space:nowrap}
th{background:#f0f2f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td small{color:#6a7385}table.wrap td{white-space:normal;word-break:break-word}h3{font-size:1em;margin:14px 0 4px}
tr.positive-control td{background:#eef3fb;font-style:italic}
tr.negative-control td{background:#f7f1ea;font-style:italic}
tr.best td{font-weight:600}
figure{margin:10px 0}figure img{max-width:100%;height:auto;border:1px solid #eceef2}
figcaption{font-size:.85em;color:#555f70}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;font-size:.9em}
dt{font-weight:600;color:#3a4457}dd{margin:0;word-break:break-all}
details{margin:8px 0}summary{cursor:pointer;color:#24507a}
.note{color:#8a5a00;font-size:.9em}
footer{text-align:center;color:#8a93a3;font-size:.8em;padding:12px}
"""


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str, footer: str) -> str:
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{links}</nav>"
            f"<main>{body}</main><footer>{esc(footer)}</footer></body></html>\n")
