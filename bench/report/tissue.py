"""The H&E under the report's maps: a thumbnail of a test section's image and where each spot lies on it.

The report needs only the run's results; the image is read from the run's data folder (its config.json)
when it is still there, and the page says why not otherwise. Only images that load as one array are drawn
(a whole-slide TIFF would be read whole just for a background).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

MAX_SIDE = 800  # thumbnail pixels along the longer side: sharp in a 2.5-inch panel, small in the page


@dataclass(frozen=True)
class Tissue:
    image: np.ndarray  # (h, w, 3) uint8: the section's image around its spots, downsampled
    origin: tuple[float, float]  # full-resolution (x, y) of the thumbnail's top-left pixel
    step: int  # full-resolution pixels per thumbnail pixel
    pixel_xy: dict  # spot id -> full-resolution (x, y)

    def positions(self, spot_ids) -> np.ndarray | None:
        """Thumbnail (x, y) of these spots; None when any is not a spot of the section."""
        try:
            xy = np.array([self.pixel_xy[str(s)] for s in spot_ids], dtype=float)
        except KeyError:
            return None
        return (xy - np.asarray(self.origin)) / self.step


def section_tissue(config: dict, section_id: str) -> Tissue | str:
    """The section's H&E thumbnail, or a sentence saying why there is none."""
    dataset, data_dir = config.get("dataset"), config.get("data_dir")
    if not dataset:
        return "the run's config.json names no dataset"
    return _tissue(str(dataset), str(data_dir) if data_dir else None, str(section_id))


@lru_cache(maxsize=4)  # the expression maps and the cluster maps show the same section
def _tissue(dataset_name: str, data_dir: str | None, section_id: str) -> Tissue | str:
    from bench.data.locations import load_dataset

    try:
        section = load_dataset(dataset_name, Path(data_dir) if data_dir else None)[section_id]
        if not section.has_image:
            return f"section {section_id} has no image"
        spots = section.header.spots
        pixels = section.image.read()
    except Exception as exc:  # moved, deleted or unreadable data: the maps are drawn without it
        return f"the run's data could not be read ({type(exc).__name__}: {exc})"
    if not isinstance(pixels, np.ndarray):
        return f"section {section_id}'s image is a whole-slide image, not read whole for a background"
    xy = spots[["pixel_x", "pixel_y"]].to_numpy(float)
    margin = _pitch_px(xy)
    height, width = pixels.shape[:2]
    x0, y0 = (max(0, int(v - margin)) for v in xy.min(axis=0))
    x1, y1 = (min(limit, int(math.ceil(v + margin))) for v, limit in zip(xy.max(axis=0), (width, height)))
    if x1 <= x0 or y1 <= y0:
        return f"the spots of section {section_id} are not on its image"
    step = max(1, math.ceil(max(x1 - x0, y1 - y0) / MAX_SIDE))
    thumb = np.ascontiguousarray(pixels[y0:y1:step, x0:x1:step, :3])
    return Tissue(thumb, (float(x0), float(y0)), step, dict(zip(map(str, spots.index), map(tuple, xy))))


def _pitch_px(xy: np.ndarray) -> float:
    """Median distance to the nearest other spot, in image pixels (the margin kept around the spots)."""
    if len(xy) < 2:
        return 0.0
    from scipy.spatial import cKDTree

    return float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1]))
