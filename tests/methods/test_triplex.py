"""TRIPLEX: the suite's model against the ORIGINAL class's output (tests/fixtures/reference/triplex.npz, made
by tests/fixtures/reference/make_triplex_reference.py from NEXGEM/TRIPLEX at 7f8ad96), its loss, augmentation, PEGH and paper profile."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from bench.registry import get_method_class

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
REFERENCE = FIXTURES / "triplex.npz"


def _tool():
    spec = importlib.util.spec_from_file_location("triplex_reference", FIXTURES / "make_triplex_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _triplex_module():
    """methods/triplex.py as the registry loaded it (method files are loaded by path, not imported by name)."""
    return sys.modules[get_method_class("triplex").__module__]


def suite_model(tool):
    triplex = _triplex_module()
    resnet = torchvision.models.resnet18(weights=None)
    resnet.fc = nn.Identity()
    config = dict(tool.CONFIG)
    model = triplex.TriplexModel(resnet, config.pop("num_outputs"), **config)
    tool.fill_weights(model)
    return model.eval(), triplex


@pytest.fixture(scope="module")
def built():
    tool = _tool()
    model, triplex = suite_model(tool)
    return tool, model, triplex, np.load(REFERENCE)


def test_whole_model_matches_the_original_class(built):
    tool, model, triplex, reference = built
    # Same parameter names as the original, so its weights (and the fill) land where they belong.
    assert sorted(model.state_dict()) == list(reference["state_keys"])
    x = tool.tiny_input()
    with torch.no_grad():
        global_token = model.global_tokens(x["global_emb"][0], x["position"])[x["sid"]]
        predictions = model(x["img"], x["neighbor_emb"], x["mask"], global_token)
        loss = triplex.triplex_loss(predictions, x["label"])
    np.testing.assert_allclose(predictions[0].numpy(), reference["logits"], atol=1e-5, rtol=0)
    # The three single-view heads (target, neighbour, global) too: each branch is checked on its own.
    np.testing.assert_allclose(torch.stack(predictions[1:]).numpy(), reference["views"], atol=1e-5, rtol=0)
    assert abs(loss.item() - float(reference["loss"])) < 1e-5
    assert np.abs(reference["logits"]).max() > 0.05  # the reference is not a trivial all-zero output


def test_a_changed_layer_breaks_the_match(built):
    """The comparison is sensitive: a neighbour mask left out, or the global attention's qkv read in the
    non-flash layout, changes the output."""
    tool, model, _, reference = built
    model = __import__("copy").deepcopy(model)
    x = tool.tiny_input()
    with torch.no_grad():
        global_token = model.global_tokens(x["global_emb"][0], x["position"])[x["sid"]]
        unmasked = model(x["img"], x["neighbor_emb"], torch.ones_like(x["mask"]), global_token)[0]
        model.global_encoder.layer1.layers[0][0].fn.interleaved = False  # the non-flash qkv layout
        relaid = model(x["img"], x["neighbor_emb"], x["mask"],
                       model.global_tokens(x["global_emb"][0], x["position"])[x["sid"]])[0]
    assert np.abs(unmasked.numpy() - reference["logits"]).max() > 1e-3
    assert np.abs(relaid.numpy() - reference["logits"]).max() > 1e-3


def test_loss_is_fused_mse_plus_supervised_and_distilled_views():
    triplex = _triplex_module()
    label = torch.zeros(2, 3)
    fused, view = torch.ones(2, 3), torch.full((2, 3), 3.0)
    # 1 + 3 x (0.7 x 9 + 0.3 x 4)
    assert triplex.triplex_loss([fused, view, view, view], label).item() == pytest.approx(1 + 3 * (6.3 + 1.2))


def test_pegh_adds_the_grid_convolution_at_each_spot():
    triplex = _triplex_module()
    layer = triplex.PEGH(dim=2, kernel_size=3)
    with torch.no_grad():
        layer.proj1.weight.zero_()
        layer.proj1.weight[:, 0, 1, 2] = 1.0  # each output reads the grid cell one step along the first coordinate
        layer.proj1.bias.zero_()
    positions = torch.tensor([[10, 5], [11, 5], [10, 6]])
    x = torch.tensor([[[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]]])
    with torch.no_grad():
        out = layer(x, positions)[0]
    # spot 0 reads spot 1 (first coordinate + 1); spots 1 and 2 have no spot there.
    np.testing.assert_allclose(out.numpy(), [[11.0, 22.0], [10.0, 20.0], [100.0, 200.0]])


def test_paper_profile_is_the_published_her2st_configuration():
    cls = get_method_class("triplex")
    m = cls()
    published = dict(emb_dim=512, depth1=1, depth2=3, depth3=3, num_heads1=4, num_heads2=16, num_heads3=16,
                      mlp_ratio1=4, mlp_ratio2=4, mlp_ratio3=1, dropout1=0.2, dropout2=0.1, dropout3=0.3,
                      kernel_size=3, lr=1e-4, batch_size=128, epochs=200, patience=20, patch_px=224)
    assert {k: getattr(m, k) for k in published} == published
    assert m.wants_validation()
    spec = m.embedding_spec()
    assert (spec.encoder, spec.grid) == ("cigar", 5)


def test_augmentation_is_flips_and_quarter_turns_only():
    triplex = _triplex_module()
    images = torch.rand(64, 3, 8, 8)
    out = triplex.augment(images, torch.Generator().manual_seed(0))
    from bench.nn.augment import dihedral

    for a, b in zip(images, out):
        assert any(torch.equal(dihedral(a[None], k)[0], b) for k in range(8))
    assert not torch.equal(images, out)
