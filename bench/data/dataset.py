"""Core data types: a Dataset is a set of Sections; a Section is one tissue slice.

A Section holds raw counts as AnnData (spots x genes, genes in ``var``), its spot table in ``obs``
(array and pixel coordinates, labels), the patient it came from, and a lazy handle to its H&E image.
Follows scanpy conventions: pixel coordinates also sit in ``obsm["spatial"]``.
"""
from __future__ import annotations

import csv
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from bench.errors import InputError, UserError

log = logging.getLogger(__name__)

# A section's patient_from when the data name no patient: each section is then its own patient, so a
# patient-level split cannot see two sections of one patient (its leak status is only as good as this).
PATIENT_IS_SECTION = "none given: each section is its own patient (named after its file or section)"

# Columns every section's spot table (AnnData.obs) carries. Labels may be missing (NaN).
SPOT_COLUMNS = ("array_x", "array_y", "pixel_x", "pixel_y", "pathology_label", "cluster_label")


# What reading a user's table, matrix or image file raises when the file is not what it should be: pandas'
# parser errors and UnicodeDecodeError are ValueErrors, a broken gzip stream an OSError, EOFError or zlib.error,
# tifffile's TiffFileError a ValueError. Anything else (a MemoryError, a TypeError) says nothing about the file
# and is not reported as the file's fault.
UNREADABLE_FILE = (OSError, ValueError, EOFError, zlib.error, csv.Error)


class DataError(InputError):
    """A user's data is missing or malformed; the message names the file and the field."""


class OutputError(UserError, RuntimeError):
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


def _unreadable_image_errors() -> tuple[type[Exception], ...]:
    """What Pillow raises for a file that is not an image, or one that is truncated or corrupt: OSError
    (UnidentifiedImageError, "image file is truncated", broken data streams), SyntaxError and ValueError from
    format parsers, EOFError, and DecompressionBombError for an image above ``ImageFile.MAX_PIXELS``. Anything
    else (a MemoryError, a TypeError) says nothing about the file and is not reported as its corruption."""
    from PIL import Image

    return OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError


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
        except _unreadable_image_errors() as exc:
            raise DataError(f"{self.path}: not a readable image ({exc})") from exc

    def size(self) -> tuple[int, int]:
        with self._open() as im:
            return im.size

    def read(self) -> np.ndarray:
        with self._open() as im:
            try:
                return np.asarray(im.convert("RGB"))
            except _unreadable_image_errors() as exc:
                raise DataError(f"{self.path}: image is corrupt or truncated ({exc})") from exc

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{self.path.resolve()}:{st.st_size}:{int(st.st_mtime)}"

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """The image shrunk to at most ``max_side`` pixels a side and the factor applied; a JPEG is decoded
        at reduced size (draft mode), so a 90 Mpx slide costs a fraction of a second."""
        with self._open() as im:
            width = im.size[0]
            im.draft("RGB", (max_side, max_side))
            try:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side))
            except _unreadable_image_errors() as exc:
                raise DataError(f"{self.path}: image is corrupt or truncated ({exc})") from exc
            return np.asarray(im), im.size[0] / width


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
class SectionHeader:
    """What a section holds without its count matrix: its spot table (``obs`` of the counts: one row per
    counted spot, SPOT_COLUMNS) and how many genes it counts."""

    spots: "pandas.DataFrame"  # noqa: F821 - pandas imported lazily
    n_genes: int


