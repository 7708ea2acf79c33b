"""10x Genomics Visium: Space Ranger output folders listed in a sample sheet.

The root is a sample sheet (CSV) or a folder holding ``samples.csv``; its columns are
``section,patient,path[,image]``: ``path`` is a Space Ranger ``outs`` folder (relative paths are relative
to the sheet) and the optional ``image`` the full-resolution H&E given to Space Ranger. Each folder holds

    filtered_feature_bc_matrix.h5  or  filtered_feature_bc_matrix/ (matrix.mtx.gz, features.tsv.gz,
                                                                     barcodes.tsv.gz)
    spatial/tissue_positions.csv   (header: barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,
                                    pxl_col_in_fullres)  or  spatial/tissue_positions_list.csv (no header)
    spatial/scalefactors_json.json (spot_diameter_fullres, tissue_hires_scalef)
    spatial/tissue_hires_image.png (used when the sheet gives no full-resolution image)

Counts are read with scanpy's 10x readers; a barcode counted but missing from the positions is an error.
µm/px = 55 µm (the Visium spot diameter) / ``spot_diameter_fullres`` (times the hires scale factor when
the hires image is used), checked against a fit of the pixel positions on the hexagonal grid (100 µm
between neighbouring spots). array_x/array_y are Space Ranger's array_col/array_row.

Labels: a per-barcode CSV as Loupe Browser exports it (header ``Barcode,<name>``, one row per barcode; an
empty value is an unlabelled spot), named per section by the optional sample-sheet columns ``pathology_csv``
(the pathologist's domains) and ``cluster_csv`` (expression clusters), relative to the sheet, or for every
section by the options ``pathology_csv=`` / ``cluster_csv=`` (a file name looked up in each Space Ranger
folder, or an absolute path). Counted barcodes the CSV does not list have no label.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.dataset import UNREADABLE_FILE, DataError, Dataset, ImageFile
from bench.data.formats import (
    VISIUM_SPOT_DIAMETER_UM,
    VISIUM_SPOT_PITCH_UM,
    ScaledSection,
    array_geometry,
    data_root,
    spot_anndata,
)

log = logging.getLogger(__name__)

NAME = "visium"
# Reads the user's files at <data dir>/visium/ (or the root given to load); nothing to download.
USER_DATA = True
CITATION = "10x Genomics Visium Spatial Gene Expression (Space Ranger output; user data)."
SHEET_NAME = "samples.csv"
SHEET_COLUMNS = ("section", "patient", "path")
# Optional sample-sheet columns (and load options) naming Loupe Browser label exports, and the spot-table
# column each fills.
LABEL_FILES = {"pathology_csv": "pathology_label", "cluster_csv": "cluster_label"}
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def load(root=None, *, spot_diameter_um: float = VISIUM_SPOT_DIAMETER_UM, pathology_csv: str | None = None,
         cluster_csv: str | None = None) -> Dataset:
    root = data_root(root, NAME)
    sheet_path = root / SHEET_NAME if root.is_dir() else root
    if not sheet_path.is_file():
        raise DataError(f"{sheet_path}: sample sheet not found (a CSV with columns section,patient,path[,image])")
    try:
        sheet = pd.read_csv(sheet_path, dtype=str)
    except UNREADABLE_FILE as exc:
        raise DataError(f"{sheet_path}: cannot be read as a CSV sample sheet ({exc})") from exc
    missing = [c for c in SHEET_COLUMNS if c not in sheet.columns]
    if missing:
        raise DataError(f"{sheet_path}: missing column(s) {missing} (expected section,patient,path[,image])")
    sections, options = {}, {"pathology_csv": pathology_csv, "cluster_csv": cluster_csv}
    labels_from = {}
    for line, row in enumerate(sheet.itertuples(index=False), start=2):
        for column in SHEET_COLUMNS:
            if pd.isna(getattr(row, column)) or not str(getattr(row, column)).strip():
                raise DataError(f"{sheet_path}: line {line}, column {column} is empty")
        sid = str(row.section).strip()
        if sid in sections:
            raise DataError(f"{sheet_path}: line {line}: section {sid!r} is listed twice")
        folder = _resolve(sheet_path, row.path)
        image = getattr(row, "image", None)
        image = _resolve(sheet_path, image) if isinstance(image, str) and image.strip() else None
        label_files = {}
        for column in LABEL_FILES:
            value = getattr(row, column, None)
            if isinstance(value, str) and value.strip():  # the sheet's file for this section wins
                path, named_by = _resolve(sheet_path, value), f"sample sheet column {column}"
                labels_from[column[:-len("_csv")]] = f"Loupe Browser CSV per section ({named_by})"
            elif options[column]:
                path, named_by = Path(options[column]).expanduser(), f"option {column}"
                path = path if path.is_absolute() else folder / path
                labels_from[column[:-len("_csv")]] = f"Loupe Browser CSV {options[column]} ({named_by})"
            else:
                continue
            if not path.is_file():
                raise DataError(f"{path}: label file of section {sid} not found ({named_by}: a Loupe Browser "
                                f"export with header Barcode,<name>)")
            label_files[column] = path
        sections[sid] = _section(sid, str(row.patient).strip(), folder, image, spot_diameter_um, label_files)
    if not sections:
        raise DataError(f"{sheet_path}: no sections listed")
    attrs = {"labels_from": labels_from}
    if not labels_from:
        attrs["label_hint"] = ("Labels: none, so no spatial-domain ARI/NMI. Labels exported from Loupe Browser "
                               "(Barcode,<name> CSV) are read from sample sheet columns pathology_csv / cluster_csv, "
                               "or --data-option pathology_csv=<file in each Space Ranger folder>")
    return Dataset(name=NAME, sections=sections, citation=CITATION, attrs=attrs)


def _resolve(sheet_path: Path, value: str) -> Path:
    path = Path(str(value).strip()).expanduser()
    return path if path.is_absolute() else sheet_path.parent / path


def _scalefactors(folder: Path) -> dict:
    path = folder / "spatial" / "scalefactors_json.json"
    if not path.is_file():
        raise DataError(f"{path}: file not found (Space Ranger's scale factors)")
    try:
        factors = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(factors.get("spot_diameter_fullres"), (int, float)) or factors["spot_diameter_fullres"] <= 0:
        raise DataError(f"{path}: field spot_diameter_fullres is missing or not a positive number")
    return factors


def _section(sid: str, patient: str, folder: Path, image: Path | None, spot_diameter_um: float,
             label_files: dict[str, Path] | None = None) -> ScaledSection:
    if not folder.is_dir():
        raise DataError(f"{folder}: Space Ranger folder of section {sid} not found")
    factors = _scalefactors(folder)
    scale = 1.0
    if image is None:
        hires = folder / "spatial" / "tissue_hires_image.png"
        if hires.is_file():
            if not isinstance(factors.get("tissue_hires_scalef"), (int, float)):
                raise DataError(f"{folder / 'spatial' / 'scalefactors_json.json'}: field tissue_hires_scalef is "
                                f"missing, needed to place spots on {hires}")
            image, scale = hires, float(factors["tissue_hires_scalef"])
    elif not image.is_file():
        raise DataError(f"{image}: full-resolution image of section {sid} not found")
    positions = _read_positions(folder)  # fail early, before any counts are read
    _counts_path(folder)
    # Space Ranger's arrays are hexagonal: µm/px from the scale factors is then checked against the grid.
    # Positions on another grid (data converted from elsewhere) are taken as they are, unchecked.
    hexagonal = array_geometry(positions[["array_col", "array_row"]].to_numpy(float)) == "hex"
    um_per_px = spot_diameter_um / (factors["spot_diameter_fullres"] * scale)
    return ScaledSection(section_id=sid, patient_id=patient,
                         load_counts=lambda: read_section(folder, sid, scale, label_files),
                         image=ImageFile(image) if image is not None else None,
                         spot_pitch_um=VISIUM_SPOT_PITCH_UM if hexagonal else 0.0,
                         grid="hex" if hexagonal else "square", patient_from="sample sheet column 'patient'",
                         fixed_um_per_px=um_per_px,
                         scale_source=f"{folder / 'spatial' / 'scalefactors_json.json'} (spot_diameter_fullres)",
                         grid_hint="Space Ranger's hexagonal array of 100 µm pitch" if hexagonal else None)


def _counts_path(folder: Path) -> Path:
    h5 = folder / "filtered_feature_bc_matrix.h5"
    mtx = folder / "filtered_feature_bc_matrix"
    if h5.is_file():
        return h5
    if mtx.is_dir():
        return mtx
    raise DataError(f"{folder}: neither filtered_feature_bc_matrix.h5 nor filtered_feature_bc_matrix/ found")


def _positions_path(folder: Path) -> Path:
    for name in ("tissue_positions.csv", "tissue_positions_list.csv"):
        if (folder / "spatial" / name).is_file():
            return folder / "spatial" / name
    raise DataError(f"{folder / 'spatial'}: neither tissue_positions.csv nor tissue_positions_list.csv found")


def _read_positions(folder: Path) -> pd.DataFrame:
    path = _positions_path(folder)
    try:
        with open(path) as fh:
            has_header = fh.readline().startswith("barcode")
        table = pd.read_csv(path, header=0 if has_header else None)
    except UNREADABLE_FILE as exc:
        raise DataError(f"{path}: cannot be read as a CSV table ({exc})") from exc
    if not has_header:
        if table.shape[1] != len(POSITION_COLUMNS):
            raise DataError(f"{path}: expected {len(POSITION_COLUMNS)} columns ({','.join(POSITION_COLUMNS)}), "
                            f"found {table.shape[1]}")
        table.columns = POSITION_COLUMNS
    missing = [c for c in POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    for column in POSITION_COLUMNS[1:]:
        bad = ~np.isfinite(pd.to_numeric(table[column], errors="coerce").to_numpy(float))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: line {i + 1 + has_header}, column {column}: {table[column].iloc[i]!r} "
                            f"is not a number")
    table["barcode"] = table["barcode"].astype(str)
    if table["barcode"].duplicated().any():
        raise DataError(f"{path}: barcode {table['barcode'][table['barcode'].duplicated()].iloc[0]!r} appears twice")
    return table.set_index("barcode")


def read_section(folder: Path, sid: str, scale: float, label_files: dict[str, Path] | None = None):
    import scanpy as sc

    counts_path = _counts_path(folder)
    import warnings

    try:
        with warnings.catch_warnings():  # made unique below, as Space Ranger's own tools do
            warnings.filterwarnings("ignore", message=r".* names are not unique")
            if counts_path.is_dir():
                adata = sc.read_10x_mtx(counts_path, var_names="gene_symbols", cache=False)
            else:
                adata = sc.read_10x_h5(counts_path)
    except (*UNREADABLE_FILE, KeyError) as exc:  # KeyError: an HDF5 file without the 10x groups
        raise DataError(f"{counts_path}: cannot be read as a 10x feature-barcode matrix ({exc})") from exc
    adata.var_names_make_unique()
    positions = _read_positions(folder)
    barcodes = adata.obs_names.astype(str)
    located = barcodes.isin(positions.index)
    if not located.all():
        lost = barcodes[~located]
        raise DataError(f"{counts_path}: {len(lost)} of {len(barcodes)} barcodes have no row in "
                        f"{_positions_path(folder)} (first: {', '.join(lost[:5])}); every spot needs its position")
    table = positions.loc[barcodes]
    obs = pd.DataFrame({
        "array_x": table["array_col"].astype(int).to_numpy(),
        "array_y": table["array_row"].astype(int).to_numpy(),
        "pixel_x": table["pxl_col_in_fullres"].to_numpy(float) * scale,
        "pixel_y": table["pxl_row_in_fullres"].to_numpy(float) * scale,
    }, index=barcodes)
    for option, path in (label_files or {}).items():
        obs[LABEL_FILES[option]] = read_loupe_labels(path, barcodes, sid)
    return spot_anndata(adata.X, obs, adata.var_names, sid, str(counts_path))


def read_loupe_labels(path: Path, barcodes: pd.Index, sid: str) -> np.ndarray:
    """A Loupe Browser export (``Barcode,<name>``) as one label per counted barcode, in their order (NaN for
    barcodes it does not list or leaves empty)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except UNREADABLE_FILE as exc:
        raise DataError(f"{path}: cannot be read as a CSV ({exc})") from exc
    if table.shape[1] != 2 or str(table.columns[0]).strip().lower() != "barcode":
        raise DataError(f"{path}: expected Loupe Browser's two columns Barcode,<name>; found header "
                        f"{','.join(map(str, table.columns))}")
    table.columns = ["barcode", "label"]
    table["barcode"] = table["barcode"].str.strip()
    repeated = table["barcode"][table["barcode"].duplicated()]
    if len(repeated):
        raise DataError(f"{path}: barcode {repeated.iloc[0]!r} appears more than once")
    labels = table.set_index("barcode")["label"].str.strip().replace("", np.nan)
    known = labels.index.isin(barcodes)
    if len(labels) and not known.any():
        raise DataError(f"{path}: none of its {len(labels)} barcodes is a counted barcode of section {sid} "
                        f"(e.g. {labels.index[0]!r}); the labels of another section?")
    if not known.all():
        log.info("%s: %d of %d barcodes are not counted in section %s; ignored", path, int((~known).sum()),
                 len(labels), sid)
    return labels.reindex(barcodes).to_numpy(dtype=object)
