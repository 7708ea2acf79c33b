"""What one score cell says, in the same words everywhere: the run report, the terminal tables, ``summary.csv``
and the reproduce page.

A score can be missing for three different reasons, and a reader must be able to tell them apart:

- the method ran, but its Pearson r is undefined: its prediction was constant (a mean control predicts the
  training mean at every spot; a per-gene r then has a zero variance in its denominator), so there is no r to
  average. That is a result, not a failure;
- the method was not run in that setting;
- no one published a number for it (the controls, and methods whose papers did not use that dataset).
"""
from __future__ import annotations

import math

UNDEFINED = "undefined (constant prediction)"
NOT_RUN = "not run"
NOT_PUBLISHED = "not published"
UNKNOWN = "n/a"  # only where the record says neither whether it ran (a folder compared before fold counts)


def is_number(value) -> bool:
    """Whether ``value`` is a finite number (None, NaN, inf and text are not)."""
    try:
        return value is not None and not isinstance(value, (str, bool)) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def score_cell(value, ran: bool = True, published: bool = False, digits: int = 3) -> str:
    """The cell of one score: the number with ``digits`` decimals; else why there is none.

    ``ran``: whether the method has complete jobs behind this cell (a missing value of a method that ran is an
    undefined r); ``published``: the cell is a published number (a missing one was never published)."""
    if is_number(value):
        return f"{float(value):.{digits}f}"
    if published:
        return NOT_PUBLISHED
    return UNDEFINED if ran else NOT_RUN


# Where a table must stay narrow (the terminal's, within 100 columns), "undefined" carries a mark, and the
# table ends with the footnote that says it in full.
UNDEFINED_MARK = "undefined*"
UNDEFINED_FOOTNOTE = f"*{UNDEFINED}: the method ran, but its prediction was constant, so Pearson r has no value."


def narrow_cell(cell: str) -> str:
    """``cell`` for a narrow table: ``UNDEFINED`` becomes ``UNDEFINED_MARK`` (print ``UNDEFINED_FOOTNOTE``)."""
    return UNDEFINED_MARK if cell == UNDEFINED else cell
