"""Patch store: square H&E patches centred on each spot, cut once and cached on disk.

A patch is defined physically: a window of ``window_um`` microns resampled to ``px`` pixels, so data at
any resolution gives the same field of view. The default (165 µm -> 224 px) is the 224 px crop the
published methods take at her2st's native ~0.735 µm/px (neighbouring spots are ~272 px = 200 µm apart).

Patches of one (section, window, size) live in one ``.npy`` file, written atomically and opened
memory-mapped on reuse, so a second run reads no image at all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.data import DataError, OutputError, Section, check_spots_on_image

log = logging.getLogger(__name__)
OFF_IMAGE_POLICIES = ("pad", "error")
PAD_VALUE = 255  # white, like the glass around the tissue
_FORMAT_VERSION = 1  # bump when the cutting rule changes, so stale caches are not reused


@dataclass(frozen=True)
class PatchSpec:
    window_um: float = 165.0
    px: int = 224
    # "pad": windows that run off the image edge are filled with white, and counted;
    # "error": such a spot stops the run with an error naming it.
    # A spot whose centre lies outside the image is an error under both (bench.data.check_spots_on_image).
    off_image: str = "pad"

    def __post_init__(self):
        if self.off_image not in OFF_IMAGE_POLICIES:
            raise ValueError(f"off_image must be one of {OFF_IMAGE_POLICIES}, got {self.off_image!r}")
        if self.window_um <= 0 or self.px <= 0:
            raise ValueError(f"window_um and px must be positive, got {self.window_um}, {self.px}")


@dataclass
class PatchInfo:
    section_id: str
    n_spots: int
    window_px: int
    um_per_px: float
    n_padded: int
    source: str


class PatchStore:
    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)

    def patches(self, dataset_name: str, section: Section, spec: PatchSpec) -> np.ndarray:
        """(n_spots, px, px, 3) uint8, in the order of ``section.counts.obs``; memory-mapped."""
        path = self._path(dataset_name, section, spec)
        if path.is_file():
            try:
                return np.load(path, mmap_mode="r")
            except (ValueError, OSError) as exc:  # a damaged cache entry is rebuilt, never trusted
                log.warning("patch cache %s unreadable (%s); rebuilding", path, exc)
        array, info = cut_patches(section, spec)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                np.save(fh, array)
            tmp.with_suffix(".json").write_text(json.dumps(asdict(info), indent=1))
            os.replace(tmp.with_suffix(".json"), path.with_suffix(".json"))
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only cache: say which file, keep no half-written entry
            raise OutputError.writing(path, exc, "--cache-dir") from exc
        finally:
            for leftover in (tmp, tmp.with_suffix(".json")):
                leftover.unlink(missing_ok=True)
        return np.load(path, mmap_mode="r")

    def info(self, dataset_name: str, section: Section, spec: PatchSpec) -> PatchInfo | None:
        meta = self._path(dataset_name, section, spec).with_suffix(".json")
        return PatchInfo(**json.loads(meta.read_text())) if meta.is_file() else None

    def _path(self, dataset_name: str, section: Section, spec: PatchSpec) -> Path:
        if section.image is None:
            raise DataError(f"section {section.section_id} of {dataset_name} has no image; "
                            "it can be used for expression only")
        obs = section.counts.obs
        key = hashlib.sha256()
        key.update(json.dumps([_FORMAT_VERSION, dataset_name, section.section_id, asdict(spec),
                               section.image.fingerprint(), list(obs.index)]).encode())
        key.update(obs[["pixel_x", "pixel_y"]].to_numpy(np.float64).tobytes())
        name = f"{section.section_id}-{spec.window_um:g}um-{spec.px}px-{key.hexdigest()[:12]}.npy"
        return self.cache_dir / "patches" / dataset_name / name


def cut_patches(section: Section, spec: PatchSpec) -> tuple[np.ndarray, PatchInfo]:
    from PIL import Image

    check_spots_on_image(section)  # before decoding: a mismatched image is refused cheaply
    image = section.image.read()
    height, width = image.shape[:2]
    um_per_px = section.um_per_px
    window_px = max(1, int(round(spec.window_um / um_per_px)))
    obs = section.counts.obs
    centres = obs[["pixel_x", "pixel_y"]].to_numpy(float)
    out = np.empty((len(obs), spec.px, spec.px, 3), dtype=np.uint8)
    n_padded = 0
    for i, (cx, cy) in enumerate(centres):
        x0 = int(round(cx - window_px / 2))
        y0 = int(round(cy - window_px / 2))
        x1, y1 = x0 + window_px, y0 + window_px
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            if spec.off_image == "error":
                raise DataError(f"{section.image.source}: the {window_px} px window of spot {obs.index[i]} "
                                f"(section {section.section_id}, pixel_x/pixel_y {cx:.1f}, {cy:.1f}) "
                                f"runs off the {width}x{height} image; use off_image='pad' to pad it")
            n_padded += 1
            crop = np.full((window_px, window_px, 3), PAD_VALUE, dtype=np.uint8)
            sx0, sy0 = max(x0, 0), max(y0, 0)
            sx1, sy1 = min(x1, width), min(y1, height)
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
        else:
            crop = image[y0:y1, x0:x1]
        if window_px != spec.px:
            crop = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(
                (spec.px, spec.px), Image.Resampling.BILINEAR))
        out[i] = crop
    if n_padded:
        log.warning("section %s: %d of %d spot windows run off the image and were padded with white",
                    section.section_id, n_padded, len(obs))
    info = PatchInfo(section.section_id, len(obs), window_px, um_per_px, n_padded, section.image.source)
    return out, info


class StackedPatches:
    """Several sections' memory-mapped patch arrays seen as one (n_spots, px, px, 3) array.

    Indexing reads only the rows asked for, so a fold's patches are never all loaded at once.
    ``np.asarray(stacked)`` materialises everything (fine for small data).
    """

    def __init__(self, parts: list[np.ndarray]):
        if not parts:
            raise ValueError("no patch arrays to stack")
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]),) + tuple(parts[0].shape[1:])
        self.dtype = parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            part = int(np.searchsorted(self.offsets, i, side="right") - 1)
            return np.asarray(self.parts[part][i - self.offsets[part]])
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        part_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for part in np.unique(part_of):
            mask = part_of == part
            out[mask] = self.parts[part][rows[mask] - self.offsets[part]]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out
