"""What a report section says, as plain data: the section builders return these and the page template
(``reports/report.html.j2``) decides how each kind looks.

Every field is plain text (numbers already formatted with ``bench.report.formatting``); nothing here is
HTML, so nothing here needs escaping: the template escapes every value it prints.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Union


@dataclass
class Paragraph:
    text: str
    cls: str = ""  # a CSS class of reports/report.css: "note" (a caveat), "verdict weak"; or none
    kind: ClassVar[str] = "paragraph"


@dataclass
class Heading:
    """A sub-heading inside a section."""
    text: str
    kind: ClassVar[str] = "heading"


@dataclass
class Table:
    """Rows of plain-text cells; a tuple cell is a main value over a second, smaller line (a CI under a mean).

    Columns from ``numeric_from`` on align right; ``row_classes`` (one per row, may be empty) style whole
    rows (controls, the best method); ``wrap`` lets long cells wrap instead of scrolling."""
    id: str
    header: Sequence[str]
    rows: Iterable[Sequence]
    caption: str = ""
    row_classes: Sequence[str] | None = None
    numeric_from: int = 1
    wrap: bool = False
    kind: ClassVar[str] = "table"

    def __post_init__(self):
        # Each cell becomes a tuple of its lines so that the template has one case to draw.
        self.header = [str(h) for h in self.header]
        self.rows = [[tuple(str(v) for v in c) if isinstance(c, tuple) else (str(c),) for c in row]
                     for row in self.rows]
        classes = list(self.row_classes or [])
        self.row_classes = [str(c) if c else "" for c in classes] + [""] * (len(self.rows) - len(classes))


@dataclass
class Figure:
    png_base64: str  # base64 text: its alphabet (A-Z a-z 0-9 + / =) needs no HTML escaping
    alt: str
    caption: str = ""
    kind: ClassVar[str] = "figure"


@dataclass
class Definitions:
    """Label: value pairs (the provenance list)."""
    items: Sequence[tuple[str, object]]
    kind: ClassVar[str] = "definitions"

    def __post_init__(self):
        self.items = [(str(k), str(v)) for k, v in self.items]


@dataclass
class Cards:
    """Headline numbers, each (label, value); the value is drawn large."""
    items: Sequence[tuple[str, object]]
    kind: ClassVar[str] = "cards"

    def __post_init__(self):
        self.items = [(str(k), str(v)) for k, v in self.items]


@dataclass
class Verdict:
    """The answer to "who wins": one paragraph per line, highlighted; ``strong`` when the win is significant."""
    lines: Sequence[str]
    strong: bool
    kind: ClassVar[str] = "verdict"


@dataclass
class Details:
    """Blocks folded away under a summary line."""
    summary: str
    blocks: list[Block]
    kind: ClassVar[str] = "details"


@dataclass
class Heatmap:
    """A table whose cells are coloured by how good they are: ``header`` (column titles, an arrow each
    saying which way is better), ``rows`` of (row label, row class, cells), each cell (value, interval
    or "", shade in [0, 1] where 1 is the best of its column, or None for no colour)."""
    id: str
    header: Sequence[str]
    rows: Sequence[tuple[str, str, Sequence[tuple[str, str, float | None]]]]
    caption: str = ""
    kind: ClassVar[str] = "heatmap"

    def __post_init__(self):
        self.header = [str(h) for h in self.header]
        self.rows = [(str(label), str(cls or ""),
                      [(str(v), str(ci), None if shade is None else f"{min(max(float(shade), 0.0), 1.0):.2f}")
                       for v, ci, shade in cells]) for label, cls, cells in self.rows]


Block = Union[Paragraph, Heading, Table, Figure, Definitions, Cards, Verdict, Details, Heatmap]
BLOCK_TYPES = (Paragraph, Heading, Table, Figure, Definitions, Cards, Verdict, Details, Heatmap)


@dataclass
class Section:
    """One section of the page; ``nav`` is its (short) link text in the navigation bar."""
    id: str
    nav: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    intro: str = ""


def check_blocks(blocks: Iterable, where: str) -> None:
    """Raise TypeError on anything that is not a block (the template draws only the kinds above)."""
    for block in blocks:
        if not isinstance(block, BLOCK_TYPES):
            kinds = ", ".join(t.__name__ for t in BLOCK_TYPES)
            raise TypeError(f"{where}: a {type(block).__name__} is not a report block (one of {kinds})")
        if isinstance(block, Details):
            check_blocks(block.blocks, where)
