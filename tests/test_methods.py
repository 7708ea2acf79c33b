"""Every registered method meets the contract; the controls bracket a method that learns."""
import numpy as np
import pytest

from bench.inputs import build_fold_inputs, fold_panel
from bench.method import InvalidPredictionError, Runtime, validate_predictions
from bench.metrics import pearson_per_gene
from bench.patches import PatchStore
from bench.preprocess import parse_panel
from bench.registry import get_method_class, method_classes
from bench.splits import make_folds
from bench.torch_utils import seed_everything

# Small settings so each method runs in seconds on the tiny synthetic sections.
FAST_PARAMS = {"linear-probe": {"patch_px": 32}}


def _fold_inputs(synthetic, method, tmp_path, fold_index=0):
    patient_of = {s: synthetic[s].patient_id for s in synthetic.imaged_sections()}
    fold = make_folds("lopo", patient_of, seed=0)[fold_index]
    genes = fold_panel(synthetic, fold, parse_panel("top-mean:40"))
    return build_fold_inputs(synthetic, fold, genes, PatchStore(tmp_path), method.patch_spec(),
                             needs_raw_counts=method.needs_raw_counts, needs_test_truth=method.needs_test_truth)


def _fit_predict(name, synthetic, tmp_path, seed=0, fold_index=0):
    method = get_method_class(name)(**FAST_PARAMS.get(name, {}))
    method.runtime = Runtime(seed=seed, progress=False, pretrained="no")
    inputs = _fold_inputs(synthetic, method, tmp_path, fold_index)
    seed_everything(seed)
    pred = method.fit(inputs.train).predict(inputs.test)
    return method, inputs, validate_predictions(pred, len(inputs.test), len(inputs.genes), name)


@pytest.mark.parametrize("name", sorted(method_classes()))
def test_method_contract(name, synthetic, tmp_path):
    cls = get_method_class(name)
    assert cls.name == name and cls.description and cls.kind in ("method", "negative-control", "positive-control")
    method = cls(**FAST_PARAMS.get(name, {}))
    params = method.get_params()
    assert cls(**params).get_params() == params, "constructor must store each hyper-parameter under its name"
    method, inputs, pred = _fit_predict(name, synthetic, tmp_path)
    assert pred.shape == (len(inputs.test), len(inputs.genes))
    if not cls.needs_test_truth:
        assert inputs.test.expression is None and inputs.test.counts is None, "truth must not reach a method"


@pytest.mark.parametrize("name", sorted(method_classes()))
def test_method_is_deterministic_for_a_seed(name, synthetic, tmp_path):
    _, _, first = _fit_predict(name, synthetic, tmp_path, seed=1)
    _, _, second = _fit_predict(name, synthetic, tmp_path, seed=1)
    assert np.array_equal(first, second)


def test_controls_bracket_the_linear_probe_on_planted_genes(synthetic, tmp_path):
    planted = synthetic.attrs["planted_genes"]
    scores = {}
    for name in ("mean", "linear-probe", "spatial-oracle"):
        r_folds = []
        for fold_index in range(3):
            _, inputs, pred = _fit_predict(name, synthetic, tmp_path, fold_index=fold_index)
            r = pearson_per_gene(inputs.truth, pred)
            r_folds.append(r[np.isin(inputs.genes, planted)])
        scores[name] = np.stack(r_folds)
    assert np.isnan(scores["mean"]).all(), "constant predictions have undefined PCC, never 0"
    assert np.nanmean(scores["linear-probe"]) > 0.5
    assert np.nanmean(scores["spatial-oracle"]) > np.nanmean(scores["linear-probe"])


def test_linear_probe_records_whether_pretrained_weights_were_used(synthetic, tmp_path):
    method, _, _ = _fit_predict("linear-probe", synthetic, tmp_path)
    assert method.runtime.facts["pretrained"] is False  # pretrained="no" in these tests


def test_validate_predictions_rejects_wrong_shape_and_non_finite():
    assert validate_predictions(np.zeros((3, 2)), 3, 2, "m").dtype == np.float32
    with pytest.raises(InvalidPredictionError, match=r"shape \(2, 2\).*\(3 spots, 2 genes\)"):
        validate_predictions(np.zeros((2, 2)), 3, 2, "m")
    bad = np.zeros((3, 2))
    bad[1, 1] = np.nan
    with pytest.raises(InvalidPredictionError, match="1 non-finite"):
        validate_predictions(bad, 3, 2, "m")
    with pytest.raises(InvalidPredictionError, match="not numeric"):
        validate_predictions([["a", "b"]] * 3, 3, 2, "m")
