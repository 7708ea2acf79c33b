"""The inner validation split (whole training patients, seeded) and that a method never sees the test fold's
expression through it: the test sections' counts are poisoned with NaN, so any of their values that reaches a
method shows up as a non-finite number in what it was given."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from bench.data.splits import inner_validation_split, make_folds
from bench.method import Method, SpotData
from bench.run.inputs import fold_panel, method_fold_inputs


class ChoosesEpochs(Method):
    name = "chooses-epochs"

    def __init__(self):
        pass

    def wants_validation(self) -> bool:
        return True

    def fit(self, train: SpotData, validation: SpotData | None = None):
        return self

    def predict(self, test: SpotData) -> np.ndarray:
        return np.zeros((len(test), test.n_genes), dtype=np.float32)


PATIENTS = {"A1": "A", "A2": "A", "B1": "B", "C1": "C", "C2": "C", "D1": "D", "E1": "E"}


def test_inner_split_holds_out_whole_training_patients_drawn_with_the_seed():
    train = tuple(s for s in PATIENTS if s not in ("E1",))
    split = inner_validation_split(train, PATIENTS, seed=3, fold_index=1)
    held = {PATIENTS[s] for s in split.validation}
    assert split.unit == "patient" and len(held) == 1  # 20% of 4 patients, at least one
    assert {s for s in train if PATIENTS[s] in held} == set(split.validation)  # all of that patient's sections
    assert set(split.train) | set(split.validation) == set(train) and not set(split.train) & set(split.validation)
    assert inner_validation_split(train, PATIENTS, seed=3, fold_index=1) == split  # reproducible
    drawn = {inner_validation_split(train, PATIENTS, seed=s, fold_index=1).validation for s in range(20)}
    assert len(drawn) > 1  # the seed decides


def test_one_training_patient_gives_whole_sections_and_one_section_cannot_be_split():
    split = inner_validation_split(("C1", "C2"), PATIENTS, seed=0)
    assert split.unit == "section" and len(split.validation) == 1 and len(split.train) == 1
    with pytest.raises(ValueError, match="at least two training sections"):
        inner_validation_split(("B1",), PATIENTS, seed=0)


@pytest.fixture(scope="module")
def poisoned(synthetic):
    """The synthetic dataset with every count of the first lopo fold's test sections set to NaN."""
    dataset = copy.deepcopy(synthetic)
    patient_of = {s: str(dataset[s].patient_id) for s in dataset.sections}
    fold = make_folds("lopo", patient_of, 0)[0]
    genes = fold_panel(dataset, fold, _panel())  # chosen before the poison: the panel is not under test here
    for sid in fold.test:
        counts = dataset[sid].counts
        counts.X = np.full(counts.shape, np.nan, dtype=np.float32)
    return dataset, fold, genes


def _panel():
    from bench.data.preprocess import parse_panel

    return parse_panel("top-mean:10")


def test_a_method_never_sees_the_test_folds_expression(poisoned, tmp_path):
    from bench.data.patches import PatchStore

    dataset, fold, genes = poisoned
    inputs, _ = method_fold_inputs(ChoosesEpochs(), dataset, fold, genes, PatchStore(tmp_path), seed=0)
    assert not set(inputs.validation_sections) & set(fold.test)
    assert set(inputs.validation_sections) <= set(fold.train)
    assert inputs.validation_source == "training-patients" and inputs.validation_unit == "patient"
    for side in (inputs.train, inputs.validation):
        assert np.isfinite(side.expression).all()
    assert inputs.test.expression is None and inputs.test.counts is None
    assert np.isnan(inputs.truth).all()  # the poison is there, and reaches the scorer only


def test_the_poison_shows_when_the_test_fold_is_passed_as_validation(poisoned, tmp_path):
    """The check above can fail: the reproduction of a published leak ('test-fold') hands the poison over."""
    from bench.data.patches import PatchStore

    dataset, fold, genes = poisoned
    inputs, _ = method_fold_inputs(ChoosesEpochs(), dataset, fold, genes, PatchStore(tmp_path), seed=0,
                                   validation_source="test-fold")
    assert inputs.validation_source == "test-fold" and tuple(inputs.validation_sections) == fold.test
    assert np.isnan(inputs.validation.expression).all()
    assert inputs.test.expression is None  # the test side itself still carries no truth


def test_no_validation_set_for_methods_that_do_not_ask(synthetic, tmp_path):
    from bench.data.patches import PatchStore

    class Plain(ChoosesEpochs):
        def wants_validation(self) -> bool:
            return False

    patient_of = {s: str(synthetic[s].patient_id) for s in synthetic.sections}
    fold = make_folds("lopo", patient_of, 0)[0]
    genes = fold_panel(synthetic, fold, _panel())
    inputs, _ = method_fold_inputs(Plain(), synthetic, fold, genes, PatchStore(tmp_path), seed=0)
    assert inputs.validation is None and inputs.validation_source is None
    assert set(inputs.train.section_ids) == set(fold.train)
