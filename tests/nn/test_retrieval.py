"""Retrieval inference against a brute-force numpy reference."""
import numpy as np
import pytest

from bench.nn.retrieval import retrieve_expression


def _reference(query, keys, values, k, distance, weighting):
    out = np.zeros((len(query), values.shape[1]))
    for i, q in enumerate(query):
        cos = keys @ q / (np.linalg.norm(keys, axis=1) * np.linalg.norm(q))
        nearest = np.argsort(-cos, kind="stable")[:k]
        if weighting == "uniform":
            w = np.ones(k)
        elif weighting == "exponential":  # BLEEP's notebook: exp(-(d² - d²(top-1 match) + 1)), d = L2
            squared = ((keys[nearest] - q) ** 2).sum(1)
            w = np.exp(-(squared - squared[0] + 1))
        else:
            diff = keys[nearest] - q
            d = np.abs(diff).sum(1) if distance == "l1" else np.sqrt((diff**2).sum(1))
            w = 1 / d**2
        out[i] = (w[:, None] * values[nearest]).sum(0) / w.sum()
    return out


@pytest.mark.parametrize("distance, weighting", [("l1", "inverse-square"), ("l2", "inverse-square"),
                                                 ("l1", "uniform"), ("l2", "uniform"), ("l2", "exponential")])
def test_retrieval_matches_brute_force(distance, weighting):
    rng = np.random.default_rng(7)
    query, keys, values = rng.normal(size=(37, 16)), rng.normal(size=(300, 16)), rng.gamma(2, size=(300, 9))
    got = retrieve_expression(query, keys, values, top_k=25, distance=distance, weighting=weighting, chunk=10)
    assert np.allclose(got, _reference(query, keys, values, 25, distance, weighting), rtol=1e-5, atol=1e-6)


def test_inverse_square_weights_favour_the_closest_key():
    keys = np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0]])
    values = np.array([[10.0], [0.0], [5.0]])
    # Both of the first two keys point the query's way; the first is far closer in raw distance.
    pred = retrieve_expression(np.array([[1.01, 0.0]]), keys, values, top_k=2, distance="l2")
    assert pred[0, 0] > 9.9


def test_top_k_larger_than_the_training_set_uses_every_spot_and_bad_options_fail():
    keys, values = np.eye(3), np.arange(9.0).reshape(3, 3)
    pred = retrieve_expression(np.ones((1, 3)), keys, values, top_k=50, weighting="uniform")
    assert np.allclose(pred, values.mean(0))
    with pytest.raises(ValueError, match="distance"):
        retrieve_expression(np.ones((1, 3)), keys, values, top_k=1, distance="cosine")
    with pytest.raises(ValueError, match="weighting"):
        retrieve_expression(np.ones((1, 3)), keys, values, top_k=1, weighting="softmax")
