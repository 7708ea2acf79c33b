"""HER2-positive breast cancer, Spatial Transcriptomics (Andersson et al., Nat Commun 12, 6012, 2021).

Reads the public repository's own layout (github.com/almaan/her2st), so a full clone and the
downloaded subset load the same way:

    data/ST-cnts/<S>.tsv.gz                          spots x genes raw counts, row index "<x>x<y>"
    data/ST-spotfiles/<S>_selection.tsv              x y new_x new_y pixel_x pixel_y selected
    data/ST-imgs/<P>/<S>/*.jpg                       full-resolution H&E (only some sections here)
    data/ST-pat/lbl/<S>_labeled_coordinates.tsv      pathologist label per spot (some sections)
    res/ST-cluster/lbl/<S>-cluster-annotation.tsv.gz expression-cluster label per spot

Patient = first letter of the section name; a patient's sections are serial cuts of one tumour.

Counts rows join spot-file rows on (x, y). A counted spot missing from the spot file is an error (it has
no position); spot-file rows without counts (0-3 per imaged section in the public data) are left out,
logged and counted in ``uns["n_spots_without_counts"]``. A spot or gene repeated in the counts, a spot
repeated in the spot file, and a count that is not a finite number >= 0 are errors naming line and field.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.dataset import UNREADABLE_FILE, DataError, Dataset, ImageFile, Section, SectionHeader

log = logging.getLogger(__name__)

NAME = "her2st"
CITATION = ("Andersson, A. et al. Spatial deconvolution of HER2-positive breast cancer delineates "
            "tumor-associated cell type interactions. Nat Commun 12, 6012 (2021).")
SPOT_PITCH_UM = 200.0  # ST arrays: 200 µm centre to centre, 100 µm spot diameter
# Where `bench data fetch her2st` downloads from: a URL that names a commit, so the files never change
# under the manifest. The manifest beside this file lists all 155 files the loader reads with their git
# blob id (and SHA-256 where known); every download is verified against it.
COMMIT = "85df7411b987a7dec3feff9718b869a7a82091ec"
BASE_URL = f"https://github.com/almaan/her2st/raw/{COMMIT}/"
MANIFEST = Path(__file__).with_name("her2st.manifest.tsv")
# Manifest files a copy may lack and still be used: a section without its image keeps its counts (panels,
# expression-only uses) and enters no image-based fold. Anything else missing is an error.
OPTIONAL_FILES = ("data/ST-imgs/",)
# What each manifest file is needed for, to say so when one is missing ("spot positions of section C4").
_FILE_ROLES = (
    (re.compile(r"data/ST-cnts/(\w+)\.tsv\.gz"), "spot-by-gene counts of section {}"),
    (re.compile(r"data/ST-spotfiles/(\w+)_selection\.tsv"), "spot positions of section {}"),
    (re.compile(r"data/ST-imgs/\w/(\w+)/[^/]+\.jpg"), "H&E image of section {}"),
    (re.compile(r"data/ST-pat/lbl/(\w+)_labeled_coordinates\.tsv"), "pathologist labels of section {}"),
    (re.compile(r"res/ST-cluster/lbl/(\w+)-cluster-annotation\.tsv\.gz"), "expression clusters of section {}"),
)
_OTHER_FILES = {"data/ST-pat/lbl/README": "the pathologist labels' description",
                "res/ST-cluster/motivation.csv": "what each expression cluster was annotated as"}


def describe_file(relpath: str) -> str | None:
    """What a file of the manifest is for, in a few words (None for a path this loader does not know)."""
    for pattern, role in _FILE_ROLES:
        match = pattern.fullmatch(relpath)
        if match:
            return role.format(match.group(1))
    return _OTHER_FILES.get(relpath)


# The published evaluation (HisToGene, Hist2ST, THItoGene, mclSTExp): leave one section out over the 32
# sections A2..G3 (their code sorts the 36 count files and keeps [1:33], dropping A1 and H1-H3), each
# fold training on the other 31; the 785-gene panel those papers use (chosen on all 32 sections).
PUBLISHED_SECTIONS = tuple(f"{p}{i}" for p, n in zip("ABCDEFG", (6, 6, 6, 6, 3, 3, 3)) for i in range(1, n + 1)
                           if f"{p}{i}" != "A1")
PUBLISHED_PANEL = Path(__file__).with_name("her2st_785.txt")
# Published scores in that setting (method, ACG, HEG, source): shown beside runs made the same way.
PUBLISHED_RESULTS = Path(__file__).with_name("published_results.csv")


def load(root: Path) -> Dataset:
    root = Path(root)
    counts_dir = root / "data" / "ST-cnts"
    if not counts_dir.is_dir():
        raise DataError(f"{root}: no her2st data here (expected folder {counts_dir})")
    section_ids = sorted(p.name[: -len(".tsv.gz")] for p in counts_dir.glob("*.tsv.gz"))
    if not section_ids:
        raise DataError(f"{counts_dir}: no <section>.tsv.gz count files")
    sections = {}
    for sid in section_ids:
        image_path = _find_image(root, sid)
        sections[sid] = Section(
            section_id=sid,
            patient_id=sid[0],
            load_counts=lambda sid=sid: read_section(root, sid),
            image=ImageFile(image_path) if image_path else None,
            spot_pitch_um=SPOT_PITCH_UM, grid="square", patient_from="section name (B4 is patient B)",
            load_header=lambda sid=sid: read_header(root, sid),
        )
    return Dataset(name=NAME, sections=sections, citation=CITATION, published_sections=PUBLISHED_SECTIONS,
                   published_panel=PUBLISHED_PANEL)


def _find_image(root: Path, sid: str) -> Path | None:
    folder = root / "data" / "ST-imgs" / sid[0] / sid
    images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if len(images) > 1:
        raise DataError(f"{folder}: expected one .jpg image, found {len(images)}")
    return images[0] if images else None


def read_section(root: Path, sid: str):
    """Join counts, spot positions and labels of one section into AnnData (raw integer counts)."""
    import anndata as ad
    import scipy.sparse as sp

    counts_path = root / "data" / "ST-cnts" / f"{sid}.tsv.gz"
    counts, counts_xy = _read_counts(counts_path)
    obs = _spot_table(root, sid, counts.index, counts_xy, counts_path)
    values = counts.to_numpy(dtype=np.float32)
    adata = ad.AnnData(
        X=sp.csr_matrix(values),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(counts.columns.astype(str), name="gene")),
    )
    adata.obsm["spatial"] = obs[["pixel_x", "pixel_y"]].to_numpy(float)
    adata.uns["section_id"] = sid
    adata.uns["n_spots_without_counts"] = obs.attrs["n_spots_without_counts"]
    return adata


def read_header(root: Path, sid: str) -> SectionHeader:
    """The section's spot table and gene count from the first column and the widths of its count table,
    without parsing a count: ``data info`` reads all 36 sections in seconds instead of a minute. The counts
    themselves are checked when they are read (``read_section``)."""
    import gzip

    path = root / "data" / "ST-cnts" / f"{sid}.tsv.gz"
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    names, n_fields = [], None
    try:
        with gzip.open(path, "rt") as fh:
            fh.readline()  # the genes; counted on the first row, which also holds the spot name
            for line in fh:
                name, _, rest = line.partition("\t")
                if n_fields is None:
                    n_fields = rest.count("\t") + 1
                names.append(name.strip('"'))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as a tab-separated table ({exc})") from exc
    if not names:
        raise DataError(f"{path}: no spots (expected one row per spot, named '<x>x<y>', and one column per gene)")
    index = pd.Index(names)
    obs = _spot_table(root, sid, index, _spot_positions(index, path), path)
    return SectionHeader(obs, n_fields)


def _spot_table(root: Path, sid: str, spot_names: pd.Index, counts_xy: pd.MultiIndex, counts_path: Path):
    """The spot table (obs) of the counted spots: array and pixel positions from the spot file, and labels.
    ``attrs["n_spots_without_counts"]``: spot-file rows that have no counts row."""
    spots_path = root / "data" / "ST-spotfiles" / f"{sid}_selection.tsv"
    spots = _read_table(spots_path)
    _require_columns(spots, spots_path, ["x", "y", "new_x", "new_y", "pixel_x", "pixel_y"])
    _require_numbers(spots, spots_path, ["x", "y", "pixel_x", "pixel_y"])

    # Counts rows are named "<x>x<y>" (array coordinates); join on them, never on order or length.
    repeat = _first_repeat(zip(spots["x"], spots["y"]))
    if repeat:  # two rows for one spot: which position is right cannot be told, so never pick one
        i, j = repeat
        x, y = spots["x"].iloc[j], spots["y"].iloc[j]
        raise DataError(f"{spots_path}: lines {i + 2} and {j + 2} are both spot x, y = {x:g}, {y:g}; each spot "
                        f"must have one row")
    spots = spots.set_index(["x", "y"])
    located = counts_xy.isin(spots.index)
    if not located.all():  # a counted spot without a position cannot be cut or mapped: refuse, never drop
        lost = spot_names[~located]
        raise DataError(f"{counts_path}: {len(lost)} of {len(spot_names)} spots have no row with that x, y in "
                        f"{spots_path} (first: {', '.join(map(str, lost[:5]))}); every counted spot needs "
                        f"its pixel position")
    table = spots.loc[counts_xy]
    # The reverse is normal (a spot under tissue that captured nothing has no counts row): join, and say so.
    n_uncounted = int((~spots.index.isin(counts_xy)).sum())
    if n_uncounted:
        log.info("section %s: %d spot(s) of %s have no counts row and are left out", sid, n_uncounted,
                 spots_path.name)
    obs = pd.DataFrame(
        {
            "array_x": table.index.get_level_values(0).astype(int),
            "array_y": table.index.get_level_values(1).astype(int),
            "pixel_x": table["pixel_x"].to_numpy(float),
            "pixel_y": table["pixel_y"].to_numpy(float),
        },
        index=pd.Index(spot_names.astype(str), name="spot"),
    )
    obs["pathology_label"] = _pathology_labels(root, sid, table)
    obs["cluster_label"] = _cluster_labels(root, sid, obs)
    obs.attrs["n_spots_without_counts"] = n_uncounted
    return obs


def _read_counts(path: Path) -> tuple[pd.DataFrame, pd.MultiIndex]:
    """The spots x genes table and each row's (x, y); any malformed cell is named by line and gene.

    Line numbers count the header as line 1 (so data row i is line i + 2)."""
    counts = _read_table(path, index_col=0)
    if counts.empty:
        raise DataError(f"{path}: no spots (expected one row per spot, named '<x>x<y>', and one column per gene)")
    # pandas renames a repeated column ("ERBB2" -> "ERBB2.1"), so duplicates are found in the raw header.
    genes = [g.strip('"') for g in _header(path)[-counts.shape[1]:]]
    repeat = _first_repeat(genes)
    if repeat:
        i, j = repeat
        raise DataError(f"{path}: gene {genes[j]!r} names columns {i + 2} and {j + 2} of the header; each gene "
                        f"must appear once")
    counts.columns = genes
    counts_xy = _spot_positions(counts.index, path)
    _check_cells(counts, path)
    return counts, counts_xy


def _spot_positions(names: pd.Index, path: Path) -> pd.MultiIndex:
    """Each row's (x, y) from its name "<x>x<y>"; a malformed or repeated name is an error."""
    try:
        xy = names.to_series().astype(str).str.split("x", expand=True).astype(int)
    except (ValueError, KeyError) as exc:
        raise DataError(f"{path}: row names must be '<x>x<y>' array coordinates ({exc})") from exc
    counts_xy = pd.MultiIndex.from_arrays([xy[0].to_numpy(), xy[1].to_numpy()])
    repeat = _first_repeat(counts_xy)
    if repeat:
        i, j = repeat
        raise DataError(f"{path}: spot {names[j]} appears on lines {i + 2} and {j + 2}; each spot must "
                        f"have one row")
    return counts_xy


