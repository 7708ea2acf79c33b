"""HEST-1k samples (Jaume et al., NeurIPS 2024; huggingface.co/datasets/MahmoodLab/hest), in its layout:

    st/<id>.h5ad        counts; obsm["spatial"] = spot centres in whole-slide pixels; obs array_row/array_col
    wsis/<id>.tif       whole-slide H&E (pyramidal TIFF), read tile by tile with tifffile: never whole
    <metadata>.csv      one row per sample: id, patient, pixel_size_um_estimated (HEST_v1_1_0.csv)

Every ``st/<id>.h5ad`` present is a section; its metadata row gives the patient (a sample without a patient
is its own patient) and µm/px (``pixel_size_um_estimated``, else ``pixel_size_um_embedded``). A sample
without ``wsis/<id>.tif`` is expression-only. Options: ``metadata`` (the CSV's name or path; default: the
only .csv in the root), ``ids`` (load only these samples), ``pathology_key`` / ``cluster_key`` (obs columns
with labels).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.dataset import PATIENT_IS_SECTION, UNREADABLE_FILE, DataError, Dataset
from bench.data.formats import VISIUM_SPOT_DIAMETER_UM, TiffSlide, data_root

log = logging.getLogger(__name__)

NAME = "hest"
# Reads the user's files at <data dir>/hest/ (or the root given to load); nothing to download.
USER_DATA = True
CITATION = ("Jaume, G. et al. HEST-1k: A Dataset for Spatial Transcriptomics and Histology Image Analysis. "
            "NeurIPS 2024 Datasets and Benchmarks.")
SCALE_FIELDS = ("pixel_size_um_estimated", "pixel_size_um_embedded")


def _h5ad_module():
    from bench.registry import get_dataset_module

    return get_dataset_module("h5ad")


def load(root=None, *, metadata: str | None = None, ids=None, pathology_key: str | None = None,
         cluster_key: str | None = None) -> Dataset:
    root = data_root(root, NAME)
    st_dir = root / "st"
    if not st_dir.is_dir():
        raise DataError(f"{root}: no HEST data here (expected folder {st_dir} with <id>.h5ad files)")
    meta_path = _metadata_path(root, metadata)
    meta = _read_metadata(meta_path)
    available = sorted(p.name[: -len(".h5ad")] for p in st_dir.glob("*.h5ad"))
    if ids is not None:
        wanted = [str(i) for i in ids]
        absent = [i for i in wanted if i not in available]
        if absent:
            raise DataError(f"{st_dir}: no {absent[0]}.h5ad (asked for samples {', '.join(absent)})")
        available = wanted
    if not available:
        raise DataError(f"{st_dir}: no <id>.h5ad files")
    sections = {}
    for sid in available:
        if sid not in meta.index:
            raise DataError(f"{meta_path}: no row with id {sid!r} (for {st_dir / (sid + '.h5ad')})")
        row = meta.loc[sid]
        patient = row.get("patient")
        if patient is None or pd.isna(patient) or not str(patient).strip():
            patient, patient_from = sid, PATIENT_IS_SECTION
        else:
            patient, patient_from = str(patient).strip(), f"{meta_path.name} column 'patient'"
        wsi = root / "wsis" / f"{sid}.tif"
        image, um_per_px = None, None
        if wsi.is_file():
            um_per_px = _scale(row, meta_path, sid)
            image = TiffSlide(wsi)
        else:
            log.info("HEST sample %s: no %s; expression only", sid, wsi)
        # image_key="": the slide is the image, never the h5ad's own downscaled one.
        (section,) = _h5ad_module().file_sections(
            st_dir / f"{sid}.h5ad", section_key=None, patient_key=None, pathology_key=pathology_key,
            cluster_key=cluster_key, library_key=None, image_key="", counts_layer=None,
            spot_diameter_um=VISIUM_SPOT_DIAMETER_UM, spot_pitch_um=_pitch(row), patient_id=patient,
            patient_from=patient_from, section_id=sid, image=image, image_um_per_px=um_per_px,
            scale_source=f"{meta_path.name} ({' or '.join(SCALE_FIELDS)})")
        sections[sid] = section
    return Dataset(name=NAME, sections=sections, citation=CITATION)


def _metadata_path(root: Path, metadata) -> Path:
    if metadata is not None:
        path = Path(metadata)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(f"{path}: metadata CSV not found (option metadata)")
        return path
    found = sorted(root.glob("*.csv"))
    if len(found) != 1:
        raise DataError(f"{root}: expected one metadata CSV (e.g. HEST_v1_1_0.csv) with columns id, patient, "
                        f"pixel_size_um_estimated; found {len(found)} (name it with the metadata option)")
    return found[0]


def _read_metadata(path: Path) -> pd.DataFrame:
    try:
        meta = pd.read_csv(path, dtype={"id": str, "patient": str})
    except UNREADABLE_FILE as exc:
        raise DataError(f"{path}: cannot be read as a CSV table ({exc})") from exc
    if "id" not in meta.columns:
        raise DataError(f"{path}: missing column 'id'")
    if meta["id"].duplicated().any():
        raise DataError(f"{path}: id {meta['id'][meta['id'].duplicated()].iloc[0]!r} appears twice")
    return meta.set_index("id")


def _pitch(row) -> float | None:
    """The metadata's centre-to-centre spot distance (HEST's ``inter_spot_dist``, µm), to check the slide's
    pixel size against the spot grid; None when absent (a Visium hexagonal grid is then recognised by its
    array coordinates and given 100 µm, and a square one is not checked)."""
    value = pd.to_numeric(row.get("inter_spot_dist"), errors="coerce")
    return float(value) if value is not None and np.isfinite(value) and value > 0 else None


def _scale(row, path: Path, sid: str) -> float:
    for field in SCALE_FIELDS:
        value = pd.to_numeric(row.get(field), errors="coerce")
        if value is not None and np.isfinite(value) and value > 0:
            return float(value)
    raise DataError(f"{path}: sample {sid} has no positive {' or '.join(SCALE_FIELDS)} (µm per slide pixel)")
