"""BLEEP's soft-target CLIP loss against a direct numpy computation."""
import numpy as np
import torch

from bench.registry import get_method_class


def _module():
    import sys

    return sys.modules[get_method_class("bleep").__module__]


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_soft_targets_are_the_softmax_of_mean_within_modality_similarity():
    rng = np.random.default_rng(0)
    image, spot = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    got = _module().soft_targets(torch.tensor(image), torch.tensor(spot)).numpy()
    expected = _softmax((image @ image.T + spot @ spot.T) / 2)
    assert np.allclose(got, expected)
    assert np.allclose(got.sum(axis=1), 1)
    # Well-separated embeddings give targets close to the identity (plain CLIP is the limit).
    far = np.eye(5) * 20
    assert np.allclose(_module().soft_targets(torch.tensor(far), torch.tensor(far)).numpy(), np.eye(5), atol=1e-6)


def test_soft_clip_loss_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    image, spot = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    logits = spot @ image.T
    targets = _softmax((image @ image.T + spot @ spot.T) / 2)
    log_p_rows = np.log(_softmax(logits))
    log_p_cols = np.log(_softmax(logits.T))
    expected = np.mean((-(targets * log_p_rows).sum(1) - (targets.T * log_p_cols).sum(1)) / 2)
    got = _module().soft_clip_loss(torch.tensor(image), torch.tensor(spot)).item()
    assert np.isclose(got, expected)
