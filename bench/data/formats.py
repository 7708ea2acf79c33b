"""Shared pieces of the loaders for other people's file layouts (AnnData .h5ad, 10x Visium, HEST-1k).

Each loader turns its layout into the same ``Section`` objects her2st gives, so methods, splits, metrics
and reports work unchanged. What differs between layouts is only where the counts, positions, image and
scale come from; the pieces here do the common part:

* ``ScaledSection``: a Section whose µm/px is known from the data's own scale (Visium's 55 µm spot
  diameter in ``spot_diameter_fullres``) rather than derived from the spot pitch.
* ``spot_anndata``: counts + spot table -> the AnnData every Section carries (SPOT_COLUMNS, obsm spatial).
* ``H5Image``: an image stored as an array inside an HDF5 file (``uns/spatial/<lib>/images/hires`` of an
  .h5ad), read only when the pixels are needed.
* ``data_root``: where a path-based dataset looks when it is given no root.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.dataset import GRID_STEP, ISOTROPIC_WITHIN, UNREADABLE_FILE, DataError, Section, fit_grid

log = logging.getLogger(__name__)

VISIUM_SPOT_DIAMETER_UM = 55.0  # 10x Visium: 55 µm spots, 100 µm centre to centre on a hexagonal grid
VISIUM_SPOT_PITCH_UM = 100.0
# Named array layouts: (geometry of array_x/array_y, centre-to-centre distance of neighbouring spots, µm).
ARRAYS = {"visium": ("hex", VISIUM_SPOT_PITCH_UM), "st": ("square", 200.0), "st-2k": ("square", 100.0)}
# The layout's own scale (spot_diameter_fullres, a metadata pixel size) and the scale fitted to the spot
# grid may differ by this factor at most; more means the positions are not in the image's pixels.
MAX_SCALE_DISAGREEMENT = 1.15
_warned_uneven: set[str] = set()  # sections whose uneven axes under a fixed scale were reported by this process


@dataclass
class ScaledSection(Section):
    """A Section whose microns per image pixel come from the layout's own scale factors, or from the user
    (``scale_given``), which win over the grid fit; ``scale_source`` says where they come from, for error
    messages. ``fixed_um_per_px`` is one value, or (x, y): one per image axis."""

    fixed_um_per_px: float | tuple[float, float] | None = None
    scale_source: str = "the scale factors"
    # Which loader option fixes a wrong grid; None when the grid's pitch is not known (no cross-check).
    grid_hint: str | None = "grid"
    # The user gave the scale (option um_per_px): the grid fit then only warns where it disagrees.
    scale_given: bool = False

    @property
    def um_per_px(self) -> float | None:
        if self.image is None:
            return None
        if self.fixed_um_per_px is not None:
            ux, uy = _per_axis(self.fixed_um_per_px)
            return float(np.sqrt(ux * uy))
        return super().um_per_px

    @property
    def um_per_px_xy(self) -> tuple[float, float] | None:
        if self.image is None:
            return None
        if self.fixed_um_per_px is not None:
            return _per_axis(self.fixed_um_per_px)
        return super().um_per_px_xy

    def check_scale(self) -> None:
        """The layout's scale against the spot grid: e.g. obsm['spatial'] in hires pixels while the scale
        factors describe full resolution puts the spots ~1/tissue_hires_scalef too close together. A scale
        the user gave is checked too, but only warned about."""
        if self.image is None or self.fixed_um_per_px is None or not self.spot_pitch_um or self.grid_hint is None:
            return
        try:
            fitted = super().um_per_px
        except DataError as exc:
            if not self.scale_given:
                raise
            log.warning("%s; using the given %s", exc, self.scale_source)
            return
        ratio = fitted / float(self.um_per_px)
        if max(ratio, 1 / ratio) > MAX_SCALE_DISAGREEMENT:
            message = (f"{self.image.source}: the spots of section {self.section_id} are "
                       f"{self.spot_pitch_um / fitted:.1f} px apart on the {self.grid} grid of "
                       f"{self.spot_pitch_um:g} µm pitch ({fitted:.3f} µm/px), but {self.scale_source} say "
                       f"{self.um_per_px:.3f} µm/px ({ratio:.2f}x)")
            if self.scale_given:
                log.warning("%s; using the given scale", message)
                return
            raise DataError(f"{message}: the spot positions are not in the image's pixels (e.g. in hires instead "
                            f"of full-resolution pixels), or the array is not the one assumed ({self.grid_hint})")
        self._warn_uneven_axes()

    def _warn_uneven_axes(self) -> None:
        """The README's promise for a fitted scale, kept for a fixed one: where the spot grid says the image's
        two axes differ in scale (an image resized unevenly) but the scale used is one value for both, warn
        once per section, naming its file (windows are then cut square in image pixels, not in µm)."""
        ux, uy = self.um_per_px_xy
        if ux != uy or self.grid not in GRID_STEP or self.where in _warned_uneven:
            return
        fit = fit_grid(self.header.spots, self.grid, self.spot_pitch_um, self.where)
        if fit.anisotropy <= ISOTROPIC_WITHIN:
            return
        _warned_uneven.add(self.where)
        fx, fy = fit.um_per_px_xy
        log.warning("section %s: the image's scale differs between its axes on the %s grid of %g µm pitch (%.3f "
                    "µm/px along x, %.3f along y: %.2fx), while the scale taken from %s is one value for both "
                    "(%.3f µm/px): patch windows are square in image pixels, off by up to %.0f%% along one axis; "
                    "give um_per_px=<x>,<y> to cut each axis to its size in µm", self.where, self.grid,
                    self.spot_pitch_um, fx, fy, fit.anisotropy, self.scale_source, ux,
                    100 * (np.sqrt(fit.anisotropy) - 1))


def _per_axis(value) -> tuple[float, float]:
    if isinstance(value, (tuple, list, np.ndarray)):
        return float(value[0]), float(value[1])
    return float(value), float(value)


def parse_um_per_px(value, where: str) -> tuple[float, float] | None:
    """The ``um_per_px`` option: None, one positive number (both image axes), or two (x, y) as a sequence or
    the text 'x,y'."""
    if value is None:
        return None
    parts = value.replace(";", ",").split(",") if isinstance(value, str) else \
        list(value) if isinstance(value, (tuple, list)) else [value]
    try:
        numbers = [float(v) for v in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (1, 2) or not all(np.isfinite(n) and n > 0 for n in numbers):
        raise DataError(f"{where}: option um_per_px={value!r} is not one positive number (µm per image pixel) "
                        f"or two, x,y (one per image axis)")
    return (numbers[0], numbers[-1])


def data_root(root, name: str) -> Path:
    """The given root, else ``<data dir>/<name>`` (``STBENCH_DATA`` or the user cache)."""
    if root is not None:
        return Path(root).expanduser()
    from bench.data.locations import resolve_data_dir

    return resolve_data_dir(None) / name


def spot_anndata(X, obs: pd.DataFrame, genes, section_id: str, where: str, counts_from: str = "the counts",
                 fix: str = ""):
    """AnnData with raw counts and the spot table every loader must give (SPOT_COLUMNS, obsm['spatial']).

    ``counts_from`` names what was read as counts (e.g. "X", "layers['counts']") and ``fix`` how to read
    another, for the message when the values are not whole numbers >= 0 (log-normalised data)."""
    import anndata as ad
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float64)
    values = X.data
    for bad, what in ((~np.isfinite(values), "non-finite (NaN or infinite)"), (values < 0, "negative")):
        if bad.any():  # which kind, and where: the first such spot and gene
            first = int(np.flatnonzero(bad)[0])
            row = int(np.searchsorted(X.indptr, first, side="right") - 1)
            spot, gene = obs.index[row], genes[int(X.indices[first])]
            raise DataError(f"{where}: {counts_from} (read as the raw counts of section {section_id}) has "
                            f"{int(bad.sum())} {what} value(s), the first {values[first]:g} at spot {spot!r}, gene "
                            f"{gene!r}; expected raw counts >= 0{fix}")
    fractional = values != np.round(values)
    if fractional.any():
        raise DataError(f"{where}: {counts_from} (read as the raw counts of section {section_id}) has values that "
                        f"are not whole numbers (e.g. {values[fractional][0]:g}; {int(fractional.sum())} of "
                        f"{values.size} stored values): normalised or log-transformed data, not raw counts{fix}")
    X = X.astype(np.float32)
    genes = pd.Index([str(g) for g in genes], name="gene")
    if not genes.is_unique:
        dup = genes[genes.duplicated()][0]
        raise DataError(f"{where}: gene {dup!r} appears more than once in the gene names of section {section_id}")
    obs = obs.copy()
    for column in ("pathology_label", "cluster_label"):
        if column not in obs:
            obs[column] = np.full(len(obs), np.nan, dtype=object)
    obs["array_x"] = obs["array_x"].astype(int)
    obs["array_y"] = obs["array_y"].astype(int)
    obs["pixel_x"] = obs["pixel_x"].astype(float)
    obs["pixel_y"] = obs["pixel_y"].astype(float)
    obs.index = pd.Index(obs.index.astype(str), name="spot")
    if not obs.index.is_unique:  # two spots of one name cannot be told apart in predictions or maps
        repeated = obs.index[obs.index.duplicated()]
        raise DataError(f"{where}: spot name {repeated[0]!r} appears more than once in section {section_id} "
                        f"({len(repeated)} repeated name(s), e.g. obs_names); each spot must be named once")
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm["spatial"] = obs[["pixel_x", "pixel_y"]].to_numpy(float)
    adata.uns["section_id"] = section_id
    return adata


def array_geometry(array_xy: np.ndarray) -> str:
    """"hex" when the array positions (x = column, y = row) can lie on Visium's hexagonal grid, where each row
    uses every other column, alternating (column + row is always even, or always odd); else "square". An ST
    "2k" array's checkerboard has one parity too: ``best_lattice`` tells the two apart by the pixels."""
    xy = np.asarray(array_xy, dtype=float)
    xy = xy[np.isfinite(xy).all(axis=1)].astype(np.int64)
    if len(xy) > 1 and len(np.unique(xy.sum(axis=1) % 2)) == 1 and len(np.unique(xy[:, 1])) > 1:
        return "hex"
    return "square"


