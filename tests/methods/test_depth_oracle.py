"""depth-oracle: each gene from the test spot's true total count alone (a declared diagnostic control)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.data.preprocess import normalise
from bench.data.splits import Fold
from bench.method import Method, SpotData, build_method
from bench.registry import get_dataset_module, get_method_class
from bench.run.inputs import build_fold_inputs


def _spots(depth: np.ndarray, counts: np.ndarray, target: str, section: str) -> SpotData:
    n = len(depth)
    return SpotData(genes=[f"g{i}" for i in range(counts.shape[1])], section_ids=np.full(n, section, dtype=object),
                    spot_ids=np.array([f"s{i}" for i in range(n)], dtype=object),
                    array_coords=np.zeros((n, 2), dtype=np.int64), pixel_coords=np.zeros((n, 2)),
                    expression=normalise(counts, target), total_counts=depth * 1.3)  # panel < all genes


def _planted(seed: int, n: int = 400):
    """Every spot has the same composition; only its depth (log-uniform over 20x) varies, plus Poisson noise."""
    rng = np.random.default_rng(seed)
    depth = np.exp(rng.uniform(np.log(200), np.log(4000), n))
    composition = rng.dirichlet(np.ones(12))
    return depth, rng.poisson(depth[:, None] * composition[None, :]).astype(float)


def _score(target: str) -> float:
    cls = get_method_class("depth-oracle")
    method = build_method(cls, "quick")
    train_depth, train_counts = _planted(0)
    test_depth, test_counts = _planted(1)
    method.fit(_spots(train_depth, train_counts, target, "A"))
    test = _spots(test_depth, test_counts, target, "B")
    pred = method.predict(test)
    assert pred.shape == test.expression.shape and pred.dtype == np.float32
    r = [np.corrcoef(pred[:, g], test.expression[:, g])[0, 1] for g in range(pred.shape[1])]
    return float(np.mean(r))


def test_depth_oracle_explains_the_per_gene_target_where_depth_is_planted():
    assert _score("per-gene") > 0.5  # depth is most of the signal


def test_depth_oracle_scores_near_zero_on_the_per_spot_target():
    assert abs(_score("per-spot")) < 0.2  # depth divided out: nothing left for it


def test_depth_oracle_is_a_declared_control_reading_only_total_counts():
    cls = get_method_class("depth-oracle")
    assert cls.kind == "diagnostic-control"
    assert cls.needs_total_counts and not cls.needs_test_truth and not cls.needs_raw_counts


def test_harness_gives_total_counts_over_all_genes_only_to_methods_that_declare_them():
    dataset = get_dataset_module("synthetic").load(n_patients=2, sections_per_patient=1, grid=6)
    fold = Fold(0, ("P1",), ("Q1",))
    genes = list(dataset["P1"].counts.var_names[:5])
    inputs = build_fold_inputs(dataset, fold, genes, store=None, patch_spec=None, needs_total_counts=True)
    every_gene = np.asarray(dataset["Q1"].counts.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(inputs.test.total_counts, every_gene)
    panel_only = np.asarray(dataset["Q1"].counts[:, genes].X.sum(axis=1)).ravel()
    assert (inputs.test.total_counts >= panel_only).all() and (inputs.test.total_counts > panel_only).any()
    assert inputs.test.expression is None  # the depth, not the truth
    plain = build_fold_inputs(dataset, fold, genes, store=None, patch_spec=None)
    assert plain.test.total_counts is None and plain.train.total_counts is None


def test_a_real_method_may_not_ask_for_the_test_spots_depth():
    class Peeker(Method):
        name = "peeker"
        needs_total_counts = True

    with pytest.raises(ValueError, match="only controls may see the test spots' total counts"):
        build_method(Peeker, "quick")
