"""Cutaneous squamous cell carcinoma, Spatial Transcriptomics (Ji et al., Cell 182, 497-514, 2020), GEO GSE144240.

Reads the files of GSE144240_RAW.tar in one folder (the root), gzipped as GEO serves them or not:

    GSM<n>_<P>_ST_rep<r>.jpg                         H&E image
    GSM<n>_<P>_ST_rep<r>_stdata.tsv[.gz]             spots x genes raw counts, row index "<x>x<y>"
    GSM<n>_spot_data-selection-<P>_ST_rep<r>.tsv[.gz] x y ... pixel_x pixel_y (x, y rounded to the array)

The published set is patients P2, P5, P9, P10 with 3 replicate sections each (12 sections,
``<P>_ST_rep<r>``); whatever sections the folder holds are loaded. Patient = the ``<P>`` of the name.
Counts rows join spot-file rows on the rounded (x, y) (as Hist2ST and THItoGene do); a counted spot with
no position is an error, spot-file rows without counts are left out. µm/px comes from the 200 µm spot
pitch of the ST array. No per-spot labels are published.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.dataset import UNREADABLE_FILE, DataError, Dataset, ImageFile, Section
from bench.data.formats import data_root, spot_anndata

log = logging.getLogger(__name__)

NAME = "cscc"
# Reads the user's files at <data dir>/cscc/ (or the root given to load); nothing to download.
USER_DATA = True
CITATION = ("Ji, A. L. et al. Multimodal Analysis of Composition and Spatial Architecture in Human Squamous "
            "Cell Carcinoma. Cell 182, 497-514 (2020). GEO GSE144240.")
SPOT_PITCH_UM = 200.0
PATIENTS = ("P2", "P5", "P9", "P10")
# The published evaluation (Hist2ST, THItoGene, mclSTExp): leave one of the 12 sections out, train on the other 11.
PUBLISHED_SECTIONS = tuple(f"{p}_ST_rep{r}" for p in PATIENTS for r in (1, 2, 3))
# Published scores in that setting (method, ACG, HEG, source): shown beside runs made the same way.
PUBLISHED_RESULTS = Path(__file__).with_name("published_results.csv")
_COUNTS = re.compile(r"^(?:GSM\d+_)?(P\d+)_ST_(rep\d+)_stdata\.tsv(?:\.gz)?$")


def load(root=None) -> Dataset:
    root = data_root(root, NAME)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected the GSE144240_RAW files)")
    found = {}
    for path in sorted(root.iterdir()):
        match = _COUNTS.match(path.name)
        if match:
            sid = f"{match[1]}_ST_{match[2]}"
            if sid in found:
                raise DataError(f"{root}: two count files for section {sid} ({found[sid][1].name}, {path.name})")
            found[sid] = (match[1], path)
    if not found:
        raise DataError(f"{root}: no *_<patient>_ST_rep<n>_stdata.tsv(.gz) count files (GSE144240 layout)")
    sections = {}
    for sid, (patient, counts_path) in sorted(found.items(), key=lambda kv: _order(kv[0])):
        spots_path = _one(root, [f"*spot_data-selection-{sid}.tsv", f"*spot_data-selection-{sid}.tsv.gz"],
                          f"spot file of section {sid} (*spot_data-selection-{sid}.tsv)", required=True)
        image = _one(root, [f"*_{sid}.jpg", f"{sid}.jpg"], f"image of section {sid}", required=False)
        sections[sid] = Section(section_id=sid, patient_id=patient,
                                load_counts=lambda sid=sid, c=counts_path, s=spots_path: read_section(sid, c, s),
                                image=ImageFile(image) if image else None, spot_pitch_um=SPOT_PITCH_UM,
                                grid="square", patient_from="file names (<P>_ST_rep<r> is patient <P>)")
    return Dataset(name=NAME, sections=sections, citation=CITATION, published_sections=PUBLISHED_SECTIONS)


def _order(sid: str):
    patient, _, rep = sid.split("_")
    return int(patient[1:]), int(rep[3:])


def _one(root: Path, patterns: list[str], what: str, required: bool) -> Path | None:
    hits = sorted({p for pattern in patterns for p in root.glob(pattern)})
    if len(hits) > 1:
        raise DataError(f"{root}: more than one {what}: {', '.join(p.name for p in hits)}")
    if not hits and required:
        raise DataError(f"{root}: {what} not found")
    return hits[0] if hits else None


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", **kwargs)
    except UNREADABLE_FILE as exc:
        raise DataError(f"{path}: cannot be read as a tab-separated table ({exc})") from exc


def read_section(sid: str, counts_path: Path, spots_path: Path):
    counts = _read_table(counts_path, index_col=0)
    if counts.empty:
        raise DataError(f"{counts_path}: no spots")
    try:
        xy = counts.index.to_series().astype(str).str.split("x", expand=True).astype(float).round().astype(int)
    except (ValueError, KeyError) as exc:
        raise DataError(f"{counts_path}: row names must be '<x>x<y>' array coordinates ({exc})") from exc
    keys = pd.MultiIndex.from_arrays([xy[0].to_numpy(), xy[1].to_numpy()])
    if keys.duplicated().any():
        raise DataError(f"{counts_path}: spot {counts.index[keys.duplicated()][0]} appears twice")
    values = counts.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{counts_path}: line {i + 2}, gene {counts.columns[j]} (spot {counts.index[i]}): "
                        f"{counts.iat[i, j]!r} is not a raw count >= 0")
    spots = _read_table(spots_path)
    missing = [c for c in ("x", "y", "pixel_x", "pixel_y") if c not in spots.columns]
    if missing:
        raise DataError(f"{spots_path}: missing column(s) {missing}")
    for column in ("x", "y", "pixel_x", "pixel_y"):
        bad_rows = ~np.isfinite(pd.to_numeric(spots[column], errors="coerce").to_numpy(float))
        if bad_rows.any():
            i = int(np.argmax(bad_rows))
            raise DataError(f"{spots_path}: line {i + 2}, column {column}: {spots[column].iloc[i]!r} is not a number")
    spots["ax"] = np.rint(spots["x"].astype(float)).astype(int)
    spots["ay"] = np.rint(spots["y"].astype(float)).astype(int)
    spots = spots.drop_duplicates(["ax", "ay"]).set_index(["ax", "ay"])
    located = keys.isin(spots.index)
    if not located.all():
        lost = counts.index[~located]
        raise DataError(f"{counts_path}: {len(lost)} of {len(counts)} spots have no row with that x, y in "
                        f"{spots_path} (first: {', '.join(map(str, lost[:5]))}); every counted spot needs its "
                        f"pixel position")
    n_uncounted = int((~spots.index.isin(keys)).sum())
    if n_uncounted:
        log.info("section %s: %d spot(s) of %s have no counts row and are left out", sid, n_uncounted,
                 spots_path.name)
    table = spots.loc[keys]
    obs = pd.DataFrame({"array_x": xy[0].to_numpy(), "array_y": xy[1].to_numpy(),
                        "pixel_x": table["pixel_x"].to_numpy(float), "pixel_y": table["pixel_y"].to_numpy(float)},
                       index=counts.index.astype(str))
    genes = [str(g) for g in counts.columns]
    return spot_anndata(values, obs, genes, sid, str(counts_path))