def best_lattice(array_xy: np.ndarray, pixel_xy: np.ndarray, groups=None) -> tuple[str, dict[str, float]]:
    """Which lattice array positions of one parity are on ("hex": Visium's hexagonal grid; "square": a square
    grid of which every other position holds a spot, the checkerboard of an ST "2k" array), decided by how
    well the pixel positions fit each: (the geometry, each geometry's fitted ratio of its two axes' scales).

    A fit's scale ratio does not depend on the pitch; the right lattice fits with about 1 (an unevenly
    resized image with a little more), the wrong one with about sqrt(3) = 1.73. ``groups``: each spot's
    section, for a file holding several (each section is fitted alone; a geometry scores its worst)."""
    array_xy = np.asarray(array_xy, dtype=float)
    pixel_xy = np.asarray(pixel_xy, dtype=float)
    groups = np.zeros(len(array_xy), dtype=int) if groups is None else np.asarray(groups)
    ratios = {}
    for geometry in ("hex", "square"):
        worst = 1.0
        for group in pd.unique(groups):
            mine = groups == group
            spots = pd.DataFrame({"array_x": array_xy[mine, 0], "array_y": array_xy[mine, 1],
                                  "pixel_x": pixel_xy[mine, 0], "pixel_y": pixel_xy[mine, 1]})
            try:
                worst = max(worst, fit_grid(spots, geometry, 1.0).anisotropy)
            except DataError:  # too few spots to fit: this section has no say
                pass
        ratios[geometry] = worst
    return min(ratios, key=ratios.get), ratios


