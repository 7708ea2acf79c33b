"""Any AnnData ``.h5ad`` file (or folder of them) in the scanpy spatial convention.

    obsm["spatial"]                               full-resolution pixel x, y of each spot
    uns["spatial"][<library>]["images"][<key>]    H&E image (usually "hires"), uint8 or float in [0, 1]
    uns["spatial"][<library>]["scalefactors"]     tissue_<key>_scalef, spot_diameter_fullres
    obs["array_col"], obs["array_row"]            grid position (Visium names; array_x/array_y also read)
    X (or layers[<counts_layer>])                 raw counts (whole numbers), spots x genes

Options (keyword arguments of ``load``; ``--data-option KEY=VALUE`` on the command line):
``section_key`` (obs column naming the section; default: one section per file, named after its library or
file), ``patient_key`` (obs column; default ``auto``: a column named patient, patient_id, donor or sample
if there is one, else each section is its own patient; ``none``: each section its own patient),
``pathology_key`` / ``cluster_key`` (obs columns with labels; default ``auto``: the first column named as in
``PATHOLOGY_COLUMNS`` / ``CLUSTER_COLUMNS``, e.g. pathology or annotation / cluster or leiden; ``none``: no
labels; a file without the column has no labels),
``library_key`` (obs column naming the uns["spatial"] library of each spot; default: the only library, or
the one named like the section), ``image_key`` ("hires"), ``counts_layer`` (default: X), ``grid`` (the
array: ``visium`` hexagonal 100 µm, ``st`` square 200 µm, ``st-2k`` square 100 µm; default ``auto``:
square when array_row + array_col takes both parities, which needs the scale factors' spot diameter or
``grid=st``/``st-2k``; with one parity, Visium's grid or an ST 2k checkerboard, whichever the pixel positions
fit best, logged), ``spot_pitch_um`` (centre-to-centre distance of
neighbouring spots; overrides the grid's), ``spot_diameter_um`` (55, Visium) used with
``spot_diameter_fullres`` for µm/px; without it µm/px is fitted to the spot grid. ``um_per_px`` (µm per
image pixel, one value or ``x,y`` per image axis, for the image as read: it wins over both, and the grid fit
then only warns where it disagrees).

The image is read from the file only when patches are cut; counts are read on first access.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.dataset import PATIENT_IS_SECTION, DataError, Dataset
from bench.data.formats import (
    ARRAYS,
    VISIUM_SPOT_DIAMETER_UM,
    H5Image,
    ScaledSection,
    array_geometry,
    best_lattice,
    data_root,
    grid_from_pixels,
    parse_um_per_px,
    spot_anndata,
)

log = logging.getLogger(__name__)

NAME = "h5ad"
# Reads the user's files at <data dir>/h5ad/ (or the root given to load); nothing to download.
USER_DATA = True
CITATION = "AnnData .h5ad files in the scanpy spatial convention (user data)."
# Columns taken as the patient when patient_key is "auto" (the first one present, in this order).
PATIENT_COLUMNS = ("patient", "patient_id", "donor", "sample")
# Columns taken as labels when pathology_key / cluster_key is "auto" (the first present in any file): the
# pathologist's (or an atlas's) domains, and clusters of the expression (Seurat, scanpy's leiden/louvain).
PATHOLOGY_COLUMNS = ("pathology", "pathology_label", "annotation", "annotations", "ground_truth", "layer_guess",
                     "domain", "region")
CLUSTER_COLUMNS = ("cluster", "clusters", "cluster_label", "seurat_clusters", "leiden", "louvain")
# A column with this many distinct values at most (and fewer than half the spots) could hold labels.
MAX_LABEL_VALUES = 50
GRID_CHOICES = ("auto", *ARRAYS)
GRID_COLUMNS = [("array_col", "array_row"), ("array_x", "array_y")]


def load(root=None, *, section_key: str | None = None, patient_key: str | None = "auto",
         pathology_key: str | None = "auto", cluster_key: str | None = "auto", library_key: str | None = None,
         image_key: str = "hires", counts_layer: str | None = None, grid: str = "auto",
         spot_diameter_um: float = VISIUM_SPOT_DIAMETER_UM, spot_pitch_um: float | None = None,
         um_per_px: str | None = None) -> Dataset:
    root = data_root(root, NAME)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(root.glob("*.h5ad"))
        if not files:
            raise DataError(f"{root}: no .h5ad files in this folder")
    else:
        raise DataError(f"{root}: file or folder not found (expected an .h5ad file or a folder of them)")
    if grid not in GRID_CHOICES:
        raise DataError(f"{root}: option grid={grid!r} is not one of {', '.join(GRID_CHOICES)}")
    scale = parse_um_per_px(um_per_px, f"{root}")
    obs_of = {path: _read_obs(path) for path in files}
    # A label column may be missing from some files (her2st labels one section per patient), not from all.
    labels, labels_from = {}, {}
    for option, key, names in (("pathology_key", pathology_key, PATHOLOGY_COLUMNS),
                               ("cluster_key", cluster_key, CLUSTER_COLUMNS)):
        if key is not None and str(key).lower() == "none":
            key = None
        elif key == "auto":
            key = next((c for c in names if any(c in obs.columns for obs in obs_of.values())), None)
            if key is not None:
                labels_from[option[:-len("_key")]] = f"obs column {key!r} (found by its name; option {option})"
        elif key is not None:
            labels_from[option[:-len("_key")]] = f"obs column {key!r} (option {option})"
        having = [path for path, obs in obs_of.items() if key is not None and key in obs.columns]
        if key is not None and not having:
            columns = ", ".join(obs_of[files[0]].columns)
            raise DataError(f"{files[0]}: obs has no column {key!r} (option {option}), nor does any other file; "
                            f"columns: {columns}")
        for path in files:
            if key is not None and path not in having:
                log.info("%s: no obs column %r (option %s); its sections have no such labels", path, key, option)
        labels[option] = key
    options = dict(section_key=section_key, patient_key=patient_key, library_key=library_key,
                   image_key=image_key, counts_layer=counts_layer, grid=grid, spot_diameter_um=spot_diameter_um,
                   spot_pitch_um=spot_pitch_um, um_per_px=scale)
    sections = {}
    for path in files:
        obs = obs_of[path]
        keys = {o: (k if k in obs.columns else None) for o, k in labels.items()}
        for section in file_sections(path, obs=obs, **keys, **options):
            if section.section_id in sections:
                raise DataError(f"{path}: section {section.section_id!r} also appears in another file")
            sections[section.section_id] = section
    attrs = {"labels_from": labels_from}
    if not labels_from:  # say which columns could be labels, and how to use them (``describe_labels``)
        used = {section_key, library_key, *PATIENT_COLUMNS, patient_key}
        attrs["label_candidates"] = label_candidates(obs_of.values(), used)
    return Dataset(name=NAME, sections=sections, citation=CITATION, attrs=attrs)


def label_candidates(tables, used=()) -> dict[str, int]:
    """obs columns that could hold spot labels: categorical, text, boolean or whole-number columns with 2 to
    ``MAX_LABEL_VALUES`` distinct values, fewer than half the spots; column -> its most distinct values in a
    file. Grid, position and patient columns are left out."""
    skip = {*(c for pair in GRID_COLUMNS for c in pair), "in_tissue", "barcode", "x", "y", "pixel_x", "pixel_y",
            *(u for u in used if isinstance(u, str))}
    out: dict[str, int] = {}
    for obs in tables:
        for column in obs.columns:
            values = obs[column]
            if column in skip or not (isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object
                                      or pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values)
                                      or pd.api.types.is_string_dtype(values)):
                continue
            n = int(values.nunique(dropna=True))
            if 2 <= n <= MAX_LABEL_VALUES and n < len(values) / 2:
                out[str(column)] = max(out.get(str(column), 0), n)
    return out


def _read_obs(path: Path) -> pd.DataFrame:
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as fh:
            if "obs" not in fh:
                raise DataError(f"{path}: not an AnnData file (no obs)")
            obs = read_elem(fh["obs"])
    except OSError as exc:
        raise DataError(f"{path}: cannot be read as an .h5ad (HDF5) file ({exc})") from exc
    if len(obs) == 0:
        raise DataError(f"{path}: no spots (obs has no rows); remove the file or write its spots")
    return obs


def _scalefactors(path: Path) -> dict[str, dict]:
    """library id -> scalefactors dict, and which images each library has (under key '_images')."""
    import h5py
    from anndata.io import read_elem

    out = {}
    with h5py.File(path, "r") as fh:
        if "uns/spatial" not in fh:
            return out
        for lib, group in fh["uns/spatial"].items():
            factors = read_elem(group["scalefactors"]) if "scalefactors" in group else {}
            factors = {k: float(np.asarray(v)) for k, v in factors.items()}
            factors["_images"] = list(group["images"].keys()) if "images" in group else []
            out[str(lib)] = factors
    return out


def _column(obs: pd.DataFrame, key: str | None, path: Path, option: str):
    if key is None:
        return None
    if key not in obs.columns:
        raise DataError(f"{path}: obs has no column {key!r} (option {option}); columns: {', '.join(obs.columns)}")
    return obs[key]


def _patient_column(obs: pd.DataFrame, patient_key: str | None, path: Path) -> tuple[str | None, bool]:
    """(the obs column holding patients or None, whether it was found by name rather than given)."""
    if patient_key is None or str(patient_key).lower() == "none":
        return None, False
    if patient_key != "auto":
        _column(obs, patient_key, path, "patient_key")
        return patient_key, False
    found = [c for c in PATIENT_COLUMNS if c in obs.columns]
    if not found:
        return None, False
    if len(found) > 1:
        log.info("%s: obs columns %s could each name the patient; using %r (option patient_key to choose)",
                 path, ", ".join(found), found[0])
    return found[0], True


def _grid(obs: pd.DataFrame, grid: str, spot_pitch_um: float | None, path: Path,
          sections: pd.Series | None = None) -> tuple[str, float | None, str]:
    """(geometry, pitch in µm or None when unknown, the array's name for messages) of one file's spots."""
    columns = next(((cx, cy) for cx, cy in GRID_COLUMNS if cx in obs.columns and cy in obs.columns), None)
    named = ARRAYS.get(grid, (None, None))
    if columns is None:  # neighbouring spots are one pitch apart on every grid: the pitch is all it takes
        return "pixels", spot_pitch_um or named[1], "pixel positions only"
    if grid != "auto":
        return named[0], spot_pitch_um or named[1], grid
    array_xy = obs[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    if array_geometry(array_xy) == "square":  # both parities: no hexagonal grid has that
        return "square", spot_pitch_um, "square (ST)"
    # One parity: Visium's hexagonal grid, or the checkerboard of an ST "2k" array. The pixels decide.
    pixels = _read_pixels(path)
    if pixels is None or not np.isfinite(array_xy).all():
        return "hex", spot_pitch_um or ARRAYS["visium"][1], "visium"
    geometry, ratios = best_lattice(array_xy, pixels, None if sections is None else sections.to_numpy())
    name = "visium" if geometry == "hex" else "st-2k"
    log.info("%s: grid=auto: its array positions use every other position (one parity of column + row) and "
             "its pixel positions fit a %s grid best (axes' scales %.2fx apart, against %.2fx as a %s grid): "
             "read as grid=%s (%s, %g µm pitch; option grid to choose another)", path, geometry, ratios[geometry],
             ratios[_OTHER[geometry]], _OTHER[geometry], name, geometry, spot_pitch_um or ARRAYS[name][1])
    return geometry, spot_pitch_um or ARRAYS[name][1], name


_OTHER = {"hex": "square", "square": "hex"}


def _read_pixels(path: Path) -> np.ndarray | None:
    """obsm['spatial'] (pixel x, y of each spot), read alone; None when the file has none (its sections are
    then refused where their counts are read)."""
    import h5py

    with h5py.File(path, "r") as fh:
        if "obsm/spatial" not in fh or not isinstance(fh["obsm/spatial"], h5py.Dataset):
            return None
        xy = np.asarray(fh["obsm/spatial"][...], dtype=float)
    return xy[:, :2] if xy.ndim == 2 and xy.shape[1] >= 2 else None


def file_sections(path: Path, *, section_key, patient_key, pathology_key, cluster_key, library_key, image_key,
                  counts_layer, spot_diameter_um, spot_pitch_um, grid: str = "auto", obs=None,
                  patient_id: str | None = None, patient_from: str = "", section_id: str | None = None, image=None,
                  image_um_per_px=None, scale_source: str = "", um_per_px: tuple[float, float] | None = None
                  ) -> list[ScaledSection]:
    """The sections of one .h5ad file. ``patient_id``/``section_id`` override the obs columns (HEST);
    ``image`` (a SlideImage in full-resolution pixels) overrides the embedded image; ``um_per_px`` (x, y) is
    the user's scale of the image, which wins over every other (the checks then only warn)."""
    path = Path(path)
    obs = _read_obs(path) if obs is None else obs
    given_scale = um_per_px
    libraries = _scalefactors(path)
    sec_col = _column(obs, section_key, path, "section_key")
    patient_column, by_name = (None, False) if patient_id is not None else _patient_column(obs, patient_key, path)
    pat_col = obs[patient_column] if patient_column is not None else None
    lib_col = _column(obs, library_key, path, "library_key")
    _column(obs, pathology_key, path, "pathology_key")
    _column(obs, cluster_key, path, "cluster_key")
    geometry, pitch, array_name = _grid(obs, grid, spot_pitch_um, path, sec_col)
    if sec_col is not None:
        ids = sec_col.astype(str)
    else:
        default = section_id or (next(iter(libraries)) if len(libraries) == 1 else path.stem)
        ids = pd.Series(default, index=obs.index)
    out = []
    for sid in pd.unique(ids):
        mask = (ids == sid).to_numpy()
        if patient_id is not None:
            patient, source = patient_id, patient_from
        elif pat_col is not None:
            values = pd.unique(pat_col[mask].astype(str))
            if len(values) != 1:
                fix = ("give section_key=<column> if the file holds several sections, patient_key=<column> "
                       "for another column, or patient_key=none" if by_name else "a section comes from one patient")
                raise DataError(f"{path}: section {sid} has spots of {len(values)} patients in obs column "
                                f"{patient_column!r}{' (found by its name)' if by_name else ''} "
                                f"({', '.join(values[:5])}); {fix}")
            patient = str(values[0])
            source = f"obs column {patient_column!r}" + (" (found by its name; option patient_key)" if by_name else "")
        else:
            patient, source = str(sid), PATIENT_IS_SECTION
        if lib_col is not None:
            libs = pd.unique(lib_col[mask].astype(str))
            if len(libs) != 1:
                raise DataError(f"{path}: section {sid} has spots of several libraries in obs column "
                                f"{library_key!r}; expected one")
            library = str(libs[0])
        elif len(libraries) == 1:
            library = next(iter(libraries))
        else:
            library = str(sid) if str(sid) in libraries else None
        if library is not None and library not in libraries:
            raise DataError(f"{path}: uns['spatial'] has no library {library!r} (section {sid}); libraries: "
                            f"{', '.join(libraries) or 'none'}")
        factors = libraries.get(library, {}) if library is not None else {}
        section_image, scale, image_um_per_px_or_none, factor_source = None, 1.0, None, scale_source
        if image is not None:
            section_image, image_um_per_px_or_none = image, image_um_per_px
        elif library is not None and image_key in factors.get("_images", []):
            scale_field = f"tissue_{image_key}_scalef"
            if scale_field not in factors:
                raise DataError(f"{path}: uns['spatial'][{library!r}]['scalefactors'] lacks {scale_field!r}, "
                                f"needed to place spots on the {image_key!r} image")
            scale = factors[scale_field]
            section_image = H5Image(path, f"uns/spatial/{library}/images/{image_key}")
            factor_source = f"uns['spatial'][{library!r}]['scalefactors'] (spot_diameter_fullres, {scale_field})"
        given = section_image is not None and given_scale is not None
        if given:
            section_scale, section_source = given_scale, "the option um_per_px"
        else:
            section_scale, section_source = image_um_per_px_or_none, scale_source
        if section_image is not None and section_scale is None:
            if "spot_diameter_fullres" in factors:
                section_scale = spot_diameter_um / (factors["spot_diameter_fullres"] * scale)
                section_source = factor_source
            elif pitch is None:
                raise DataError(f"{path}: uns['spatial'][{library!r}]['scalefactors'] lacks "
                                f"'spot_diameter_fullres' and the spots' array ({array_name}) does not say its "
                                f"pitch; give grid=st (200 µm), grid=st-2k (100 µm), grid=visium or "
                                f"spot_pitch_um=<µm between neighbouring spots> to fit µm/px to the spot grid, "
                                f"or the image's scale with um_per_px=<µm per pixel> (or <x>,<y>)")
        hint = (f"a {array_name} grid of {pitch:g} µm pitch; options grid, spot_pitch_um, or um_per_px for the "
                f"image's scale" if pitch else None)
        read = lambda sid=sid, mask=mask, scale=scale: _read_section(  # noqa: E731
            path, str(sid), mask, scale, counts_layer, pathology_key, cluster_key, geometry)
        out.append(ScaledSection(section_id=str(sid), patient_id=patient, load_counts=read, image=section_image,
                                 spot_pitch_um=pitch or 0.0, grid=geometry, patient_from=source,
                                 fixed_um_per_px=section_scale,
                                 scale_source=section_source or "the scale factors", grid_hint=hint,
                                 scale_given=given))
    return out


@lru_cache(maxsize=4)
def _read_file(path: Path):
    import warnings

    import anndata as ad

    try:
        with warnings.catch_warnings():
            # Repeated spot or gene names are the suite's own one-line error (spot_anndata), not anndata's
            # two-line warning before it.
            warnings.filterwarnings("ignore", message=r".* names are not unique")
            return ad.read_h5ad(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as an .h5ad file ({exc})") from exc


def _read_section(path: Path, sid: str, mask: np.ndarray, scale: float, counts_layer, pathology_key,
                  cluster_key, geometry: str = "square"):
    adata = _read_file(path)
    if "spatial" not in adata.obsm:
        raise DataError(f"{path}: obsm has no 'spatial' (pixel x, y of each spot)")
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[mask, :2] * scale
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            raise DataError(f"{path}: layers has no {counts_layer!r} (option counts_layer); layers: "
                            f"{', '.join(adata.layers) or 'none'}")
        X, counts_from, fix = adata.layers[counts_layer][mask], f"layers[{counts_layer!r}]", ""
    else:
        layers = list(adata.layers)
        X, counts_from = adata.X[mask], "X"
        fix = (f"; read raw counts from a layer with counts_layer=<name> (layers: {', '.join(layers)})" if layers
               else "; put the raw counts in X or a layer (option counts_layer)")
    log.debug("%s: section %s counts read from %s", path, sid, counts_from)
    src = adata.obs.loc[mask]
    obs = pd.DataFrame(index=src.index.astype(str))
    found = next(((cx, cy) for cx, cy in GRID_COLUMNS if cx in src.columns and cy in src.columns), None)
    if found is not None and geometry != "pixels":
        grid = src[list(found)].to_numpy()
        if not np.isfinite(grid.astype(float)).all():
            raise DataError(f"{path}: obs columns {found[0]}/{found[1]} have missing values in section {sid}")
        obs["array_x"], obs["array_y"] = grid[:, 0].astype(int), grid[:, 1].astype(int)
    else:
        grid = grid_from_pixels(xy)
        obs["array_x"], obs["array_y"] = grid[:, 0], grid[:, 1]
    obs["pixel_x"], obs["pixel_y"] = xy[:, 0], xy[:, 1]
    for column, key in (("pathology_label", pathology_key), ("cluster_label", cluster_key)):
        if key is not None:
            obs[column] = np.array([np.nan if pd.isna(v) else str(v) for v in src[key].astype(object)],
                                   dtype=object)
    return spot_anndata(X, obs, adata.var_names, sid, str(path), counts_from=counts_from, fix=fix)