@dataclass
class Section:
    """One tissue section. Counts are loaded on first access (``load_counts`` is called once).

    ``load_header`` (optional) reads the spot table and gene count without parsing the counts, for
    loaders that can (``data info`` and µm/px need no counts); without it they come from the counts."""

    section_id: str
    patient_id: str
    load_counts: Callable[[], "anndata.AnnData"]  # noqa: F821 - anndata imported lazily
    image: SlideImage | None = None
    spot_pitch_um: float = 200.0  # centre-to-centre distance of neighbouring spots on the array
    grid: str = "square"  # geometry of array_x/array_y: "square" (ST), "hex" (Visium) or "pixels" (GRIDS)
    # Where the patient id came from (a column, a naming rule); PATIENT_IS_SECTION when nothing said.
    patient_from: str = ""
    load_header: Callable[[], SectionHeader] | None = None
    _counts: object = field(default=None, repr=False)
    _header: SectionHeader | None = field(default=None, repr=False)

    @property
    def counts(self):
        """Raw counts as AnnData: obs = spot table (SPOT_COLUMNS), var = genes, obsm['spatial'] = pixel x/y."""
        if self._counts is None:
            self._counts = self.load_counts()
            validate_section_counts(self.section_id, self._counts)
        return self._counts

    @property
    def header(self) -> SectionHeader:
        """The spot table and gene count: from the counts once they are loaded, else from ``load_header``."""
        if self._counts is None and self.load_header is not None:
            if self._header is None:
                self._header = self.load_header()
            return self._header
        return SectionHeader(self.counts.obs, self.counts.n_vars)

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def um_per_px(self) -> float | None:
        """Microns per image pixel, fitted to the spot grid and its pitch (never hard-coded); where the two
        image axes differ in scale, their geometric mean (``um_per_px_xy`` has each)."""
        if self.image is None:
            return None
        return um_per_px_from_spots(self.header.spots, self.spot_pitch_um, self.grid, where=self.where)

    @property
    def um_per_px_xy(self) -> tuple[float, float] | None:
        """Microns per image pixel along the image's x and y axes (patch windows are cut to size along each);
        both the same unless the fit's two scales differ by more than ``ISOTROPIC_WITHIN`` (warned once)."""
        if self.image is None:
            return None
        return um_per_px_xy_from_spots(self.header.spots, self.spot_pitch_um, self.grid, where=self.where)

    @property
    def where(self) -> str:
        """The section and its image file, for messages about its geometry."""
        return f"{self.section_id} ({self.image.source})" if self.image is not None else self.section_id


