"""Spot labels (which score spatial domains, ARI/NMI) are found or asked for, never silently missing: an .h5ad
obs column with a common name is read, other candidate columns are listed by ``data info`` with the option that
reads them, and a Visium folder reads the per-barcode CSV that Loupe Browser exports (``Barcode,<name>``)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import visium_lattice

from bench.cli import main
from bench.data.formats import load_path

UM_PER_PX = 2.0
MARGIN_PX = 300


def hex_spots(n_rows: int = 8, n_cols: int = 16, seed: int = 0):
    """Visium-like spots: (array_row, array_col, full-resolution pixel x/y), a planted left/right domain."""
    rng = np.random.default_rng(seed)
    r, c, um = visium_lattice(n_rows, n_cols)
    px = um / UM_PER_PX + MARGIN_PX + rng.normal(0, 1.0, um.shape)
    return r, c, px, np.where(c < n_cols // 2, "cortex", "medulla")


def tissue(px: np.ndarray, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    width, height = ((px.max(axis=0) + MARGIN_PX) * scale).astype(int)
    return rng.normal([190, 120, 170], 30, (height, width, 3)).clip(0, 255).astype(np.uint8)


def write_h5ad(path: Path, **columns) -> Path:
    import anndata as ad

    r, c, px, domain = hex_spots()
    obs = pd.DataFrame({"array_row": r, "array_col": c}, index=[f"s{i}" for i in range(len(r))])
    for name, kind in columns.items():
        obs[name] = pd.Categorical(domain) if kind == "domain" else (c // 4).astype(int)
    rng = np.random.default_rng(0)
    a = ad.AnnData(X=rng.poisson(3.0, (len(r), 8)).astype(np.float32), obs=obs,
                   var=pd.DataFrame(index=[f"G{j}" for j in range(8)]))
    a.obsm["spatial"] = px
    a.uns["spatial"] = {path.stem: {"images": {"hires": tissue(px)},
                                    "scalefactors": {"tissue_hires_scalef": 1.0,
                                                     "spot_diameter_fullres": 55.0 / UM_PER_PX}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STBENCH_DATA", raising=False)


def test_common_label_columns_are_read_by_their_names(tmp_path, cache, capsys):
    path = write_h5ad(tmp_path / "MOB1.h5ad", pathology="domain", cluster="clusters")
    assert main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "labels: pathology, cluster" in out
    assert "Labels: pathology: obs column 'pathology' (found by its name; option pathology_key)" in out
    obs = load_path(path)["MOB1"].counts.obs
    assert set(obs["pathology_label"]) == {"cortex", "medulla"}
    assert obs["cluster_label"].nunique() == 4
    # none: the user says the column is not a label.
    obs = load_path(path, pathology_key="none", cluster_key="none")["MOB1"].counts.obs
    assert obs["pathology_label"].isna().all() and obs["cluster_label"].isna().all()


def test_other_candidate_columns_are_listed_with_the_option_that_reads_them(tmp_path, cache, capsys):
    path = write_h5ad(tmp_path / "MOB1.h5ad", tissue_type="domain", leaf="clusters")
    assert main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "labels: none" in out
    line = next(line for line in out.splitlines() if line.startswith("Labels:"))
    assert "no spatial-domain ARI/NMI" in line and "tissue_type (2 values)" in line and "leaf (4 values)" in line
    assert "array_row" not in line and "pathology_key=<column>" in line and "cluster_key=<column>" in line
    assert main(["data", "info", str(path), "--data-option", "pathology_key=tissue_type"]) == 0
    assert "labels: pathology" in capsys.readouterr().out


def write_visium(root: Path, sections=("V1", "V2")) -> Path:
    """Space Ranger folders (mtx counts, tissue_positions.csv, hires PNG) and samples.csv."""
    from PIL import Image
    from scipy.io import mmwrite
    from scipy.sparse import csr_matrix

    rows = []
    for i, sid in enumerate(sections):
        r, c, px, _ = hex_spots(seed=i)
        barcodes = [f"AAAC{j:04d}-1" for j in range(len(r))]
        outs = root / f"{sid}_outs"
        matrix = outs / "filtered_feature_bc_matrix"
        (outs / "spatial").mkdir(parents=True)
        matrix.mkdir()
        counts = np.random.default_rng(i).poisson(3.0, (8, len(r)))  # genes x barcodes, as 10x writes it
        with gzip.open(matrix / "matrix.mtx.gz", "wb") as fh:
            mmwrite(fh, csr_matrix(counts))
        with gzip.open(matrix / "features.tsv.gz", "wt") as fh:
            fh.writelines(f"G{j}\tG{j}\tGene Expression\n" for j in range(8))
        with gzip.open(matrix / "barcodes.tsv.gz", "wt") as fh:
            fh.writelines(f"{b}\n" for b in barcodes)
        pd.DataFrame({"barcode": barcodes, "in_tissue": 1, "array_row": r, "array_col": c,
                      "pxl_row_in_fullres": px[:, 1], "pxl_col_in_fullres": px[:, 0]}).to_csv(
            outs / "spatial" / "tissue_positions.csv", index=False)
        (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(
            {"spot_diameter_fullres": 55.0 / UM_PER_PX, "tissue_hires_scalef": 0.5}))
        Image.fromarray(tissue(px, i, 0.5)).save(outs / "spatial" / "tissue_hires_image.png")
        rows.append({"section": sid, "patient": f"P{i}", "path": outs.name})
    pd.DataFrame(rows).to_csv(root / "samples.csv", index=False)
    return root


def write_loupe(path: Path, barcodes, labels, name: str = "Pathology") -> Path:
    pd.DataFrame({"Barcode": barcodes, name: labels}).to_csv(path, index=False)
    return path


def test_visium_reads_loupe_browser_label_exports(tmp_path, cache, capsys):
    root = write_visium(tmp_path / "visium")
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "labels: none" in out and "pathology_csv" in out  # says how labels get in
    for i, sid in enumerate(("V1", "V2")):
        r, c, _, domain = hex_spots(seed=i)
        barcodes = [f"AAAC{j:04d}-1" for j in range(len(r))]
        domain = domain.astype(object)
        domain[0] = ""  # an unlabelled spot, as Loupe writes it
        write_loupe(root / f"{sid}_outs" / "Pathology.csv", barcodes[:-1], domain[:-1])  # the last is not listed
    assert main(["data", "info", str(root), "--data-option", "pathology_csv=Pathology.csv"]) == 0
    out = capsys.readouterr().out
    assert "labels: pathology" in out and "Loupe Browser CSV Pathology.csv (option pathology_csv)" in out
    obs = load_path(root, pathology_csv="Pathology.csv")["V1"].counts.obs
    expected = hex_spots()[3]
    assert obs["pathology_label"].iloc[1:-1].tolist() == list(expected[1:-1])
    assert pd.isna(obs["pathology_label"].iloc[0]) and pd.isna(obs["pathology_label"].iloc[-1])
    # The sample sheet names a file per section (here the graph-based clusters of V2 only).
    sheet = pd.read_csv(root / "samples.csv")
    write_loupe(root / "V2_clusters.csv", [f"AAAC{j:04d}-1" for j in range(len(expected))],
                [f"Cluster {j % 3}" for j in range(len(expected))], "Graph-based")
    sheet["cluster_csv"] = ["", "V2_clusters.csv"]
    sheet.to_csv(root / "samples.csv", index=False)
    dataset = load_path(root)
    assert dataset["V1"].counts.obs["cluster_label"].isna().all()
    assert dataset["V2"].counts.obs["cluster_label"].nunique() == 3


def test_a_wrong_loupe_file_is_one_clear_error(tmp_path, cache, capsys):
    root = write_visium(tmp_path / "visium", sections=("V1",))
    outs = root / "V1_outs"
    (outs / "Bad.csv").write_text("spot,Pathology\nAAAC0000-1,cortex\n")
    (outs / "Other.csv").write_text("Barcode,Pathology\nTTTT0000-1,cortex\n")

    def error(option):
        assert main(["data", "info", str(root), "--data-option", option]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1
        return lines[0]

    assert "Missing.csv: label file of section V1 not found (option pathology_csv" in error("pathology_csv=Missing.csv")
    assert "Bad.csv: expected Loupe Browser's two columns Barcode,<name>" in error("pathology_csv=Bad.csv")
    assert "Other.csv: none of its 1 barcodes is a counted barcode of section V1" in error("cluster_csv=Other.csv")
