"""Whole slides as training examples, for the methods that model all spots of a section at once
(HisToGene, Hist2ST, THItoGene: one slide = one sequence / one graph, one slide per optimiser step)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.method import SpotData


@dataclass
class Slide:
    section_id: str
    rows: np.ndarray  # positions of this slide's spots in the SpotData it came from
    patches: np.ndarray  # (n, px, px, 3) uint8, read from the patch store
    array_coords: np.ndarray  # (n, 2) int64
    expression: np.ndarray | None  # (n, n_genes) targets (training side only)
    counts: np.ndarray | None  # (n, n_genes) raw counts when the method asked for them

    def __len__(self) -> int:
        return len(self.rows)


def split_slides(data: SpotData) -> list[Slide]:
    """One ``Slide`` per section, in order of first appearance; patches are loaded into memory."""
    if data.patches is None:
        raise ValueError("this method needs patches: its patch_spec() must not be None")
    slides = []
    for section_id, rows in data.sections():
        slides.append(Slide(
            section_id=str(section_id),
            rows=rows,
            patches=np.asarray(data.patches[rows]),
            array_coords=np.asarray(data.array_coords[rows], dtype=np.int64),
            expression=None if data.expression is None else np.asarray(data.expression[rows], dtype=np.float32),
            counts=None if data.counts is None else np.asarray(data.counts[rows], dtype=np.float32),
        ))
    return slides


class ShuffledSlides:
    """Iterable over slides in a new seeded order each pass (one epoch = one pass)."""

    def __init__(self, slides: list[Slide], rng: np.random.Generator):
        self.slides = slides
        self.rng = rng

    def __iter__(self):
        for i in self.rng.permutation(len(self.slides)):
            yield self.slides[i]

    def __len__(self) -> int:
        return len(self.slides)


def check_positions(coords: np.ndarray, n_positions: int, method: str) -> np.ndarray:
    """Array coordinates as int64, refused (with the fix) if they fall outside a position table."""
    coords = np.asarray(coords, dtype=np.int64)
    if coords.size and (coords.min() < 0 or coords.max() >= n_positions):
        raise ValueError(f"{method}: array coordinates span {coords.min()}..{coords.max()}, outside the "
                         f"position embedding's 0..{n_positions - 1}; raise its n_positions parameter")
    return coords