def grid_from_pixels(px: np.ndarray) -> np.ndarray:
    """Integer grid coordinates for spots given only pixel positions (nearest-neighbour spacing = 1 step)."""
    from scipy.spatial import cKDTree

    if len(px) < 2:
        return np.zeros((len(px), 2), dtype=int)
    dist, _ = cKDTree(px).query(px, k=2)
    step = float(np.median(dist[:, 1])) or 1.0
    return np.rint((px - px.min(axis=0)) / step).astype(int)


def to_rgb_uint8(pixels: np.ndarray, source: str) -> np.ndarray:
    """(H, W, 3) uint8 from the usual stored forms: uint8 or float in [0, 1], grey, RGBA."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise DataError(f"{source}: expected an (H, W, 3) image, got shape {pixels.shape}")
    pixels = pixels[:, :, :3]
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    if np.issubdtype(pixels.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(pixels)) <= 1.0 else 1.0
        return np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)
    if pixels.dtype == np.uint16:
        return (pixels // 257).astype(np.uint8)
    return np.clip(pixels, 0, 255).astype(np.uint8)


class H5Image:
    """An image stored as an array in an HDF5 file; the shape is read from the header, pixels on demand."""

    def __init__(self, path: Path, key: str):
        self.path = Path(path)
        self.key = key
        self.source = f"{self.path}:{key}"

    def _dataset(self, fh):
        if self.key not in fh:
            raise DataError(f"{self.path}: no image at {self.key}")
        return fh[self.key]

    def size(self) -> tuple[int, int]:
        import h5py

        with h5py.File(self.path, "r") as fh:
            shape = self._dataset(fh).shape
        return int(shape[1]), int(shape[0])

    def read(self) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as fh:
            return to_rgb_uint8(self._dataset(fh)[()], self.source)

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        import h5py

        with h5py.File(self.path, "r") as fh:
            data = self._dataset(fh)
            step = max(1, int(np.ceil(max(data.shape[:2]) / max_side)))
            return to_rgb_uint8(data[::step, ::step], self.source), 1.0 / step

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{self.path.resolve()}:{self.key}:{st.st_size}:{int(st.st_mtime)}"


class _TiffWindows:
    """Array-like view of a TIFF's full-resolution level: ``shape`` from the header, and slicing
    ``[y0:y1, x0:x1]`` decodes only the tiles (or strips) under the window. Patch cutting only slices, so
    a whole-slide image is never held in memory."""

    def __init__(self, path: Path, source: str):
        import tifffile
        import zarr

        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        store = series.aszarr(level=0)
        self._array = zarr.open(store, mode="r")
        axes = series.axes
        if axes not in ("YXS", "YX", "CYX"):
            self._tif.close()
            raise DataError(f"{source}: expected an RGB image (axes YXS), found axes {axes} shape {series.shape}")
        self._axes = axes
        self.source = source
        height, width = (series.shape[1:] if axes == "CYX" else series.shape[:2])
        self.shape = (int(height), int(width), 3)
        self.ndim = 3
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, index):
        if not (isinstance(index, tuple) and len(index) == 2 and all(isinstance(i, slice) for i in index)):
            raise TypeError("a slide is read by [y0:y1, x0:x1] windows only")
        rows, cols = index
        if self._axes == "CYX":
            block = np.moveaxis(np.asarray(self._array[:, rows, cols]), 0, -1)
        else:
            block = np.asarray(self._array[rows, cols])
        return to_rgb_uint8(block, self.source)

    def __array__(self, dtype=None, copy=None):  # whole-image access: only for small images
        return self[0:self.shape[0], 0:self.shape[1]]

    def close(self):
        self._tif.close()

    def __del__(self):
        try:
            self._tif.close()
        except Exception:
            pass


class TiffSlide:
    """A (whole-slide) TIFF read lazily with tifffile: size from the header; ``read`` returns a window
    reader (``shape`` and ``[y0:y1, x0:x1]`` slicing), not the pixels, so patches are cut tile by tile."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.source = str(self.path)

    def _open(self) -> _TiffWindows:
        if not self.path.is_file():
            raise DataError(f"{self.path}: image file not found")
        try:
            return _TiffWindows(self.path, self.source)
        except DataError:
            raise
        except ImportError as exc:
            raise DataError(f"{self.path}: reading whole-slide TIFFs needs the tifffile package "
                            f"(pip install tifffile)") from exc
        except UNREADABLE_FILE as exc:
            raise DataError(f"{self.path}: not a readable TIFF ({exc})") from exc

    def size(self) -> tuple[int, int]:
        windows = self._open()
        try:
            return windows.shape[1], windows.shape[0]
        finally:
            windows.close()

    def read(self):
        return self._open()

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float] | None:
        """The slide's smallest pyramid level when it is at most ``max_side`` * 4 pixels a side (else None:
        a flat whole-slide TIFF is never decoded whole for a check)."""
        import tifffile

        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[0]
            levels = getattr(series, "levels", [series])
            full_width = levels[0].shape[1] if series.axes != "CYX" else levels[0].shape[2]
            small = levels[-1]
            if len(levels) < 2 or max(small.shape[:3]) > 4 * max_side:
                return None
            pixels = small.asarray()
        if series.axes == "CYX":
            pixels = np.moveaxis(pixels, 0, -1)
        width = pixels.shape[1]
        return to_rgb_uint8(pixels, self.source), width / full_width

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"{self.path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def detect_format(path) -> str:
    """The dataset module that reads the data at ``path``: h5ad, visium, hest, cscc or her2st."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix == ".h5ad":
            return "h5ad"
        if path.suffix == ".csv":
            return "visium"  # a sample sheet
    elif path.is_dir():
        if (path / "st").is_dir():
            return "hest"
        if (path / "samples.csv").is_file():
            return "visium"
        if (path / "data" / "ST-cnts").is_dir():
            return "her2st"
        if any(path.glob("*_stdata.tsv*")):
            return "cscc"
        if any(path.glob("*.h5ad")):
            return "h5ad"
    else:
        raise DataError(f"{path}: file or folder not found")
    raise DataError(f"{path}: not a layout stbench reads (an .h5ad file or folder of them; a Visium sample sheet "
                    f"or folder with samples.csv; a HEST folder with st/; GSE144240 *_stdata.tsv files; her2st)")


def load_path(path, **options):
    """Load the data at ``path`` with the module its layout calls for (``detect_format``); ``options`` are
    the loader's keyword arguments, or ``--data-option`` strings (converted and checked by name)."""
    from bench.data.catalogue import get_dataset_module
    from bench.data.locations import parse_data_options

    module = get_dataset_module(detect_format(path))
    return module.load(Path(path).expanduser(), **parse_data_options(module, options))


