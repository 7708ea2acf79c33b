"""Loaders for other layouts (generic .h5ad, 10x Visium, HEST-1k), checked against her2st originals.

Each test writes two real her2st sections (B4, C2: two patients) in the format's own layout with its own
writers, loads them back, and checks spots, genes, coordinates, µm/px and patches (the same spot gives the
same patch up to resampling error) against the her2st loader.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import HER2ST, needs_her2st

from bench.data.dataset import SPOT_COLUMNS, DataError
from bench.data.formats import describe_section, detect_format, load_path
from bench.data.patches import PatchSpec, cut_patches
from bench.registry import get_dataset_module

pytestmark = [pytest.mark.integration, needs_her2st,
              # both sections have spots named by array position ("10x12"), as in her2st
              pytest.mark.filterwarnings("ignore:Observation names are not unique")]

SECTIONS = ["B4", "C2"]
N_GENES = 150
SPEC = PatchSpec(window_um=165.0, px=32)
HIRES_SCALE = 4  # the .h5ad fixture stores the image downscaled 4x, as Space Ranger's "hires" image


@pytest.fixture(scope="module")
def originals(her2st):
    """The her2st sections, a shared gene list, and their patches (cut once)."""
    genes = sorted(set(her2st["B4"].counts.var_names) & set(her2st["C2"].counts.var_names))
    totals = sum(np.asarray(her2st[s].counts[:, genes].X.sum(axis=0)).ravel() for s in SECTIONS)
    genes = [genes[i] for i in np.argsort(-totals, kind="stable")[:N_GENES]]
    patches = {s: cut_patches(her2st[s], SPEC)[0] for s in SECTIONS}
    return {"her2st": her2st, "genes": genes, "patches": patches}


def _hires(section, factor: int):
    """The section's JPEG decoded at 1/factor size (JPEG draft mode: never the full image) and the scale."""
    from PIL import Image

    with Image.open(section.image.path) as im:
        width = im.size[0]
        im.draft("RGB", (im.size[0] // factor, im.size[1] // factor))
        small = np.asarray(im.convert("RGB"))
    return small, small.shape[1] / width


def _check_against_original(originals, dataset, sid, *, patch_tolerance: float, got_id: str | None = None):
    her2st, genes = originals["her2st"], originals["genes"]
    ref, got = her2st[sid], dataset[got_id or sid]
    if got_id is None:
        assert got.patient_id == ref.patient_id
    a = got.counts
    assert set(SPOT_COLUMNS) <= set(a.obs.columns)
    assert list(a.var_names) == genes
    ref_counts = ref.counts[:, genes]
    assert list(a.obs_names) == list(ref_counts.obs_names)
    np.testing.assert_array_equal(a.X.toarray(), ref_counts.X.toarray())
    np.testing.assert_array_equal(a.obs[["array_x", "array_y"]].to_numpy(),
                                  ref_counts.obs[["array_x", "array_y"]].to_numpy())
    np.testing.assert_array_equal(a.obsm["spatial"], a.obs[["pixel_x", "pixel_y"]].to_numpy(float))
    # Pixel positions in full-resolution microns agree, whatever the stored image's resolution.
    np.testing.assert_allclose(a.obs[["pixel_x", "pixel_y"]].to_numpy() * got.um_per_px,
                               ref_counts.obs[["pixel_x", "pixel_y"]].to_numpy() * ref.um_per_px, atol=1.0)
    patches, _ = cut_patches(got, SPEC)
    assert patches.shape == originals["patches"][sid].shape
    diff = np.abs(patches.astype(float) - originals["patches"][sid].astype(float)).mean()
    assert diff < patch_tolerance, (sid, diff)
    return a


def _run(dataset_name, data_dir, tmp_path, monkeypatch):
    from bench.pipeline import benchmark
    from bench.run.config import BenchConfig

    monkeypatch.setenv("STBENCH_DATA", str(data_dir))
    result = benchmark(BenchConfig(methods=["mean", "linear-probe"], dataset=dataset_name, panel="top-mean:20",
                                       out=str(tmp_path / "runs"), data_dir=str(data_dir), device="cpu",
                                       params={"linear-probe": {"patch_px": 32}}, progress=False).resolved())
    assert result.ok, result.failed
    assert len(result.completed) == 4  # 2 methods x 2 leave-one-patient-out folds


# --- generic AnnData .h5ad -----------------------------------------------------------------------

def write_h5ad(originals, path):
    """One .h5ad holding both sections (obs section/patient/labels), each with its library's hires image."""
    import anndata as ad

    her2st, genes = originals["her2st"], originals["genes"]
    parts, spatial = [], {}
    for sid in SECTIONS:
        ref = her2st[sid].counts[:, genes]
        image, scale = _hires(her2st[sid], HIRES_SCALE)
        obs = pd.DataFrame({"array_col": ref.obs["array_x"].to_numpy(), "array_row": ref.obs["array_y"].to_numpy(),
                            "slice": sid, "donor": her2st[sid].patient_id, "library": f"lib_{sid}",
                            "pathology": pd.Categorical(ref.obs["pathology_label"].to_numpy())}, index=ref.obs_names)
        part = ad.AnnData(X=ref.X.copy(), obs=obs, var=pd.DataFrame(index=genes))
        part.obsm["spatial"] = ref.obs[["pixel_x", "pixel_y"]].to_numpy(float)
        parts.append(part)
        # Her2st is ST: 100 µm spots, so the file's spot diameter is 100 µm in full-resolution pixels.
        spatial[f"lib_{sid}"] = {
            "images": {"hires": image},
            "scalefactors": {"tissue_hires_scalef": scale, "spot_diameter_fullres": 100.0 / her2st[sid].um_per_px},
        }
    adata = ad.concat(parts)
    adata.uns["spatial"] = spatial
    adata.write_h5ad(path)


H5AD_OPTIONS = dict(section_key="slice", patient_key="donor", library_key="library",
                    pathology_key="pathology", spot_diameter_um=100.0)


def test_h5ad_matches_her2st_and_runs(originals, tmp_path, monkeypatch):
    folder = tmp_path / "h5ad"
    folder.mkdir()
    write_h5ad(originals, folder / "two_sections.h5ad")
    module = get_dataset_module("h5ad")
    dataset = module.load(folder / "two_sections.h5ad", **H5AD_OPTIONS)
    assert sorted(dataset.sections) == SECTIONS
    assert dataset.patients() == {"B": ["B4"], "C": ["C2"]}
    for sid in SECTIONS:
        ref = originals["her2st"][sid]
        assert dataset[sid].um_per_px == pytest.approx(ref.um_per_px * HIRES_SCALE, rel=0.01)
        a = _check_against_original(originals, dataset, sid, patch_tolerance=12.0)
        ref_labels = ref.counts.obs["pathology_label"].astype(str).to_numpy()
        np.testing.assert_array_equal(a.obs["pathology_label"].astype(str).to_numpy(), ref_labels)
    # Without options: one section per file, named after the file, its own patient; no library -> no image.
    assert detect_format(folder / "two_sections.h5ad") == detect_format(folder) == "h5ad"
    for sid in SECTIONS:
        has_labels = originals["her2st"][sid].counts.obs["pathology_label"].notna().any()
        line = describe_section(dataset[sid])
        assert "µm/px" in line and line.endswith("labels: pathology" if has_labels else "labels: none")
    # The "donor" column is found by its name; it holds two patients, so one section per file is refused.
    with pytest.raises(DataError, match="2 patients in obs column 'donor' .found by its name.*section_key="):
        load_path(folder, spot_diameter_um=100.0)
    plain = load_path(folder, spot_diameter_um=100.0, patient_key="none")
    assert list(plain.sections) == ["two_sections"]
    assert plain["two_sections"].patient_id == "two_sections"
    assert plain["two_sections"].image is None
    # A run through load_dataset (root = <data dir>/h5ad) with the default options: sections per file.
    run_dir = tmp_path / "data" / "h5ad"
    run_dir.mkdir(parents=True)
    for sid in SECTIONS:
        one = tmp_path / f"{sid}.h5ad"
        write_one = module._read_file(folder / "two_sections.h5ad")
        part = write_one[write_one.obs["slice"] == sid].copy()
        part.uns["spatial"] = {f"lib_{sid}": write_one.uns["spatial"][f"lib_{sid}"]}
        part.write_h5ad(one)
        one.rename(run_dir / f"{sid}.h5ad")
    _run("h5ad", tmp_path / "data", tmp_path, monkeypatch)


def test_h5ad_errors_name_file_and_field(originals, tmp_path):
    module = get_dataset_module("h5ad")
    with pytest.raises(DataError, match="file or folder not found"):
        module.load(tmp_path / "nothing.h5ad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .h5ad files"):
        module.load(tmp_path / "empty")
    path = tmp_path / "x.h5ad"
    write_h5ad(originals, path)
    with pytest.raises(DataError, match=r"x\.h5ad: obs has no column 'patient' \(option patient_key\)"):
        module.load(path, section_key="slice", patient_key="patient")
    with pytest.raises(DataError, match=r"x\.h5ad: uns\['spatial'\] has no library"):
        module.load(path, section_key="slice", library_key="donor")


# --- 10x Visium (Space Ranger folders + sample sheet) --------------------------------------------

def _write_10x_h5(path, X, barcodes, genes):
    """Space Ranger's filtered_feature_bc_matrix.h5 (CellRanger v3 layout: CSC genes x barcodes)."""
    import h5py
    import scipy.sparse as sp

    m = sp.csc_matrix(sp.csr_matrix(X).T.astype(np.int32))
    with h5py.File(path, "w") as fh:
        g = fh.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices.astype(np.int64), m.indptr.astype(np.int64)
        g["shape"] = np.array(m.shape, dtype=np.int32)
        f = g.create_group("features")
        f["id"] = np.array(genes, dtype="S")
        f["name"] = np.array(genes, dtype="S")
        f["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        f["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        f["_all_tag_keys"] = np.array([b"genome"])


def _write_10x_mtx(folder, X, barcodes, genes):
    """filtered_feature_bc_matrix/ (Matrix Market genes x barcodes, gzipped TSVs)."""
    import gzip

    import scipy.io
    import scipy.sparse as sp

    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csr_matrix(X).T.astype(np.int64).tocoo())
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        fh.writelines(f"{g}\t{g}\tGene Expression\n" for g in genes)
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.writelines(f"{b}\n" for b in barcodes)


def write_visium(originals, root):
    """B4: .h5 counts, tissue_positions.csv, full-resolution image by path in the sheet (her2st's at 1/4 size).
    C2: mtx counts, tissue_positions_list.csv (no header), hires PNG with its scale factor."""
    from PIL import Image

    her2st, genes = originals["her2st"], originals["genes"]
    rows = []
    for sid in SECTIONS:
        ref = her2st[sid].counts[:, genes]
        outs = root / f"{sid}_outs"
        (outs / "spatial").mkdir(parents=True)
        barcodes = list(ref.obs_names)
        positions = pd.DataFrame({"barcode": barcodes, "in_tissue": 1, "array_row": ref.obs["array_y"].to_numpy(),
                                  "array_col": ref.obs["array_x"].to_numpy(),
                                  "pxl_row_in_fullres": ref.obs["pixel_y"].to_numpy(),
                                  "pxl_col_in_fullres": ref.obs["pixel_x"].to_numpy()})
        positions = pd.concat([positions, pd.DataFrame([{"barcode": "OFFTISSUE-1", "in_tissue": 0, "array_row": 0,
                                                         "array_col": 0, "pxl_row_in_fullres": 0.0,
                                                         "pxl_col_in_fullres": 0.0}])])
        # Her2st's µm/px written as Visium's: 55 µm spots are 55/um_per_px full-resolution pixels across.
        factors = {"spot_diameter_fullres": 55.0 / her2st[sid].um_per_px, "fiducial_diameter_fullres": 1.0,
                   "tissue_lowres_scalef": 0.01}
        if sid == "B4":  # the "full-resolution" image is her2st's at 1/4 size (fast), positions in its pixels
            image, scale = _hires(her2st[sid], HIRES_SCALE)
            Image.fromarray(image).save(root / "B4_fullres.jpg", quality=95)
            positions[["pxl_row_in_fullres", "pxl_col_in_fullres"]] *= scale
            factors["spot_diameter_fullres"] *= scale
            _write_10x_h5(outs / "filtered_feature_bc_matrix.h5", ref.X, barcodes, genes)
            positions.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
            rows.append({"section": sid, "patient": her2st[sid].patient_id, "path": outs.name,
                         "image": "B4_fullres.jpg"})
        else:
            _write_10x_mtx(outs / "filtered_feature_bc_matrix", ref.X, barcodes, genes)
            positions.to_csv(outs / "spatial" / "tissue_positions_list.csv", index=False, header=False)
            image, factors["tissue_hires_scalef"] = _hires(her2st[sid], HIRES_SCALE)
            Image.fromarray(image).save(outs / "spatial" / "tissue_hires_image.png", compress_level=1)
            rows.append({"section": sid, "patient": her2st[sid].patient_id, "path": str(outs), "image": ""})
        (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(factors))
    pd.DataFrame(rows).to_csv(root / "samples.csv", index=False)


def test_visium_matches_her2st_and_runs(originals, tmp_path, monkeypatch):
    root = tmp_path / "data" / "visium"
    root.mkdir(parents=True)
    write_visium(originals, root)
    assert detect_format(root) == detect_format(root / "samples.csv") == "visium"
    dataset = load_path(root)
    assert sorted(dataset.sections) == SECTIONS
    assert dataset.patients() == {"B": ["B4"], "C": ["C2"]}
    her2st = originals["her2st"]
    assert dataset["B4"].image.source == str(root / "B4_fullres.jpg")
    assert dataset["B4"].um_per_px == pytest.approx(her2st["B4"].um_per_px * HIRES_SCALE, rel=0.01)
    assert dataset["C2"].um_per_px == pytest.approx(her2st["C2"].um_per_px * HIRES_SCALE, rel=0.01)
    _check_against_original(originals, dataset, "B4", patch_tolerance=12.0)
    _check_against_original(originals, dataset, "C2", patch_tolerance=12.0)
    _run("visium", tmp_path / "data", tmp_path, monkeypatch)


def test_visium_errors_name_file_and_field(originals, tmp_path):
    module = get_dataset_module("visium")
    with pytest.raises(DataError, match=r"samples\.csv: sample sheet not found"):
        module.load(tmp_path)
    write_visium(originals, tmp_path)
    (tmp_path / "C2_outs" / "spatial" / "tissue_positions_list.csv").unlink()
    with pytest.raises(DataError, match="neither tissue_positions.csv nor tissue_positions_list.csv"):
        module.load(tmp_path)
    factors = tmp_path / "B4_outs" / "spatial" / "scalefactors_json.json"
    factors.write_text(json.dumps({"tissue_hires_scalef": 0.2}))
    with pytest.raises(DataError, match=r"scalefactors_json\.json: field spot_diameter_fullres"):
        module.load(tmp_path)
    (tmp_path / "B4_outs" / "filtered_feature_bc_matrix.h5").unlink()
    factors.write_text(json.dumps({"spot_diameter_fullres": 70.0}))
    with pytest.raises(DataError, match="neither filtered_feature_bc_matrix.h5 nor filtered_feature_bc_matrix/"):
        module.load(tmp_path)
    pd.DataFrame({"section": ["B4"], "path": ["B4_outs"]}).to_csv(tmp_path / "samples.csv", index=False)
    with pytest.raises(DataError, match=r"samples\.csv: missing column\(s\) \['patient'\]"):
        module.load(tmp_path)


# --- HEST-1k sample layout -----------------------------------------------------------------------

def write_hest(originals, root):
    """st/<id>.h5ad (spots in slide pixels), wsis/<id>.tif (tiled TIFF, here her2st's image at 1/4 size),
    and HEST's metadata CSV (id, patient, pixel_size_um_estimated)."""
    import anndata as ad
    import tifffile

    her2st, genes = originals["her2st"], originals["genes"]
    (root / "st").mkdir(parents=True)
    (root / "wsis").mkdir()
    meta = []
    for sid in SECTIONS:
        ref = her2st[sid].counts[:, genes]
        image, scale = _hires(her2st[sid], HIRES_SCALE)
        tifffile.imwrite(root / "wsis" / f"{sid}.tif", image, tile=(256, 256), photometric="rgb")
        xy = ref.obs[["pixel_x", "pixel_y"]].to_numpy(float) * scale
        obs = pd.DataFrame({"in_tissue": 1, "array_row": ref.obs["array_y"].to_numpy(),
                            "array_col": ref.obs["array_x"].to_numpy(), "pxl_col_in_fullres": xy[:, 0],
                            "pxl_row_in_fullres": xy[:, 1]}, index=ref.obs_names)
        st = ad.AnnData(X=ref.X.copy(), obs=obs, var=pd.DataFrame(index=genes))
        st.obsm["spatial"] = xy
        st.write_h5ad(root / "st" / f"{sid}.h5ad")
        meta.append({"dataset_title": "her2st", "id": sid, "patient": her2st[sid].patient_id, "organ": "Breast",
                     "st_technology": "Spatial Transcriptomics",
                     "pixel_size_um_estimated": her2st[sid].um_per_px / scale})
    pd.DataFrame(meta).to_csv(root / "HEST_v1_1_0.csv", index=False)


def test_hest_matches_her2st_and_runs(originals, tmp_path, monkeypatch):
    pytest.importorskip("tifffile")
    root = tmp_path / "data" / "hest"
    write_hest(originals, root)
    assert detect_format(root) == "hest"
    dataset = load_path(root)
    assert sorted(dataset.sections) == SECTIONS
    assert dataset.patients() == {"B": ["B4"], "C": ["C2"]}
    for sid in SECTIONS:
        _check_against_original(originals, dataset, sid, patch_tolerance=12.0)
    # The slide is read window by window: read() gives a reader, not the pixels.
    windows = dataset["B4"].image.read()
    assert not isinstance(windows, np.ndarray)
    assert windows[10:20, 30:50].shape == (10, 20, 3)
    assert dataset["B4"].image.size() == (windows.shape[1], windows.shape[0])
    _run("hest", tmp_path / "data", tmp_path, monkeypatch)


def test_hest_errors_name_file_and_field(originals, tmp_path):
    pytest.importorskip("tifffile")
    module = get_dataset_module("hest")
    with pytest.raises(DataError, match="no HEST data here"):
        module.load(tmp_path)
    write_hest(originals, tmp_path)
    (tmp_path / "wsis" / "C2.tif").unlink()
    assert module.load(tmp_path)["C2"].image is None  # expression only
    meta = pd.read_csv(tmp_path / "HEST_v1_1_0.csv")
    meta.loc[0, "pixel_size_um_estimated"] = np.nan
    meta.to_csv(tmp_path / "HEST_v1_1_0.csv", index=False)
    with pytest.raises(DataError, match=r"HEST_v1_1_0\.csv: sample B4 has no positive pixel_size_um_estimated"):
        module.load(tmp_path)
    meta.iloc[1:].to_csv(tmp_path / "HEST_v1_1_0.csv", index=False)
    with pytest.raises(DataError, match=r"HEST_v1_1_0\.csv: no row with id 'B4'"):
        module.load(tmp_path)
    (tmp_path / "wsis" / "B4.tif").write_bytes(b"not a tiff")
    meta.to_csv(tmp_path / "HEST_v1_1_0.csv", index=False)
    meta.loc[0, "pixel_size_um_estimated"] = 1.0
    meta.to_csv(tmp_path / "HEST_v1_1_0.csv", index=False)
    with pytest.raises(DataError, match=r"B4\.tif: not a readable TIFF"):
        module.load(tmp_path)["B4"].image.size()


# --- cSCC, GEO GSE144240 -------------------------------------------------------------------------

CSCC_NAMES = {"B4": ("GSM4284316", "P2_ST_rep1"), "C2": ("GSM4284319", "P5_ST_rep1")}


def write_cscc(originals, root):
    """GSE144240_RAW files: <GSM>_<name>.jpg, <GSM>_<name>_stdata.tsv.gz (gzipped, as GEO serves it; C2
    unzipped, as Hist2ST's instructions leave it) and <GSM>_spot_data-selection-<name>.tsv, whose x, y are
    the array positions off by a little (rounded when joined). Images are her2st's at 1/4 size."""
    from PIL import Image

    her2st, genes = originals["her2st"], originals["genes"]
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for sid, (gsm, name) in CSCC_NAMES.items():
        ref = her2st[sid].counts[:, genes]
        counts = pd.DataFrame(ref.X.toarray().astype(int), index=ref.obs_names, columns=genes)
        suffix = ".tsv.gz" if sid == "B4" else ".tsv"
        counts.to_csv(root / f"{gsm}_{name}_stdata{suffix}", sep="\t")
        jitter = rng.uniform(-0.2, 0.2, (ref.n_obs, 2))
        image, scale = _hires(her2st[sid], HIRES_SCALE)  # a smaller image keeps the test fast
        spots = pd.DataFrame({"x": ref.obs["array_x"].to_numpy() + jitter[:, 0],
                              "y": ref.obs["array_y"].to_numpy() + jitter[:, 1],
                              "new_x": ref.obs["array_x"].to_numpy(), "new_y": ref.obs["array_y"].to_numpy(),
                              "pixel_x": ref.obs["pixel_x"].to_numpy() * scale,
                              "pixel_y": ref.obs["pixel_y"].to_numpy() * scale, "selected": 1})
        spots = pd.concat([spots, pd.DataFrame([{"x": 99.0, "y": 99.0, "new_x": 99, "new_y": 99, "pixel_x": 5.0,
                                                 "pixel_y": 5.0, "selected": 1}])])  # a spot without counts
        spots.to_csv(root / f"{gsm}_spot_data-selection-{name}.tsv", sep="\t", index=False)
        Image.fromarray(image).save(root / f"{gsm}_{name}.jpg", quality=95)


def test_cscc_matches_her2st_and_runs(originals, tmp_path, monkeypatch):
    root = tmp_path / "data" / "cscc"
    write_cscc(originals, root)
    assert detect_format(root) == "cscc"
    dataset = load_path(root)
    assert describe_section(dataset["P2_ST_rep1"]).endswith("labels: none")
    assert list(dataset.sections) == ["P2_ST_rep1", "P5_ST_rep1"]
    assert dataset.patients() == {"P2": ["P2_ST_rep1"], "P5": ["P5_ST_rep1"]}
    for sid, (_, name) in CSCC_NAMES.items():
        assert dataset[name].um_per_px == pytest.approx(originals["her2st"][sid].um_per_px * HIRES_SCALE, rel=0.01)
        _check_against_original(originals, dataset, sid, patch_tolerance=12.0, got_id=name)
    _run("cscc", tmp_path / "data", tmp_path, monkeypatch)


def test_cscc_errors_name_file_and_field(originals, tmp_path):
    module = get_dataset_module("cscc")
    with pytest.raises(DataError, match="no \\*_<patient>_ST_rep<n>_stdata"):
        module.load(tmp_path)
    write_cscc(originals, tmp_path)
    (tmp_path / "GSM4284319_spot_data-selection-P5_ST_rep1.tsv").unlink()
    with pytest.raises(DataError, match=r"spot file of section P5_ST_rep1 .* not found"):
        module.load(tmp_path)
    spots = tmp_path / "GSM4284316_spot_data-selection-P2_ST_rep1.tsv"
    pd.read_csv(spots, sep="\t").drop(columns="pixel_x").to_csv(
        tmp_path / "GSM4284319_spot_data-selection-P5_ST_rep1.tsv", sep="\t", index=False)
    with pytest.raises(DataError, match=r"selection-P5_ST_rep1\.tsv: missing column\(s\) \['pixel_x'\]"):
        _ = module.load(tmp_path)["P5_ST_rep1"].counts
    pd.read_csv(spots, sep="\t").iloc[5:].to_csv(spots, sep="\t", index=False)
    with pytest.raises(DataError, match=r"P2_ST_rep1_stdata\.tsv\.gz: 5 of \d+ spots have no row"):
        _ = module.load(tmp_path)["P2_ST_rep1"].counts


def test_detect_format_refuses_unknown_layouts(tmp_path):
    assert detect_format(HER2ST) == "her2st"
    with pytest.raises(DataError, match="file or folder not found"):
        detect_format(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a layout stbench reads"):
        detect_format(tmp_path)


def test_data_dir_option_and_data_info_on_a_path(originals, tmp_path, monkeypatch, capsys):
    from bench.cli import main
    from bench.data.locations import load_dataset

    root = tmp_path / "data" / "visium"
    root.mkdir(parents=True)
    write_visium(originals, root)
    monkeypatch.delenv("STBENCH_DATA", raising=False)
    assert sorted(load_dataset("visium", tmp_path / "data").sections) == SECTIONS  # --data-dir alone finds it
    assert main(["data", "info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 sections from 2 patients" in out
    assert "B4" in out and "C2" in out and "µm/px" in out and "labels: none" in out  # Space Ranger has no labels
