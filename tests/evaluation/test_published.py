"""The published setting of a dataset: its folds (``--protocol published``) and its gene panel."""
from __future__ import annotations

import json
import logging

import pytest
from conftest import SHARED_DATA

from bench.data.splits import LeakageError, check_split, load_or_create_split, make_folds
from bench.registry import get_dataset_module

ALL_HER2ST = [f"{p}{i}" for p in "ABCD" for i in range(1, 7)] + [f"{p}{i}" for p in "EFGH" for i in range(1, 4)]
A2_TO_G3 = [s for s in ALL_HER2ST if s != "A1" and s[0] != "H"]


def test_her2st_published_folds_on_the_full_cohort_are_a2_to_g3_leave_one_section_out():
    published = get_dataset_module("her2st").PUBLISHED_SECTIONS
    assert list(published) == A2_TO_G3 and len(published) == 32
    patient_of = {s: s[0] for s in ALL_HER2ST}  # every section imaged (a full copy)
    folds = make_folds("published", patient_of, seed=0, published=published)
    assert len(folds) == 32
    assert [f.test for f in folds] == [(s,) for s in A2_TO_G3]
    for fold in folds:
        assert sorted(fold.train) == sorted(set(A2_TO_G3) - set(fold.test))  # A1 and H1-H3 never train
        assert len(fold.train) == 31


def test_partial_copy_makes_the_published_folds_whose_section_has_an_image_and_names_them(caplog):
    published = get_dataset_module("her2st").PUBLISHED_SECTIONS
    imaged = {s: s[0] for s in ["B4", "C2", "C3", "C4", "C5", "C6", "H1"]}  # H1: imaged but not published
    with caplog.at_level(logging.WARNING, logger="bench.data.splits"):
        folds = make_folds("published", imaged, seed=0, published=published)
    assert [f.test for f in folds] == [("B4",), ("C2",), ("C3",), ("C4",), ("C5",), ("C6",)]
    assert all("H1" not in f.train for f in folds)
    message = caplog.text
    assert "6 of the 32 published folds" in message and "B4, C2, C3, C4, C5, C6" in message
    assert "A2" in message  # a published section without an image is named


def test_published_split_is_tagged_as_leaking_and_allowed(tmp_path):
    published = get_dataset_module("her2st").PUBLISHED_SECTIONS
    patient_of = {s: s[0] for s in ["B4", "C2", "C3", "C4"]}
    split = load_or_create_split(tmp_path, "her2st", "published", 0, patient_of, published=published)
    assert split.leaks_patients is True
    assert json.loads(split.path.read_text())["leaks_patients"] is True
    # Reading the file back needs no published list: the folds are in the file.
    again = load_or_create_split(tmp_path, "her2st", "published", 0, patient_of)
    assert again.folds == split.folds and again.leaks_patients


def test_lopo_split_leaking_like_published_is_still_refused(tmp_path):
    published = get_dataset_module("her2st").PUBLISHED_SECTIONS
    patient_of = {s: s[0] for s in ["B4", "C2", "C3"]}
    split = load_or_create_split(tmp_path, "her2st", "published", 0, patient_of, published=published)
    split.protocol = "lopo"
    with pytest.raises(LeakageError, match="patient"):
        check_split(split, patient_of)


def test_dataset_without_published_folds_says_so():
    with pytest.raises(ValueError, match="declares no published folds"):
        make_folds("published", {"a": "p", "b": "q"}, seed=0, published=None)


def test_cscc_declares_its_12_sections_leave_one_out():
    published = get_dataset_module("cscc").PUBLISHED_SECTIONS
    assert len(published) == 12
    assert {s.split("_")[0] for s in published} == {"P2", "P5", "P9", "P10"}
    folds = make_folds("published", {s: s.split("_")[0] for s in published}, seed=0, published=published)
    assert len(folds) == 12 and all(len(f.train) == 11 for f in folds)


def test_her2st_published_panel_is_the_785_gene_list():
    shipped = get_dataset_module("her2st").PUBLISHED_PANEL
    genes = [g for g in shipped.read_text().splitlines() if g.strip()]
    assert len(genes) == 785 == len(set(genes))
    shared = SHARED_DATA / "gene-panels" / "her2st_785.txt"
    if shared.is_file():
        assert shipped.read_text().split() == shared.read_text().split()
