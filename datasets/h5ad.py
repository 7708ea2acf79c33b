"""Any AnnData ``.h5ad`` file (or folder of them) in the scanpy spatial convention.

    obsm["spatial"]                               full-resolution pixel x, y of each spot
    uns["spatial"][<library>]["images"][<key>]    H&E image (usually "hires"), uint8 or float in [0, 1]
    uns["spatial"][<library>]["scalefactors"]     tissue_<key>_scalef, spot_diameter_fullres
    obs["array_col"], obs["array_row"]            grid position (Visium names; array_x/array_y also read)
    X (or layers[<counts_layer>])                 raw counts, spots x genes

Options (keyword arguments of ``load``): ``section_key`` (obs column naming the section; default: one
section per file, named after its library or file), ``patient_key`` (obs column; default: each section its
own patient), ``pathology_key`` / ``cluster_key`` (obs columns with labels), ``library_key`` (obs column
naming the uns["spatial"] library of each spot; default: the only library, or the one named like the
section), ``image_key`` ("hires"), ``counts_layer``, ``spot_diameter_um`` (55, Visium) used with
``spot_diameter_fullres`` for µm/px, ``spot_pitch_um`` (used instead when the scale factors have no spot
diameter).

The image is read from the file only when patches are cut; counts are read on first access.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.dataset import DataError, Dataset
from bench.data.formats import (
    VISIUM_SPOT_DIAMETER_UM,
    VISIUM_SPOT_PITCH_UM,
    H5Image,
    ScaledSection,
    data_root,
    grid_from_pixels,
    spot_anndata,
)

NAME = "h5ad"
# Reads the user's files at <data dir>/h5ad/ (or the root given to load); nothing to download.
USER_DATA = True
CITATION = "AnnData .h5ad files in the scanpy spatial convention (user data)."


def load(root=None, *, section_key: str | None = None, patient_key: str | None = None,
         pathology_key: str | None = None, cluster_key: str | None = None, library_key: str | None = None,
         image_key: str = "hires", counts_layer: str | None = None,
         spot_diameter_um: float = VISIUM_SPOT_DIAMETER_UM, spot_pitch_um: float | None = None) -> Dataset:
    root = data_root(root, NAME)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(root.glob("*.h5ad"))
        if not files:
            raise DataError(f"{root}: no .h5ad files in this folder")
    else:
        raise DataError(f"{root}: file or folder not found (expected an .h5ad file or a folder of them)")
    options = dict(section_key=section_key, patient_key=patient_key, pathology_key=pathology_key,
                   cluster_key=cluster_key, library_key=library_key, image_key=image_key,
                   counts_layer=counts_layer, spot_diameter_um=spot_diameter_um, spot_pitch_um=spot_pitch_um)
    sections = {}
    for path in files:
        for section in file_sections(path, **options):
            if section.section_id in sections:
                raise DataError(f"{path}: section {section.section_id!r} also appears in another file")
            sections[section.section_id] = section
    return Dataset(name=NAME, sections=sections, citation=CITATION)


def _read_obs(path: Path) -> pd.DataFrame:
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as fh:
            if "obs" not in fh:
                raise DataError(f"{path}: not an AnnData file (no obs)")
            return read_elem(fh["obs"])
    except OSError as exc:
        raise DataError(f"{path}: cannot be read as an .h5ad (HDF5) file ({exc})") from exc


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


def file_sections(path: Path, *, section_key, patient_key, pathology_key, cluster_key, library_key, image_key,
                  counts_layer, spot_diameter_um, spot_pitch_um, patient_id: str | None = None,
                  section_id: str | None = None, image=None, image_um_per_px=None) -> list[ScaledSection]:
    """The sections of one .h5ad file. ``patient_id``/``section_id`` override the obs columns (HEST);
    ``image`` (a SlideImage in full-resolution pixels) overrides the embedded image."""
    path = Path(path)
    obs = _read_obs(path)
    libraries = _scalefactors(path)
    sec_col = _column(obs, section_key, path, "section_key")
    pat_col = _column(obs, patient_key, path, "patient_key")
    lib_col = _column(obs, library_key, path, "library_key")
    _column(obs, pathology_key, path, "pathology_key")
    _column(obs, cluster_key, path, "cluster_key")
    if sec_col is not None:
        ids = sec_col.astype(str)
    else:
        default = section_id or (next(iter(libraries)) if len(libraries) == 1 else path.stem)
        ids = pd.Series(default, index=obs.index)
    out = []
    for sid in pd.unique(ids):
        mask = (ids == sid).to_numpy()
        if patient_id is not None:
            patient = patient_id
        elif pat_col is not None:
            values = pd.unique(pat_col[mask].astype(str))
            if len(values) != 1:
                raise DataError(f"{path}: section {sid} has spots of {len(values)} patients in obs column "
                                f"{patient_key!r} ({', '.join(values[:5])}); a section comes from one patient")
            patient = str(values[0])
        else:
            patient = str(sid)
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
        section_image, scale, um_per_px = None, 1.0, None
        if image is not None:
            section_image, um_per_px = image, image_um_per_px
        elif library is not None and image_key in factors.get("_images", []):
            scale_field = f"tissue_{image_key}_scalef"
            if scale_field not in factors:
                raise DataError(f"{path}: uns['spatial'][{library!r}]['scalefactors'] lacks {scale_field!r}, "
                                f"needed to place spots on the {image_key!r} image")
            scale = factors[scale_field]
            section_image = H5Image(path, f"uns/spatial/{library}/images/{image_key}")
        if section_image is not None and um_per_px is None:
            if "spot_diameter_fullres" in factors:
                um_per_px = spot_diameter_um / (factors["spot_diameter_fullres"] * scale)
            elif spot_pitch_um is None:
                raise DataError(f"{path}: uns['spatial'][{library!r}]['scalefactors'] lacks "
                                f"'spot_diameter_fullres'; give spot_pitch_um (e.g. 100 for Visium, 200 for ST) "
                                f"to derive µm/px from the spot grid")
        read = lambda sid=sid, mask=mask, scale=scale: _read_section(  # noqa: E731
            path, str(sid), mask, scale, counts_layer, pathology_key, cluster_key)
        out.append(ScaledSection(section_id=str(sid), patient_id=patient, load_counts=read, image=section_image,
                                 spot_pitch_um=spot_pitch_um or VISIUM_SPOT_PITCH_UM,
                                 fixed_um_per_px=um_per_px))
    return out


@lru_cache(maxsize=4)
def _read_file(path: Path):
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as an .h5ad file ({exc})") from exc


def _read_section(path: Path, sid: str, mask: np.ndarray, scale: float, counts_layer, pathology_key,
                  cluster_key):
    adata = _read_file(path)
    if "spatial" not in adata.obsm:
        raise DataError(f"{path}: obsm has no 'spatial' (pixel x, y of each spot)")
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[mask, :2] * scale
    if counts_layer is not None:
        if counts_layer not in adata.layers:
            raise DataError(f"{path}: layers has no {counts_layer!r} (option counts_layer)")
        X = adata.layers[counts_layer][mask]
    else:
        X = adata.X[mask]
    src = adata.obs.loc[mask]
    obs = pd.DataFrame(index=src.index.astype(str))
    names = [("array_col", "array_row"), ("array_x", "array_y")]
    found = next(((cx, cy) for cx, cy in names if cx in src.columns and cy in src.columns), None)
    if found is not None:
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
    return spot_anndata(X, obs, adata.var_names, sid, str(path))