@dataclass
class Dataset:
    name: str
    sections: dict[str, Section]
    citation: str = ""
    # Extra facts a dataset wants to expose (e.g. the planted genes of the synthetic data).
    attrs: dict = field(default_factory=dict)
    # The published evaluation, where the dataset module declares one (``--protocol published``,
    # ``--panel published``): the sections held out one at a time (training on the others of this list),
    # and the gene panel file of the papers.
    published_sections: tuple[str, ...] | None = None
    published_panel: "Path | None" = None

    def imaged_sections(self) -> list[str]:
        return [sid for sid, s in self.sections.items() if s.has_image]

    def expression_only_sections(self) -> list[str]:
        return [sid for sid, s in self.sections.items() if not s.has_image]

    def patients(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for sid, s in self.sections.items():
            out.setdefault(s.patient_id, []).append(sid)
        return out

    @property
    def patients_from(self) -> str:
        """Where the patients of the imaged sections (those that enter folds) came from, in words."""
        found = list(dict.fromkeys(self.sections[s].patient_from or "given by the loader"
                                   for s in (self.imaged_sections() or self.sections)))
        return "; ".join(found)

    @property
    def patients_unknown(self) -> bool:
        """True when some section that enters folds is its own patient only because nothing said otherwise."""
        return bool(self.sections_without_patients())

    def sections_without_patients(self) -> list[str]:
        """The sections that enter folds and are their own patient only because their data name none."""
        return [s for s in self.imaged_sections() if self.sections[s].patient_from == PATIENT_IS_SECTION]

    def patients_unknown_note(self) -> str | None:
        """Which sections name no patient, in words (None when every one does): all of them, or which ones
        (a folder of files of which only some have a patient column), each with its file."""
        unnamed = self.sections_without_patients()
        if not unnamed:
            return None
        if len(unnamed) == len(self.imaged_sections()):
            return "the data name no patients, so each section is its own patient"
        shown = "; ".join(self.sections[s].where for s in unnamed[:5]) + ("; ..." if len(unnamed) > 5 else "")
        return (f"{len(unnamed)} of {len(self.imaged_sections())} sections name no patient ({shown}), so each of "
                f"them is its own patient (the others' patients: {self.patients_from_named})")

    @property
    def patients_from_named(self) -> str:
        """Where the patients came from, over the sections that enter folds and name one."""
        return "; ".join(dict.fromkeys(self.sections[s].patient_from or "given by the loader"
                                       for s in self.imaged_sections()
                                       if self.sections[s].patient_from != PATIENT_IS_SECTION))

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
    if not adata.obs_names.is_unique:
        repeated = adata.obs_names[adata.obs_names.duplicated()]
        raise DataError(f"section {section_id}: spot name {repeated[0]!r} appears more than once "
                        f"({len(repeated)} repeated name(s)); each spot must be named once")


def image_thumbnail(image: SlideImage, max_side: int = 1024) -> tuple[np.ndarray, float] | None:
    """A small copy of the image and its scale, or None when one cannot be had cheaply (a whole slide
    without a low-resolution level)."""
    if hasattr(image, "thumbnail"):
        return image.thumbnail(max_side)
    width, height = image.size()
    if width * height > 25_000_000:
        return None
    pixels = np.asarray(image.read())
    step = max(1, int(np.ceil(max(width, height) / max_side)))
    return pixels[::step, ::step], 1.0 / step


# A spot whose surroundings (a 50 µm disc on a ~1000 px thumbnail) are this uniform in grey level is on
# glass, a slide label or padding, not tissue: glass varies by 1-4 grey levels, tissue under her2st's
# spots by 11 or more (1st percentile of every section). Pure black or white counts as blank too.
BLANK_STD, BLANK_BELOW, BLANK_ABOVE = 6.0, 15.0, 245.0
MAX_BLANK_SHARE = 0.5


def blank_spot_share(section: Section, pixels: np.ndarray, factor: float, radius_um: float = 50.0) -> float:
    """The share of spots whose square of half-side ``radius_um`` on the thumbnail is blank."""
    grey = pixels[..., :3].astype(np.float32).mean(axis=2)
    xy = section.header.spots[["pixel_x", "pixel_y"]].to_numpy(float) * factor
    radius = max(1, int(round(radius_um / section.um_per_px * factor)))
    blank = 0
    for x, y in xy:
        x0, y0 = max(int(x) - radius, 0), max(int(y) - radius, 0)
        window = grey[y0:int(y) + radius + 1, x0:int(x) + radius + 1]
        if window.size == 0:
            blank += 1
            continue
        level = float(window.mean())
        blank += float(window.std()) < BLANK_STD or level < BLANK_BELOW or level > BLANK_ABOVE
    return blank / max(len(xy), 1)


def check_section(section: Section, counts: bool = True) -> None:
    """Every check a section's data must pass before a run starts (``bench run`` and ``bench data info``):
    its counts and spot table (``validate_section_counts``, run on first access), and for an imaged
    section the spots against the image: centres on it, µm/px consistent with the layout's own scale, and
    most spots on tissue rather than blank glass (spot positions in another resolution than the image).
    ``counts=False``: every check but the counts' own, on the spot table alone where the loader reads it
    without the counts (``Section.header``), for data whose counts are known good."""
    if counts:
        section.counts  # noqa: B018 - reading validates
    if section.image is None:
        return
    check_spots_on_image(section)
    check_scale = getattr(section, "check_scale", None)
    if check_scale is not None:
        check_scale()
    um_per_px = section.um_per_px
    section.um_per_px_xy  # noqa: B018 - an image scaled unevenly along its axes is warned about here, once
    small = image_thumbnail(section.image)
    if small is None:
        return
    share = blank_spot_share(section, *small)
    if share > MAX_BLANK_SHARE:
        raise DataError(f"{section.image.source}: {100 * share:.0f}% of the spots of section {section.section_id} "
                        f"fall on blank (white or black) image at {um_per_px:.3f} µm/px; the spot positions do "
                        f"not match this image's pixels (positions in another resolution, e.g. hires, or an "
                        f"image of another section?)")


def check_spots_on_image(section: Section) -> None:
    """Every spot centre must lie on the section's image (read from the image header, no decoding).

    A centre outside it means the image and the spot file disagree (a downscaled or wrong image), which
    padding would hide, so it is always an error. Windows that only run off the edge are the patch
    store's ``off_image`` policy."""
    width, height = section.image.size()
    obs = section.header.spots
    xy = obs[["pixel_x", "pixel_y"]].to_numpy(float)
    outside = ~((xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise DataError(f"{section.image.source}: spot {obs.index[i]} of section {section.section_id} has "
                        f"pixel_x/pixel_y ({xy[i, 0]:.1f}, {xy[i, 1]:.1f}) outside the {width}x{height} image "
                        f"({int(outside.sum())} of {len(xy)} spots are); the image does not match the spot "
                        f"positions (downscaled or from another section?)")


# Array geometries: where one step of array_x / array_y puts a spot, in units of the spot pitch (the
# centre-to-centre distance of neighbouring spots). ST arrays are square grids (1k: 200 µm, "2k": 100 µm);
# on Visium's hexagonal grid array_col steps are half a pitch (neighbours in a row are 2 columns apart)
# and rows are pitch * sqrt(3)/2 apart. "pixels": no array coordinates, only pixel positions.
GRIDS = ("square", "hex", "pixels")
GRID_STEP = {"square": (1.0, 1.0), "hex": (0.5, np.sqrt(3) / 2)}
# Up to this ratio of the fitted map's two scales the image has one scale (her2st's ST arrays fit within
# 1.002-1.009x): both axes get their geometric mean, so windows stay square in image pixels.
ISOTROPIC_WITHIN = 1.02
# Above it, each image axis has its own scale (an image resized unevenly: public ST mouse olfactory bulb
# sections fit a square grid with 1.11x), warned once and cut to the right size along each axis. Above this
# ratio the grid's geometry is not what the data says it is (a Visium hex grid read as square, or the
# reverse, is sqrt(3) = 1.73x off): refused, unless the user gives the scale (option um_per_px).
MAX_ANISOTROPY = 1.30
SCALE_FIX = ("give the array with the loader's grid option (grid=st: square, 200 µm; grid=st-2k: square, 100 µm; "
             "grid=visium: hexagonal, 100 µm) or spot_pitch_um, or the image's scale with --data-option "
             "um_per_px=<µm per pixel> (or um_per_px=<x>,<y>, one value per image axis)")


@dataclass(frozen=True)
class GridFit:
    """A fit of pixel positions on the array: pixels per µm (geometric mean of the two axes' scales), the
    ratio of the two scales, and µm per pixel along the image's x and y axes."""

    px_per_um: float
    anisotropy: float
    um_per_px_xy: tuple[float, float]


def grid_microns(obs, grid: str, spot_pitch_um: float) -> np.ndarray:
    """Each spot's array position in µm (up to a shift), from array_x/array_y and the grid's geometry."""
    step_x, step_y = GRID_STEP[grid]
    grid_xy = obs[["array_x", "array_y"]].to_numpy(dtype=float)
    return grid_xy * np.array([step_x, step_y]) * spot_pitch_um


def fit_grid(obs, grid: str, spot_pitch_um: float, where: str = "") -> GridFit:
    """Least-squares fit of pixel position on array position in µm: pixel = A @ µm + t.

    The scale is sqrt(|det A|), the geometric mean of A's two singular values, so rotation and a flipped axis
    (image y runs down) do not change it; the anisotropy is the ratio of the singular values. µm per pixel
    along image x (y) is the length in µm of one pixel's step along x (y): the norm of a column of A's
    inverse. One refit without spots whose residual is over 5x the median keeps a mislabelled spot from
    pulling the fit. Unlike the nearest-neighbour distance (the minimum of several noisy distances, so biased
    low: her2st read 5-8% off), a fit over every spot is unbiased."""
    px = obs[["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    if grid == "pixels":
        scale = _nearest_neighbour_scale(px, spot_pitch_um, where)
        return GridFit(scale, 1.0, (1 / scale, 1 / scale))
    um = grid_microns(obs, grid, spot_pitch_um)
    design = np.column_stack([um, np.ones(len(um))])
    if len(px) < 3 or np.linalg.matrix_rank(design) < 3:
        scale = _line_fit(um, px, where)
        return GridFit(scale, 1.0, (1 / scale, 1 / scale))
    keep = np.ones(len(px), dtype=bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], px[keep], rcond=None)
        residual = np.linalg.norm(design @ coef - px, axis=1)
        limit = 5 * np.median(residual[keep])
        refit = (residual <= limit) if limit > 0 else keep
        if refit.sum() < 3 or np.linalg.matrix_rank(design[refit]) < 3 or (refit == keep).all():
            break
        keep = refit
    to_pixels = coef[:2].T
    singular = np.linalg.svd(to_pixels, compute_uv=False)
    if singular[-1] <= 0:
        raise DataError(f"section {where}: pixel_x/pixel_y do not vary with the array position; cannot fit µm/px")
    to_um = np.linalg.inv(to_pixels)
    per_axis = np.linalg.norm(to_um, axis=0)
    return GridFit(float(np.sqrt(singular[0] * singular[1])), float(singular[0] / singular[-1]),
                   (float(per_axis[0]), float(per_axis[1])))


def _line_fit(um: np.ndarray, px: np.ndarray, where: str) -> float:
    """Pixels per µm for spots along one line of the array (too few directions for a 2-D fit): least
    squares of pixel position on the position along the line."""
    centred = um - um.mean(axis=0)
    if len(um) < 2 or not np.abs(centred).max() > 0:
        raise DataError(f"section {where}: array_x/array_y do not vary over its {len(um)} spot(s); cannot fit "
                        f"µm/px to the spot grid")
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    t = centred @ direction
    slope = (t @ (px - px.mean(axis=0))) / (t @ t)  # pixels per µm along the line, as an x/y vector
    return float(np.linalg.norm(slope))


def _nearest_neighbour_scale(px: np.ndarray, spot_pitch_um: float, where: str) -> float:
    """Pixels per µm when only pixel positions are known: the median nearest-neighbour distance is the pitch."""
    from scipy.spatial import cKDTree

    if len(px) < 2:
        raise DataError(f"section {where}: need at least two spots to derive µm/px from the spot pitch")
    dist, _ = cKDTree(px).query(px, k=2)
    step = float(np.median(dist[:, 1]))
    if step <= 0:
        raise DataError(f"section {where}: spots share pixel positions; cannot derive µm/px")
    return step / spot_pitch_um


def checked_grid_fit(obs, spot_pitch_um: float, grid: str = "square", where: str = "") -> GridFit:
    """``fit_grid``, refusing a fit whose two scales differ by more than ``MAX_ANISOTROPY`` (the wrong
    geometry for the array); the message says how the fit of the other geometry went and what lets the data
    through."""
    fit = fit_grid(obs, grid, spot_pitch_um, where)
    if fit.anisotropy > MAX_ANISOTROPY:
        other = {"square": "hex", "hex": "square"}.get(grid)
        alt = ""
        if other is not None:
            try:
                other_fit = fit_grid(obs, other, spot_pitch_um, where)
                alt = f"; as a {other} grid they fit with {other_fit.anisotropy:.2f}x"
            except DataError:
                pass
        ux, uy = fit.um_per_px_xy
        raise DataError(f"section {where}: pixel positions fit a {grid} grid of {spot_pitch_um:g} µm pitch with "
                        f"{fit.anisotropy:.2f}x different scales along its two axes ({ux:.3f} and {uy:.3f} µm/px "
                        f"along image x and y; more than {MAX_ANISOTROPY:.2f}x means the array is another "
                        f"geometry{alt}); to go on, {SCALE_FIX}")
    return fit


def um_per_px_from_spots(obs, spot_pitch_um: float, grid: str = "square", where: str = "") -> float:
    """Microns per image pixel from the spot grid (``fit_grid``; the geometric mean of the two axes'
    scales); refuses a grid whose fitted x and y scales differ by more than ``MAX_ANISOTROPY``."""
    return 1.0 / checked_grid_fit(obs, spot_pitch_um, grid, where).px_per_um


_warned_anisotropic: set[str] = set()  # sections whose uneven axes were already reported by this process


def um_per_px_xy_from_spots(obs, spot_pitch_um: float, grid: str = "square", where: str = "") -> tuple[float, float]:
    """Microns per image pixel along image x and y from the spot grid: one scale for both (the geometric
    mean) up to ``ISOTROPIC_WITHIN``, each axis's own beyond it, with one warning per section naming it."""
    fit = checked_grid_fit(obs, spot_pitch_um, grid, where)
    if fit.anisotropy <= ISOTROPIC_WITHIN:
        return (1.0 / fit.px_per_um,) * 2
    if where not in _warned_anisotropic:
        _warned_anisotropic.add(where)
        ux, uy = fit.um_per_px_xy
        log.warning("section %s: the image's scale differs between its axes (%.3f µm/px along x, %.3f along y: "
                    "%.2fx, fitted to a %s grid of %g µm pitch); patch windows are cut to their size in µm along "
                    "each axis. If the array is another one, or you know the scale, %s", where, ux, uy,
                    fit.anisotropy, grid, spot_pitch_um, SCALE_FIX)
    return fit.um_per_px_xy
