"""Core data types: a Dataset is a set of Sections; a Section is one tissue slice.

A Section holds raw counts as AnnData (spots x genes, genes in ``var``), its spot table in ``obs``
(array and pixel coordinates, labels), the patient it came from, and a lazy handle to its H&E image.
Follows scanpy conventions: pixel coordinates also sit in ``obsm["spatial"]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

# Columns every section's spot table (AnnData.obs) carries. Labels may be missing (NaN).
SPOT_COLUMNS = ("array_x", "array_y", "pixel_x", "pixel_y", "pathology_label", "cluster_label")


class DataError(ValueError):
    """A user's data is missing or malformed; the message names the file and the field."""


class OutputError(RuntimeError):
    """Results cannot be written (disk full, no permission); the message names the file.

    Kept apart from a method's own OSErrors (e.g. a failed weight download), which fail only its job:
    a full disk fails every job, so the run stops."""

    @classmethod
    def writing(cls, path, exc: OSError, option: str = "--out"):
        import errno

        fix = "free some space or " if exc.errno == errno.ENOSPC else ""
        return cls(f"cannot write {path}: {exc.strerror or exc}; {fix}choose another {option} folder")


class SlideImage(Protocol):
    """Lazy access to an H&E image: cheap to hold, decoded only when ``read`` is called."""

    source: str  # a path or a description, used in error messages and cache keys

    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, without decoding the pixels if possible."""

    def read(self) -> np.ndarray:
        """The whole image as an (height, width, 3) uint8 array."""

    def fingerprint(self) -> str:
        """A string that changes when the pixels change (for patch-cache keys)."""


class ImageFile:
    """An image on disk, opened with Pillow only when needed."""

    # her2st's full-resolution images are ~92 Mpx, above Pillow's default decompression-bomb threshold.
    MAX_PIXELS = 400_000_000

    def __init__(self, path: Path):
        self.path = Path(path)
        self.source = str(self.path)

    def _open(self):
        from PIL import Image

        if not self.path.is_file():
            raise DataError(f"{self.path}: image file not found")
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, self.MAX_PIXELS)
        try:
            return Image.open(self.path)
        except Exception as exc:  # Pillow raises several types for unreadable files
            raise DataError(f"{self.path}: not a readable image ({exc})") from exc

    def size(self) -> tuple[int, int]:
        with self._open() as im:
            return im.size

    def read(self) -> np.ndarray:
        with self._open() as im:
            try:
                return np.asarray(im.convert("RGB"))
            except Exception as exc:
                raise DataError(f"{self.path}: image is corrupt or truncated ({exc})") from exc

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{self.path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


class ArrayImage:
    """An image already in memory (synthetic data, tests)."""

    def __init__(self, pixels: np.ndarray, source: str):
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise DataError(f"{source}: expected an (H, W, 3) uint8 image, got {pixels.shape} {pixels.dtype}")
        self.pixels = pixels
        self.source = source

    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]

    def read(self) -> np.ndarray:
        return self.pixels

    def fingerprint(self) -> str:
        import hashlib

        return f"{self.source}:{hashlib.sha256(self.pixels.tobytes()).hexdigest()[:16]}"


@dataclass
class Section:
    """One tissue section. Counts are loaded on first access (``load_counts`` is called once)."""

    section_id: str
    patient_id: str
    load_counts: Callable[[], "anndata.AnnData"]  # noqa: F821 - anndata imported lazily
    image: SlideImage | None = None
    spot_pitch_um: float = 200.0  # centre-to-centre distance of neighbouring spots on the array
    _counts: object = field(default=None, repr=False)

    @property
    def counts(self):
        """Raw counts as AnnData: obs = spot table (SPOT_COLUMNS), var = genes, obsm['spatial'] = pixel x/y."""
        if self._counts is None:
            self._counts = self.load_counts()
            validate_section_counts(self.section_id, self._counts)
        return self._counts

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def um_per_px(self) -> float | None:
        """Microns per image pixel, derived from the spot pitch (never hard-coded)."""
        if self.image is None:
            return None
        return um_per_px_from_spots(self.counts.obs, self.spot_pitch_um, where=self.section_id)


@dataclass
class Dataset:
    name: str
    sections: dict[str, Section]
    citation: str = ""
    # Extra facts a dataset wants to expose (e.g. the planted genes of the synthetic data).
    attrs: dict = field(default_factory=dict)

    def imaged_sections(self) -> list[str]:
        return [sid for sid, s in self.sections.items() if s.has_image]

    def expression_only_sections(self) -> list[str]:
        return [sid for sid, s in self.sections.items() if not s.has_image]

    def patients(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for sid, s in self.sections.items():
            out.setdefault(s.patient_id, []).append(sid)
        return out

    def __getitem__(self, section_id: str) -> Section:
        try:
            return self.sections[section_id]
        except KeyError:
            raise KeyError(f"dataset {self.name!r} has no section {section_id!r}; "
                           f"sections: {', '.join(self.sections)}") from None


def validate_section_counts(section_id: str, adata) -> None:
    """Check the contract every loader must meet, so methods never see half-formed data."""
    missing = [c for c in SPOT_COLUMNS if c not in adata.obs.columns]
    if missing:
        raise DataError(f"section {section_id}: spot table lacks field(s) {missing}")
    if adata.n_obs == 0:
        raise DataError(f"section {section_id}: no spots")
    coords = adata.obs[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    if not np.isfinite(coords).all():
        raise DataError(f"section {section_id}: field pixel_x/pixel_y has missing or non-finite values")
    if not adata.var_names.is_unique:
        raise DataError(f"section {section_id}: gene names in var are not unique")


def check_spots_on_image(section: Section) -> None:
    """Every spot centre must lie on the section's image (read from the image header, no decoding).

    A centre outside it means the image and the spot file disagree (a downscaled or wrong image), which
    padding would hide, so it is always an error. Windows that only run off the edge are the patch
    store's ``off_image`` policy."""
    width, height = section.image.size()
    obs = section.counts.obs
    xy = obs[["pixel_x", "pixel_y"]].to_numpy(float)
    outside = ~((xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise DataError(f"{section.image.source}: spot {obs.index[i]} of section {section.section_id} has "
                        f"pixel_x/pixel_y ({xy[i, 0]:.1f}, {xy[i, 1]:.1f}) outside the {width}x{height} image "
                        f"({int(outside.sum())} of {len(xy)} spots are); the image does not match the spot "
                        f"positions (downscaled or from another section?)")


def um_per_px_from_spots(obs, spot_pitch_um: float, where: str = "") -> float:
    """Median ratio of the physical to pixel distance between each spot and its nearest neighbour.

    Dividing each nearest-neighbour pixel distance by its array-grid distance makes this robust to
    missing spots (a gap of two grid steps still gives the right pitch).
    """
    from scipy.spatial import cKDTree

    px = obs[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    grid = obs[["array_x", "array_y"]].to_numpy(dtype=float)
    if len(px) < 2:
        raise DataError(f"section {where}: need at least two spots to derive µm/px from the spot pitch")
    dist, idx = cKDTree(px).query(px, k=2)
    grid_dist = np.linalg.norm(grid - grid[idx[:, 1]], axis=1)
    ok = grid_dist > 0
    if not ok.any():
        raise DataError(f"section {where}: array_x/array_y do not vary; cannot derive µm/px")
    px_per_grid_step = np.median(dist[ok, 1] / grid_dist[ok])
    return float(spot_pitch_um / px_per_grid_step)
