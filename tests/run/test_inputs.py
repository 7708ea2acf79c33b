"""What the harness hands a method for one fold: raw counts only on request, one common target."""
import numpy as np

from bench.data.preprocess import normalise, panel_counts, parse_panel
from bench.data.splits import make_folds
from bench.run.inputs import build_fold_inputs, fold_panel


def _fold(synthetic):
    patient_of = {s: synthetic[s].patient_id for s in synthetic.imaged_sections()}
    fold = make_folds("lopo", patient_of, seed=0)[0]
    return fold, fold_panel(synthetic, fold, parse_panel("top-mean:20"))


def test_raw_counts_are_offered_on_request_without_changing_the_target(synthetic):
    fold, genes = _fold(synthetic)
    plain = build_fold_inputs(synthetic, fold, genes, None, None)
    with_counts = build_fold_inputs(synthetic, fold, genes, None, None, needs_raw_counts=True)
    assert plain.train.counts is None
    expected = np.concatenate([panel_counts(synthetic[s].counts, genes) for s in fold.train])
    assert np.array_equal(with_counts.train.counts, expected)
    assert np.allclose(with_counts.train.counts.sum(1), expected.sum(1)) and (expected % 1 == 0).all()
    # The common target is the same for every method, whether or not it asked for counts.
    assert np.array_equal(with_counts.train.expression, plain.train.expression)
    assert np.array_equal(with_counts.train.expression, normalise(expected))
    assert np.array_equal(with_counts.truth, plain.truth)
    # Held-out counts would reveal the truth: they never reach a method.
    assert with_counts.test.counts is None and with_counts.test.expression is None
