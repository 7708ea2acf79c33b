"""Integration tests on the real her2st data (../shared/data or STBENCH_DATA).

Facts checked here come from the data's own description (../shared/data/README.md): 36 sections
A1-H3 from 8 patients, six with a full-resolution image (B4, C2-C6, 1,193 spots), ~0.687 µm/px.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from conftest import HER2ST, PANEL_785, SHARED_DATA, needs_her2st, needs_panel_785

from bench.data.dataset import SPOT_COLUMNS, DataError
from bench.data.patches import PatchSpec, PatchStore
from bench.data.preprocess import parse_panel, select_panel
from bench.data.splits import LeakageError, load_or_create_split, make_folds, split_path

pytestmark = [pytest.mark.integration, needs_her2st]

ALL_SECTIONS = sorted(
    [f"{p}{i}" for p in "ABCD" for i in range(1, 7)] + [f"{p}{i}" for p in "EFGH" for i in range(1, 4)])
IMAGED = ["B4", "C2", "C3", "C4", "C5", "C6"]


def _imaged_patients(her2st) -> dict[str, str]:
    return {sid: her2st[sid].patient_id for sid in her2st.imaged_sections()}


# --- sections, patients, images ------------------------------------------------------------------

def test_36_sections_from_8_patients(her2st):
    assert len(ALL_SECTIONS) == 36
    assert sorted(her2st.sections) == ALL_SECTIONS
    for sid, section in her2st.sections.items():
        assert section.patient_id == sid[0]
    patients = her2st.patients()
    assert sorted(patients) == list("ABCDEFGH")
    assert sorted(patients["B"]) == [f"B{i}" for i in range(1, 7)]
    assert sorted(patients["E"]) == ["E1", "E2", "E3"]


def test_six_imaged_sections_rest_expression_only(her2st):
    assert sorted(her2st.imaged_sections()) == IMAGED
    assert sum(her2st[sid].counts.n_obs for sid in IMAGED) == 1193
    expression_only = sorted(her2st.expression_only_sections())
    assert expression_only == sorted(set(ALL_SECTIONS) - set(IMAGED))
    assert len(expression_only) == 30
    for sid in expression_only:
        assert her2st[sid].has_image is False
        assert her2st[sid].um_per_px is None
    for sid in IMAGED:
        assert her2st[sid].has_image is True
        assert her2st[sid].image.source.endswith(".jpg")


# --- counts as AnnData ---------------------------------------------------------------------------

def test_every_section_anndata_contract(her2st):
    """All 36 sections load (this reads every count file once; the fixture keeps them for the session)."""
    for sid in ALL_SECTIONS:
        adata = her2st[sid].counts
        assert adata.n_vars > 10_000, sid
        assert adata.var_names.is_unique, sid
        assert adata.n_obs > 100, sid
        assert set(SPOT_COLUMNS) <= set(adata.obs.columns), sid
        np.testing.assert_array_equal(adata.obsm["spatial"], adata.obs[["pixel_x", "pixel_y"]].to_numpy(float))
        x = adata.X
        values = x.data if hasattr(x, "data") else np.asarray(x).ravel()
        assert values.size > 0, sid
        assert (values >= 0).all(), sid
        np.testing.assert_array_equal(values, np.round(values), err_msg=sid)
        # Rows are spots at distinct array positions.
        assert not adata.obs[["array_x", "array_y"]].duplicated().any(), sid


def test_b4_join_matches_pandas(her2st):
    """Spots = rows of ST-cnts/B4.tsv.gz whose '<x>x<y>' name is a spot of the spotfile; computed here
    independently, and the joined pixel coordinates and per-spot totals must agree with the loader."""
    counts = pd.read_csv(HER2ST / "data" / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0)
    spots = pd.read_csv(HER2ST / "data" / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
    pixel_of = {(int(x), int(y)): (px, py) for x, y, px, py in
                zip(spots["x"], spots["y"], spots["pixel_x"], spots["pixel_y"])}
    joined = [name for name in counts.index if tuple(int(v) for v in name.split("x")) in pixel_of]
    assert 0 < len(joined) <= len(counts)

    adata = her2st["B4"].counts
    assert adata.n_obs == len(joined) == 283
    assert list(adata.obs_names) == joined
    expected_px = np.array([pixel_of[tuple(int(v) for v in name.split("x"))] for name in joined])
    np.testing.assert_allclose(adata.obs[["pixel_x", "pixel_y"]].to_numpy(float), expected_px)
    np.testing.assert_allclose(np.asarray(adata.X.sum(axis=1)).ravel(), counts.loc[joined].sum(axis=1).to_numpy())
    assert list(adata.var_names) == [str(c) for c in counts.columns]


def test_header_without_counts_matches_the_counts(her2st):
    """`data info` reads each section's header (first column and width of its count table, spot file,
    labels) instead of its counts: the same spot table and gene count, for every section."""
    from bench.data.locations import load_dataset

    fresh = load_dataset("her2st", SHARED_DATA)  # nothing loaded yet
    for sid in ALL_SECTIONS:
        header = fresh[sid].header
        assert fresh[sid]._counts is None, "the header must not parse the counts"
        adata = her2st[sid].counts
        assert header.n_genes == adata.n_vars, sid
        pd.testing.assert_frame_equal(header.spots, adata.obs, check_like=False, obj=sid)


def test_um_per_px_from_spot_pitch(her2st):
    from scipy.spatial import cKDTree

    for sid in IMAGED:
        section = her2st[sid]
        um = section.um_per_px
        assert 0.68 < um < 0.70, (sid, um)
        # Independent sanity check: 200 µm over the median nearest-neighbour pixel distance, which the
        # spots' scatter biases 5-8% high (the nearest of several jittered neighbours is nearer than a step).
        px = section.counts.obs[["pixel_x", "pixel_y"]].to_numpy(float)
        nn = np.median(cKDTree(px).query(px, k=2)[0][:, 1])
        assert 1.03 < (200.0 / nn) / um < 1.09, sid


# --- labels --------------------------------------------------------------------------------------

def test_cluster_and_pathology_labels(her2st):
    b4 = her2st["B4"].counts.obs
    assert b4["cluster_label"].notna().mean() > 0.5
    cluster_file = pd.read_csv(HER2ST / "res" / "ST-cluster" / "lbl" / "B4-cluster-annotation.tsv.gz", sep="\t")
    assert set(b4["cluster_label"].dropna()) <= {str(v) for v in cluster_file["label"]}
    # B4 has no ST-pat file: every pathology label is missing.
    assert not (HER2ST / "data" / "ST-pat" / "lbl" / "B4_labeled_coordinates.tsv").exists()
    assert b4["pathology_label"].isna().all()

    b1 = her2st["B1"].counts.obs
    pat_file = pd.read_csv(HER2ST / "data" / "ST-pat" / "lbl" / "B1_labeled_coordinates.tsv", sep="\t")
    labelled = b1["pathology_label"].dropna()
    assert len(labelled) > 0.5 * len(b1)
    assert set(labelled) <= set(pat_file["label"].dropna())
    assert labelled.nunique() >= 3  # several tissue types, not one label smeared over all spots


# --- patches -------------------------------------------------------------------------------------

def test_patches_land_on_tissue_and_are_reused(her2st, tmp_path, monkeypatch):
    store = PatchStore(tmp_path)
    spec = PatchSpec()
    first = {}
    for sid in IMAGED:
        section = her2st[sid]
        reads = []
        original_read = section.image.read

        def counting_read(original_read=original_read, reads=reads):
            reads.append(1)
            return original_read()

        monkeypatch.setattr(section.image, "read", counting_read)
        patches = store.patches("her2st", section, spec)
        assert len(reads) == 1, sid
        assert patches.shape == (section.counts.n_obs, 224, 224, 3), sid
        assert patches.dtype == np.uint8, sid
        per_patch = np.asarray(patches, dtype=np.float32).mean(axis=(1, 2, 3))
        # White glass is 255; tissue is clearly darker, on average and for nearly every spot.
        assert per_patch.mean() < 200, (sid, per_patch.mean())
        assert (per_patch < 230).mean() > 0.95, sid
        assert store.info("her2st", section, spec).n_padded == 0
        first[sid] = np.array(patches)

    for sid in IMAGED:
        section = her2st[sid]

        def refuse(sid=sid):
            raise AssertionError(f"image of {sid} read again although its patches are cached")

        monkeypatch.setattr(section.image, "read", refuse)
        again = store.patches("her2st", section, spec)
        assert isinstance(again, np.memmap) or hasattr(again, "filename"), sid
        np.testing.assert_array_equal(np.asarray(again), first[sid])


def test_patches_are_centred_on_their_spot(her2st, tmp_path):
    """The centre of each B4 patch shows the image at (pixel_y, pixel_x); swapped x/y would not."""
    section = her2st["B4"]
    patches = PatchStore(tmp_path).patches("her2st", section, PatchSpec())
    image = section.image.read()
    centre_patch, centre_image = [], []
    for i, (cx, cy) in enumerate(section.counts.obs[["pixel_x", "pixel_y"]].to_numpy(float)):
        cx, cy = int(round(cx)), int(round(cy))
        centre_patch.append(patches[i, 96:128, 96:128].mean())
        centre_image.append(image[cy - 16:cy + 16, cx - 16:cx + 16].mean())
    assert np.corrcoef(centre_patch, centre_image)[0, 1] > 0.95
    assert np.max(np.abs(np.array(centre_patch) - np.array(centre_image))) < 10


# --- splits --------------------------------------------------------------------------------------

def test_folds_over_imaged_sections(her2st):
    patient_of = _imaged_patients(her2st)
    assert patient_of == {"B4": "B", "C2": "C", "C3": "C", "C4": "C", "C5": "C", "C6": "C"}

    lopo = make_folds("lopo", patient_of, 0)
    assert len(lopo) == 2
    assert {f.test for f in lopo} == {("B4",), ("C2", "C3", "C4", "C5", "C6")}
    for fold in lopo:
        assert sorted(fold.train + fold.test) == IMAGED
        assert not {patient_of[s] for s in fold.train} & {patient_of[s] for s in fold.test}

    loso = make_folds("loso", patient_of, 0)
    assert len(loso) == 6
    assert sorted(f.test[0] for f in loso) == IMAGED
    assert all(len(f.test) == 1 and len(f.train) == 5 for f in loso)

    kfold = make_folds("patient-kfold:2", patient_of, 0)
    assert len(kfold) == 2
    assert sorted(s for f in kfold for s in f.test) == IMAGED
    for fold in kfold:
        assert len({patient_of[s] for s in fold.test}) == 1
        assert not {patient_of[s] for s in fold.train} & {patient_of[s] for s in fold.test}


def test_split_files_leakage_flags(her2st, tmp_path):
    patient_of = _imaged_patients(her2st)
    lopo = load_or_create_split(tmp_path, "her2st", "lopo", 0, patient_of)
    assert len(lopo.folds) == 2 and lopo.leaks_patients is False
    loso = load_or_create_split(tmp_path, "her2st", "loso", 0, patient_of)
    assert len(loso.folds) == 6 and loso.leaks_patients is True
    assert json.loads(loso.path.read_text())["leaks_patients"] is True
    kfold = load_or_create_split(tmp_path, "her2st", "patient-kfold:2", 0, patient_of)
    assert len(kfold.folds) == 2 and kfold.leaks_patients is False


def test_split_file_written_once_and_reused(her2st, tmp_path):
    patient_of = _imaged_patients(her2st)
    first = load_or_create_split(tmp_path, "her2st", "lopo", 0, patient_of)
    assert first.path == split_path(tmp_path, "her2st", "lopo", 0) and first.path.is_file()
    assert len(first.sha256) == 64
    mtime = os.stat(first.path).st_mtime_ns
    second = load_or_create_split(tmp_path, "her2st", "lopo", 0, patient_of)
    assert second.sha256 == first.sha256
    assert second.folds == first.folds
    assert os.stat(second.path).st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary leftovers


def test_hand_edited_split_that_leaks_is_refused(her2st, tmp_path):
    patient_of = _imaged_patients(her2st)
    split = load_or_create_split(tmp_path, "her2st", "lopo", 0, patient_of)
    doc = json.loads(split.path.read_text())
    c_fold = next(f for f in doc["folds"] if "C2" in f["test"])
    c_fold["test"].remove("C2")
    c_fold["train"].append("C2")
    doc["leaks_patients"] = True  # the file's own flag must not license leakage under lopo
    split.path.write_text(json.dumps(doc))
    with pytest.raises(LeakageError) as err:
        load_or_create_split(tmp_path, "her2st", "lopo", 0, patient_of)
    message = str(err.value)
    assert re.search(r"patient\S*\s+C\b", message), message  # names the leaking patient
    assert str(split.path) in message


# --- gene panel ----------------------------------------------------------------------------------

@needs_panel_785
def test_785_gene_panel(her2st):
    adatas = [her2st[sid].counts for sid in IMAGED]
    spec = parse_panel(f"file:{PANEL_785}")
    genes = select_panel(spec, adatas[1:], adatas)
    listed = [g.strip() for g in PANEL_785.read_text().splitlines() if g.strip()]
    assert len(genes) == 785
    assert genes == listed
    assert len(set(genes)) == 785
    for adata in adatas:
        assert set(genes) <= set(adata.var_names)


@needs_panel_785
def test_panel_with_unknown_gene_names_file_and_gene(her2st, tmp_path):
    adatas = [her2st[sid].counts for sid in IMAGED]
    listed = [g.strip() for g in PANEL_785.read_text().splitlines() if g.strip()]
    path = tmp_path / "panel.txt"
    path.write_text("\n".join(listed[:20] + ["NOT_A_GENE_XYZ"]) + "\n")
    spec = parse_panel(f"file:{path}")
    with pytest.raises(DataError) as err:
        select_panel(spec, adatas, adatas)
    message = str(err.value)
    assert str(path.resolve()) in message
    assert "NOT_A_GENE_XYZ" in message
    assert not re.search(rf"\b{listed[0]}\b", message)  # known genes are not blamed
