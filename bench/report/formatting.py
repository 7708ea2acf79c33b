"""The report's number and label formatting: plain text in, plain text out (escaping is the template's job).

Tests format the results tables with these same functions, so a number in the report can be checked
against the tables it came from.
"""
from __future__ import annotations

import math

import numpy as np

from bench.evaluation.cells import UNDEFINED, is_number, score_cell
from bench.method import kind_of

MISSING = "n/a"


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


def score(value) -> str:
    """A score of a method that ran (3 decimals, as ``fmt``); "undefined (constant prediction)" where there is no
    r, in the words every table uses (``bench.evaluation.cells``): an empty cell would read as "not run"."""
    return score_cell(value)


def score_spread(mean, sd, below: str):
    """A score cell of a method that ran: ``mean ± sd`` over ``below`` (a second line, e.g. its interval), or the
    one line "undefined (constant prediction)" where the mean is undefined (its interval is, too)."""
    return (mean_sd(mean, sd), below) if is_number(mean) else UNDEFINED


def interval(low, high) -> str:
    if fmt(low) == MISSING and fmt(high) == MISSING:
        return MISSING
    return f"[{fmt(low)}, {fmt(high)}]"


def kind_label(kind) -> str:
    return kind_of(kind).label


def pretrained_label(row) -> str:
    """Whether a method's image encoder started from pretrained weights: yes, no, or "no: random init" for
    an encoder meant to start pretrained that did not (``random_init`` of the evaluation)."""
    flag = row.get("random_init", False)
    return "no: random init" if flag is True or flag == 1 else fmt(bool(row["pretrained"]))