def _check_cells(counts: pd.DataFrame, path: Path) -> None:
    """Every cell is a finite number >= 0, or a DataError names the first that is not."""
    for gene in counts.select_dtypes(exclude="number").columns:  # pandas reads a column with text as text
        column = counts[gene]
        bad = (pd.to_numeric(column, errors="coerce").isna() & column.notna()).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: line {i + 2}, gene {gene} (spot {counts.index[i]}): {column.iloc[i]!r} is "
                            f"not a number; expected raw counts")
    values = counts.to_numpy(dtype=np.float64)
    for bad, what in ((~np.isfinite(values), "is empty or not a finite number"), (values < 0, "is negative")):
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DataError(f"{path}: line {i + 2}, gene {counts.columns[j]} (spot {counts.index[i]}) {what} "
                            f"({values[i, j]:g}; {int(bad.sum())} such cell(s)); expected raw counts >= 0")


def _header(path: Path) -> list[str]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return fh.readline().rstrip("\r\n").split("\t")


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pd.read_csv(path, sep="\t", **kwargs)
    except UNREADABLE_FILE as exc:  # gzip, parser and encoding errors all mean the same to a user
        raise DataError(f"{path}: cannot be read as a tab-separated table ({exc})") from exc


def _require_columns(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")


def _require_numbers(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    for column in columns:
        bad = ~np.isfinite(pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: line {i + 2}, column {column}: {df[column].iloc[i]!r} is not a number")


def _pathology_labels(root: Path, sid: str, table: pd.DataFrame) -> pd.Series:
    """Pathologist labels sit at adjusted array coordinates (≈ new_x, new_y); match to the nearest spot."""
    path = root / "data" / "ST-pat" / "lbl" / f"{sid}_labeled_coordinates.tsv"
    labels = pd.Series(np.full(len(table), np.nan, dtype=object))
    if not path.is_file():
        return labels.to_numpy()
    from scipy.spatial import cKDTree

    lbl = _read_table(path)
    _require_columns(lbl, path, ["x", "y", "label"])
    lbl = lbl.dropna(subset=["x", "y"])
    dist, idx = cKDTree(lbl[["x", "y"]].to_numpy(float)).query(table[["new_x", "new_y"]].to_numpy(float))
    close = dist < 0.5  # half a grid step: the same spot, not a neighbour
    labels[close] = lbl["label"].to_numpy()[idx[close]]
    return labels.to_numpy()


def _cluster_labels(root: Path, sid: str, obs: pd.DataFrame) -> np.ndarray:
    path = root / "res" / "ST-cluster" / "lbl" / f"{sid}-cluster-annotation.tsv.gz"
    out = np.full(len(obs), np.nan, dtype=object)
    if not path.is_file():
        return out
    lbl = _read_table(path)
    _require_columns(lbl, path, ["x", "y", "label"])
    by_xy = {(int(x), int(y)): str(v) for x, y, v in zip(lbl["x"], lbl["y"], lbl["label"])}
    for i, key in enumerate(zip(obs["array_x"], obs["array_y"])):
        out[i] = by_xy.get(key, np.nan)
    return out


def _first_repeat(keys) -> tuple[int, int] | None:
    """Positions (first, repeat) of the earliest key seen twice, or None when all keys differ."""
    first: dict = {}
    for position, key in enumerate(keys):
        if key in first:
            return first[key], position
        first[key] = position
    return None
