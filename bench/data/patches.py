"""Patch store: square H&E patches centred on each spot, cut once and cached on disk.

A patch is a window around the spot resampled to ``px`` pixels. The window is given either in the image's
own pixels (``window_px``: the published crop, e.g. 224 px of the full-resolution image, whatever its
µm/px) or physically (``window_um`` microns, so data at any resolution gives the same field of view).
The methods' paper profiles take the published pixel crop: 224 px (112 px for the whole-slide methods),
which on her2st (0.687 µm/px from the grid fit, neighbouring spots ~291 px = 200 µm apart) is ~154 µm.
The 165 µm default of ``window_um`` is that crop at the scale her2st was first estimated at (~0.73
µm/px): 7% too wide.

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

from bench.data.dataset import DataError, OutputError, Section, check_spots_on_image
from bench.errors import InputError

log = logging.getLogger(__name__)
OFF_IMAGE_POLICIES = ("pad", "error")
PAD_VALUE = 255  # white, like the glass around the tissue
# A window resampled up by this factor or more is blurred, not detailed: warn (a hires image given for a
# method that wants 224 px of 165 µm, e.g. Visium's ~3.5 µm/px hires PNG).
UPSAMPLE_WARN = 2.0
# A native pixel crop (``window_px``) on an image coarser than this is not the published field of view: warn.
COARSE_UM_PER_PX = 2.0
_FORMAT_VERSION = 1  # bump when the cutting rule changes, so stale caches are not reused


@dataclass(frozen=True)
class PatchSpec:
    window_um: float = 165.0
    px: int = 224
    # The window's side in the image's own pixels (the published crop, no resampling when it equals px);
    # None: ``window_um`` sets it from each section's µm/px.
    window_px: int | None = None
    # "pad": windows that run off the image edge are filled with white, and counted;
    # "error": such a spot stops the run with an error naming it.
    # A spot whose centre lies outside the image is an error under both (bench.data.check_spots_on_image).
    off_image: str = "pad"

    def __post_init__(self):
        if self.off_image not in OFF_IMAGE_POLICIES:
            raise InputError(f"off_image must be one of {OFF_IMAGE_POLICIES}, got {self.off_image!r}")
        if self.window_um <= 0 or self.px <= 0:
            raise InputError(f"window_um and px must be positive, got {self.window_um}, {self.px}")
        if self.window_px is not None and (isinstance(self.window_px, bool) or not isinstance(self.window_px, int)
                                           or self.window_px <= 0):
            raise InputError(f"window_px must be a positive whole number of image pixels or None, "
                             f"got {self.window_px!r}")


@dataclass
class PatchInfo:
    section_id: str
    n_spots: int
    window_px: int  # along image x
    um_per_px: float  # along image x
    n_padded: int
    source: str
    # Along image y, where the image's two axes differ in scale (None: the same as along x).
    window_px_y: int | None = None
    um_per_px_y: float | None = None


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
        # Decoding and the spot checks happen before anything is written: bad input leaves no file, and an
        # OSError from reading the image is not mistaken for a full cache.
        cutter = _Cutter(section, spec)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                # Rows are cut and written a block at a time, so a section's patches are never all in
                # memory (a 25,000-spot section at 224 px would be 3.8 GB).
                np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                           "shape": cutter.shape})
                for block in cutter.blocks():
                    _save_rows(fh, block)
            info = cutter.info()
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
        return self.cache_dir / "patches" / dataset_name / f"{self.key(dataset_name, section, spec)}.npy"

    def key(self, dataset_name: str, section: Section, spec: PatchSpec) -> str:
        """The name of a section's patch file: section, window, size and a hash of everything they depend on
        (the image, the spots and their positions), so other data never reuses a cache entry."""
        if section.image is None:
            raise DataError(f"section {section.section_id} of {dataset_name} has no image; "
                            "it can be used for expression only")
        obs = section.counts.obs
        # The window in image pixels is part of the key: a new µm/px (another estimate, other scale factors)
        # cuts other pixels for the same window in µm, so it must never reuse the old patches. A square
        # window keeps the key it always had; one that differs along x and y is keyed by both sides.
        wx, wy = window_pixels_xy(spec, section.um_per_px_xy)
        window_px = wx if wx == wy else f"{wx}x{wy}"
        key = hashlib.sha256()
        key.update(json.dumps([_FORMAT_VERSION, dataset_name, section.section_id, asdict(spec), window_px,
                               section.image.fingerprint(), list(obs.index)]).encode())
        key.update(obs[["pixel_x", "pixel_y"]].to_numpy(np.float64).tobytes())
        window = "native" if spec.window_px is not None else f"{spec.window_um:g}um"
        return f"{section.section_id}-{window}-{window_px}src-{spec.px}px-{key.hexdigest()[:12]}"


def window_pixels(spec: PatchSpec, um_per_px: float) -> int:
    """The side of a spot's window in image pixels."""
    if spec.window_px is not None:  # the published crop: image pixels as they are
        return spec.window_px
    return max(1, int(round(spec.window_um / um_per_px)))


