"""A frozen encoder without weights (offline: the download fails) is one encoder for every fold of a seed.

The failed download builds a model before the fallback does, and only the first time in a process (later
calls know the weights are missing); drawn from the global random state, the fallback's weights then
differed between fold 0 and fold 1, and every section was embedded again. Here the failure is simulated
the way torchvision fails: the model is built, then loading its weights raises."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data.embeddings import EmbeddingCache
from bench.data.patches import PatchStore
from bench.method import EmbeddingSpec
from bench.nn import torch_utils
from bench.nn.encoders import init_seed, load_encoder
from bench.run.embedding import SectionEmbedder


@pytest.fixture
def offline(monkeypatch):
    """torchvision's get_model as it behaves offline: it builds the network, then the weights fail."""
    import torchvision

    real = torchvision.models.get_model
    calls = []

    def get_model(name, weights=None, **kwargs):
        model = real(name, weights=None, **kwargs)  # uses up random state, as the real one does
        calls.append(weights is not None)
        if weights is not None:
            raise OSError("no internet")
        return model

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    monkeypatch.setattr(torch_utils, "_unavailable_weights", set())
    return calls


def test_two_folds_share_one_random_encoder_and_the_second_embeds_nothing(offline, synthetic, tmp_path):
    sections = synthetic.imaged_sections()[:2]
    request = EmbeddingSpec("mobilenet_v3_small", window_um=100.0, px=32)
    folds = []
    for _fold in range(2):
        torch.manual_seed(0)  # each job seeds the global state (bench.run.job), as the run does
        embedder = SectionEmbedder(request, PatchStore(tmp_path), EmbeddingCache(tmp_path), "auto", seed=0)
        embeddings = {sid: np.array(embedder.section(synthetic.name, synthetic[sid])) for sid in sections}
        folds.append((embedder, embeddings))
    (first, first_emb), (second, second_emb) = folds
    assert offline[0] is True and offline.count(True) == 1  # fold 0 tried the download; fold 1 knew better
    assert first.encoder.pretrained is False and second.encoder.pretrained is False
    assert first.encoder.weights_sha256 == second.encoder.weights_sha256
    assert first.encoder.forward_batches > 0 and first.cache.computed == 2
    assert second.encoder.forward_batches == 0 and second.cache.computed == 0  # read from the cache
    for sid in sections:
        np.testing.assert_array_equal(first_emb[sid], second_emb[sid])


def test_random_init_depends_on_name_and_seed_only_and_leaves_the_global_state(offline):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_encoder("mobilenet_v3_small", "auto", seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # loading drew nothing from the job's random state
    torch.manual_seed(999)
    b = load_encoder("mobilenet_v3_small", "no", seed=0)
    c = load_encoder("mobilenet_v3_small", "no", seed=1)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert init_seed("mobilenet_v3_small", 0) != init_seed("mobilenet_v3_large", 0)
