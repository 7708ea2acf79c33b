"""Memory-efficient DenseNet (bench.nn.checkpointing): the same numbers as without it, with fewer activations
kept. Real DenseNet-121s (random initialisation) on a few 32 px patches: seconds."""
import numpy as np
import pytest
import torch
import torchvision

from bench.method import Runtime, SpotData, build_method
from bench.nn.checkpointing import checkpoint_dense_layers
from bench.nn.torch_utils import seed_everything
from bench.registry import get_method_class

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _twin_densenets():
    torch.manual_seed(0)
    plain = torchvision.models.densenet121(weights=None)
    efficient = torchvision.models.densenet121(weights=None)
    efficient.load_state_dict(plain.state_dict())
    assert checkpoint_dense_layers(efficient) == 58  # 6 + 12 + 24 + 16 dense layers
    return plain, efficient


def _step(model, x, optimizer) -> int:
    """One training step; returns the bytes of the activations autograd kept for its backward pass (the
    tensors saved in the forward, each once, weights and running statistics left out)."""
    seen = {t.data_ptr() for t in model.state_dict().values()}
    kept = 0

    def pack(t):
        nonlocal kept
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            kept += t.numel() * t.element_size()
        return t

    optimizer.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).square().mean()
    loss.backward()
    optimizer.step()
    return kept


def test_checkpointed_densenet_trains_to_the_same_weights_statistics_and_predictions():
    plain, efficient = _twin_densenets()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kept = {}
    for model in (plain, efficient):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        # two steps: the second runs on weights and statistics the first changed
        kept[model] = [_step(model, x, optimizer) for _ in range(2)][0]
    assert kept[efficient] < 0.5 * kept[plain], "the bottlenecks are recomputed, not kept"
    # Running statistics included: torchvision's own memory_efficient=True updates them twice a step.
    plain_state, efficient_state = plain.state_dict(), efficient.state_dict()
    assert all(torch.equal(plain_state[k], efficient_state[k]) for k in plain_state)
    plain.eval()
    efficient.eval()
    with torch.no_grad():
        torch.testing.assert_close(efficient(x), plain(x), rtol=1e-6, atol=1e-7)


def _spots(n, seed, px=32, n_genes=5):
    rng = np.random.default_rng(seed)
    coords = np.stack([np.arange(n) % 4, np.arange(n) // 4], 1).astype(np.int64)
    return SpotData(genes=[f"g{i}" for i in range(n_genes)], section_ids=np.repeat(["s0", "s1"], n // 2),
                    spot_ids=np.arange(n).astype(str), array_coords=coords, pixel_coords=coords * 100.0,
                    patches=rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8),
                    expression=rng.random((n, n_genes)).astype(np.float32), counts=np.ones((n, n_genes), np.float32))


@pytest.mark.parametrize("name, overrides", [
    ("mclstexp", {"batch_size": 4, "top_k": 3, "max_position": 16}),
    ("st-net", {"batch_size": 4, "lr": 1e-2}),  # a visible step: at the published 1e-6 nothing would move
])
def test_paper_profile_predicts_the_same_with_memory_efficient_on_and_off(name, overrides):
    train, test = _spots(8, 0), _spots(4, 1)
    preds = {}
    for efficient in (True, False):
        method = build_method(get_method_class(name), "paper",
                              {"epochs": 1, "patch_px": 32, "memory_efficient": efficient, **overrides})
        method.runtime = Runtime(seed=0, progress=False, pretrained="no")
        seed_everything(0)
        preds[efficient] = method.fit(train).predict(test)
    np.testing.assert_allclose(preds[True], preds[False], rtol=1e-5, atol=1e-6)
    assert np.abs(preds[True] - train.expression.mean(axis=0)).max() > 1e-4, "training moved the predictions"