def _window_text(spec: PatchSpec) -> str:
    return f"{spec.window_px} px (native)" if spec.window_px is not None else f"{spec.window_um:g} µm"


def window_pixels_xy(spec: PatchSpec, um_per_px_xy: tuple[float, float]) -> tuple[int, int]:
    """A spot's window in image pixels along x and y: ``window_um`` along each, at each axis's scale (an image
    resized unevenly has two)."""
    return window_pixels(spec, um_per_px_xy[0]), window_pixels(spec, um_per_px_xy[1])


def cut_patches(section: Section, spec: PatchSpec) -> tuple[np.ndarray, PatchInfo]:
    """All of a section's patches in memory (small data, tests); the store streams them to disk instead."""
    cutter = _Cutter(section, spec)
    out = np.empty(cutter.shape, dtype=np.uint8)
    start = 0
    for block in cutter.blocks():
        out[start:start + len(block)] = block
        start += len(block)
    return out, cutter.info()


def _save_rows(fh, block: np.ndarray) -> None:
    """Append rows of patches to an open ``.npy`` file (C order, so the bytes are the rows in order)."""
    fh.write(np.ascontiguousarray(block).data)


class _Cutter:
    """Cuts one section's patches in blocks of rows, after decoding its image once."""

    BLOCK_BYTES = 32 << 20  # rows per block: ~32 MB, whatever the patch size

    def __init__(self, section: Section, spec: PatchSpec):
        check_spots_on_image(section)  # before decoding: a mismatched image is refused cheaply
        self.section, self.spec = section, spec
        self.image = section.image.read()
        # µm per pixel along image x and y: the same unless the image was resized unevenly (then the window
        # is wx x wy image pixels, the same µm along each axis, resampled to a square patch). A native crop
        # (window_px) is window_px image pixels along both.
        self.um_per_px_xy = section.um_per_px_xy
        self.um_per_px = self.um_per_px_xy[0]
        self.window_px, self.window_px_y = window_pixels_xy(spec, self.um_per_px_xy)
        smallest = min(self.window_px, self.window_px_y)
        if spec.px >= UPSAMPLE_WARN * smallest:  # the method sees blur, not detail the image lacks
            log.warning("section %s: the %s window is %d px of the image (%.3f µm/px), upsampled %.1fx to "
                        "%d px; the image is coarse (a downscaled 'hires' image?): give the full-resolution image "
                        "if there is one", section.section_id, _window_text(spec), smallest, max(self.um_per_px_xy),
                        spec.px / smallest, spec.px)
        if spec.window_px is not None and self.um_per_px > COARSE_UM_PER_PX:
            log.warning("section %s: the native %d px window covers %.0f µm at %.3f µm/px; the published crops "
                        "assume a full-resolution scan (~0.5 µm/px): give that image, or set the method's "
                        "window_px to None to cut its window_um", section.section_id, spec.window_px,
                        spec.window_px * self.um_per_px, self.um_per_px)
        obs = section.counts.obs
        self.spot_ids = obs.index
        centres = obs[["pixel_x", "pixel_y"]].to_numpy(float)
        # The same rounding as a per-spot int(round(...)): numpy rounds half to even, like Python's round.
        self.x0 = np.round(centres[:, 0] - self.window_px / 2).astype(np.int64)
        self.y0 = np.round(centres[:, 1] - self.window_px_y / 2).astype(np.int64)
        height, width = self.image.shape[:2]
        self.off = ((self.x0 < 0) | (self.y0 < 0) | (self.x0 + self.window_px > width)
                    | (self.y0 + self.window_px_y > height))
        if self.off.any() and spec.off_image == "error":
            i = int(np.flatnonzero(self.off)[0])
            size = (f"{self.window_px}" if self.window_px == self.window_px_y
                    else f"{self.window_px}x{self.window_px_y}")
            raise DataError(f"{section.image.source}: the {size} px window of spot {obs.index[i]} "
                            f"(section {section.section_id}, pixel_x/pixel_y {centres[i, 0]:.1f}, "
                            f"{centres[i, 1]:.1f}) runs off the {width}x{height} image; use off_image='pad' "
                            f"to pad it")
        self.shape = (len(obs), spec.px, spec.px, 3)

    def info(self) -> PatchInfo:
        n_padded = int(self.off.sum())
        if n_padded:
            log.warning("section %s: %d of %d spot windows run off the image and were padded with white",
                        self.section.section_id, n_padded, len(self.off))
        square = self.window_px == self.window_px_y and self.um_per_px_xy[0] == self.um_per_px_xy[1]
        return PatchInfo(self.section.section_id, len(self.off), self.window_px, self.um_per_px, n_padded,
                         self.section.image.source, None if square else self.window_px_y,
                         None if square else self.um_per_px_xy[1])

    def blocks(self):
        """Yields (rows, px, px, 3) uint8 blocks, in spot order."""
        from concurrent.futures import ThreadPoolExecutor

        px = self.spec.px
        rows_per_block = max(1, self.BLOCK_BYTES // (px * px * 3))
        # Resampling is most of the cutting's cost; Pillow releases the GIL while it resamples, so threads
        # share it out. Without resampling, each patch is a plain copy of a view and threads would only slow it.
        threads = min(4, os.cpu_count() or 1) if (self.window_px, self.window_px_y) != (px, px) else 1
        with ThreadPoolExecutor(threads) as pool:
            for start in range(0, self.shape[0], rows_per_block):
                stop = min(start + rows_per_block, self.shape[0])
                block = np.empty((stop - start, px, px, 3), dtype=np.uint8)
                rows = range(start, stop)
                for j, patch in enumerate(pool.map(self._patch, rows) if threads > 1 else map(self._patch, rows)):
                    block[j] = patch
                yield block

    def _patch(self, i: int) -> np.ndarray:
        """Spot i's window at the patch size (Pillow's bilinear filter when the sizes differ)."""
        from PIL import Image

        crop, px = self._crop(i), self.spec.px
        if (self.window_px, self.window_px_y) == (px, px):
            return crop
        return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((px, px), Image.Resampling.BILINEAR))

    def _crop(self, i: int) -> np.ndarray:
        """The window of spot i (a view into the image when it lies inside; padded with white if not)."""
        x0, y0, w, h = int(self.x0[i]), int(self.y0[i]), self.window_px, self.window_px_y
        if not self.off[i]:
            return self.image[y0:y0 + h, x0:x0 + w]
        height, width = self.image.shape[:2]
        crop = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
        crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = self.image[sy0:sy1, sx0:sx1]
        return crop