def describe_section(section) -> str:
    """One line for ``data info``: patient, spots, genes, µm/px or expression only, and which labels it has.
    Reads the section's header (spot table and gene count), not its counts, where the loader can."""
    header = section.header
    spots = header.spots
    if section.has_image:
        ux, uy = section.um_per_px_xy
        image = f"image {ux:.4f} µm/px" if ux == uy else f"image {ux:.4f} x {uy:.4f} µm/px (x, y)"
    else:
        image = "expression only"
    labels = [c.replace("_label", "") for c in ("pathology_label", "cluster_label") if spots[c].notna().any()]
    return (f"{section.section_id:<6} patient {section.patient_id:<4} {len(spots):>5} spots {header.n_genes:>6} genes  "
            f"{image}  labels: {', '.join(labels) or 'none'}")


def describe_labels(dataset) -> list[str]:
    """Lines for ``data info`` on the spot labels that score spatial domains (ARI/NMI): where the loader
    found them; else, when it names candidate columns (``attrs['label_candidates']``), those columns and the
    options that read them, so the domain scores are never silently empty."""
    found = dataset.attrs.get("labels_from") or {}
    if found:
        return ["Labels: " + "; ".join(f"{kind}: {where}" for kind, where in found.items())]
    candidates = dataset.attrs.get("label_candidates")
    if candidates is None:
        return [dataset.attrs["label_hint"]] if dataset.attrs.get("label_hint") else []
    if not candidates:
        return ["Labels: none (no spatial-domain ARI/NMI; no obs column looks like labels)"]
    listed = ", ".join(f"{column} ({n} values)" for column, n in list(candidates.items())[:8])
    more = f" and {len(candidates) - 8} more" if len(candidates) > 8 else ""
    return [f"Labels: none read, so no spatial-domain ARI/NMI. Columns that could be labels: {listed}{more}; use "
            f"one with --data-option pathology_key=<column> (the pathologist's domains) or cluster_key=<column> "
            f"(expression clusters)"]