class StackedPatches:
    """Several sections' memory-mapped patch arrays seen as one (n_spots, px, px, 3) array.

    Indexing reads only the rows asked for, so a fold's patches are never all loaded at once.
    ``np.asarray(stacked)`` materialises everything (fine for small data).

    Rows of a memory-mapped part are read from its file with ``pread``, not through the mapping: pages
    read through a mapping stay mapped, and count in the process's resident memory, until the kernel
    needs them back, and a read maps far more than it asks for (Linux maps whole page-cache folios around
    a faulting page). Measured: an epoch of random 32 px rows over 150,000 patches left ~440 MB resident
    through the mapping; read with pread, the page cache keeps them and the process holds none.
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
            index = np.array([int(index) + (len(self) if index < 0 else 0)])
            return self[index][0]
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        out = np.empty((len(rows),) + self.shape[1:], dtype=self.dtype)
        part_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for part in np.unique(part_of):
            positions = np.flatnonzero(part_of == part)
            local = rows[positions] - self.offsets[part]
            where = _file_position(self.parts[part])
            if where is None:  # an array in memory (tests, small data)
                out[positions] = self.parts[part][local]
            else:
                _pread_rows(*where, local, out, positions)
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


def _file_position(array: np.ndarray) -> tuple[str, int, int] | None:
    """(file, byte offset of row 0, bytes per row) of a C-ordered memory-mapped array; None otherwise."""
    import mmap

    mapping = getattr(array, "_mmap", None)
    if mapping is None or not array.flags.c_contiguous or getattr(array, "filename", None) is None:
        return None
    # np.memmap maps the file from its offset rounded down to the allocation granularity; the data's file
    # position is that plus the data's distance from the start of the mapping (right for views too).
    mapped_from = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY
    mapping_address = np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    row_bytes = array.strides[0]
    return array.filename, mapped_from + array.ctypes.data - mapping_address, row_bytes


def _pread_rows(filename: str, start: int, row_bytes: int, rows: np.ndarray, out: np.ndarray,
                positions: np.ndarray) -> None:
    """Read rows of a file-backed array into ``out[positions]`` (rows of ``out`` are C-contiguous)."""
    fd = os.open(filename, os.O_RDONLY)
    try:
        for row, position in zip(rows.tolist(), positions.tolist()):
            got = os.preadv(fd, [out[position]], start + row * row_bytes)
            if got != row_bytes:
                raise OSError(f"{filename}: short read of patch row {row} ({got} of {row_bytes} bytes)")
    finally:
        os.close(fd)
