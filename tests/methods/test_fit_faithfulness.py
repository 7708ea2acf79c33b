"""Faithfulness through ``fit``: the published losses, batching and hyper-parameters are what training actually
uses, not only what the helper functions compute (tests/methods/test_faithfulness.py checks those against the
original formulas). Each test trains a paper-profile method for one step or epoch on a few synthetic spots,
with spies on the functions that must be used; only compute (patch size, epochs) is cut."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.method import Runtime, SpotData, build_method
from bench.registry import get_method_class

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _module(name):
    return sys.modules[get_method_class(name).__module__]


def _paper(name, **overrides):
    method = build_method(get_method_class(name), "paper", overrides)
    method.runtime = Runtime(seed=0, progress=False, pretrained="no")
    return method


def _spots(n=16, px=32, n_genes=4, sections=2, seed=0, colours=None):
    """n spots on a 4-wide grid over ``sections`` sections; the patch colour carries the first gene."""
    rng = np.random.default_rng(seed)
    expression = rng.random((n, n_genes)).astype(np.float32)
    patches = rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8)
    if colours is not None:
        patches[:] = np.asarray(colours, dtype=np.uint8)
    coords = np.stack([np.arange(n) % 4, np.arange(n) // 4], 1).astype(np.int64)
    return SpotData(genes=[f"g{i}" for i in range(n_genes)],
                    section_ids=np.repeat([f"s{i}" for i in range(sections)], n // sections),
                    spot_ids=np.arange(n).astype(str), array_coords=coords, pixel_coords=coords * 100.0,
                    patches=patches, expression=expression, counts=np.ones((n, n_genes), np.float32))


class _TinyNet(torch.nn.Module):
    """A stand-in for torchvision's DenseNet-121 / ResNet-50 with the attributes the methods use (``features``
    and ``classifier``; ``conv1``, ``bn1`` and ``fc``) and their feature widths: what these tests check is the
    training around the network, and the real ones cost seconds per step on a busy CPU."""

    def __init__(self, width, head):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, 8, stride=8)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.features = torch.nn.Sequential(self.conv1, self.bn1)
        self.head = head  # "classifier" (DenseNet) or "fc" (ResNet): the attribute the method replaces
        setattr(self, head, torch.nn.Linear(width, 10))

    def forward(self, x):
        return getattr(self, self.head)(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1))


def _tiny_backbone(module, monkeypatch):
    shapes = {"densenet121": (1024, "classifier"), "resnet50": (2048, "fc")}

    def backbone(arch, pretrained="auto", facts=None):
        return _TinyNet(*shapes[arch]), False

    monkeypatch.setattr(module, "torchvision_backbone", backbone)


def _one_epoch(module, monkeypatch, seen):
    """Replace the module's train_epochs by the real one run for 1 epoch, recording the epochs asked for."""
    real = module.train_epochs

    def spy(runtime, name, epochs, batches, loss_of, optimizer, scheduler=None):
        seen.update(epochs=epochs, lrs=[g["lr"] for g in optimizer.param_groups], optimizer=type(optimizer))
        return real(runtime, name, 1, batches, loss_of, optimizer, scheduler)

    monkeypatch.setattr(module, "train_epochs", spy)


# -- ST-Net ------------------------------------------------------------------------------------------
def test_stnet_fit_trains_on_the_published_summed_loss(monkeypatch):
    stnet = _module("st-net")
    calls = []
    real = stnet.stnet_loss

    def spy(pred, target):
        calls.append(pred.shape)
        return real(pred, target)

    monkeypatch.setattr(stnet, "stnet_loss", spy)
    seen = {}
    _one_epoch(stnet, monkeypatch, seen)
    _tiny_backbone(stnet, monkeypatch)
    method = _paper("st-net", patch_px=32, batch_size=8)
    method.fit(_spots(16))
    assert calls == [(8, 4), (8, 4)], "every training batch is scored with stnet_loss"
    assert seen == {"epochs": 50, "lrs": [1e-6], "optimizer": torch.optim.SGD}


# -- BLEEP -------------------------------------------------------------------------------------------
def test_bleep_fit_goes_through_four_per_device_losses_with_per_device_batchnorm(monkeypatch):
    bleep = _module("bleep")
    steps, scored, bn_batches = [], [], []
    real_device_losses = bleep.device_losses

    def device_spy(model, images, expression, devices):
        steps.append((len(images), devices))
        real_loss = model.loss

        def loss_spy(img, expr):
            scored.append(len(img))
            return real_loss(img, expr)

        model.loss = loss_spy
        try:
            return real_device_losses(model, images, expression, devices)
        finally:
            del model.loss

    monkeypatch.setattr(bleep, "device_losses", device_spy)
    seen = {}
    _one_epoch(bleep, monkeypatch, seen)
    _tiny_backbone(bleep, monkeypatch)
    method = _paper("bleep", patch_px=32, batch_size=2, top_k=3)
    assert (method.devices, method.batch_size, method.temperature) == (4, 2, 1.0)
    real_fit_model = bleep.BLEEPModel

    class Hooked(real_fit_model):  # records the batch each BatchNorm call normalises over
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.image_encoder.bn1.register_forward_hook(
                lambda module, args, out: bn_batches.append(len(args[0])) if module.training else None)

    monkeypatch.setattr(bleep, "BLEEPModel", Hooked)
    method.fit(_spots(16))  # 2 steps of 4 devices x 2 spots
    assert steps == [(8, 4), (8, 4)]
    assert scored == [2] * 8, "each device's 2 spots are scored on their own"
    assert bn_batches == [2] * 8, "BatchNorm normalises over one device's batch, not the step's 8 spots"
    assert seen == {"epochs": 150, "lrs": [1e-3], "optimizer": torch.optim.AdamW}


def test_bleep_raw_bgr_input_is_what_the_published_code_fed(monkeypatch):
    bleep = _module("bleep")
    seen_inputs = []
    _one_epoch(bleep, monkeypatch, {})
    _tiny_backbone(bleep, monkeypatch)
    for image_input in ("raw-bgr", "imagenet"):
        method = _paper("bleep", patch_px=32, batch_size=4, devices=2, top_k=3, image_input=image_input,
                        augment=False)
        data = _spots(8, colours=(10, 20, 30))  # R, G, B
        method.fit(data)
        hook = method.model_.image_encoder.register_forward_pre_hook(lambda m, args: seen_inputs.append(args[0]))
        method.predict(data)
        hook.remove()
    raw, standardised = seen_inputs[0], seen_inputs[-1]
    # cv2.imread order (B, G, R) and 0-255 values, unstandardised
    assert torch.equal(raw[0, :, 0, 0], torch.tensor([30.0, 20.0, 10.0]))
    expected = (torch.tensor([10.0, 20.0, 30.0]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    torch.testing.assert_close(standardised[0, :, 0, 0], expected)
    with pytest.raises(ValueError, match="image_input"):
        _paper("bleep", image_input="bgr").fit(_spots(8))


# -- mclSTExp ----------------------------------------------------------------------------------------
def _published_retrieval(spot_key, expression_key, image_query, top_k, weighted=True):
    """evel_her2st.py: find_matches (top-k by cosine of L2-normalised embeddings), then weights
    1 / (L1 distance)^2 normalised to sum 1, np.average of the matched spots' expression."""
    query = F.normalize(torch.tensor(image_query), p=2, dim=-1)
    keys = F.normalize(torch.tensor(spot_key), p=2, dim=-1)
    _, indices = torch.topk(query @ keys.T, k=top_k)
    indices = indices.numpy()
    pred = np.zeros((len(indices), expression_key.shape[1]))
    for i in range(len(indices)):
        a = np.linalg.norm(spot_key[indices[i]] - image_query[i], axis=1, ord=1)
        weights = np.reciprocal(a ** 2) if weighted else np.ones_like(a)
        weights = weights / np.sum(weights)
        pred[i] = np.average(expression_key[indices[i]], axis=0, weights=weights)
    return pred


def test_mclstexp_fit_uses_temperature_one_and_predict_the_published_retrieval(monkeypatch):
    mcl = _module("mclstexp")
    temperatures = []
    real = mcl.clip_loss

    def spy(spot, image, temperature=1.0):
        temperatures.append(temperature)
        return real(spot, image, temperature)

    monkeypatch.setattr(mcl, "clip_loss", spy)
    seen = {}
    _one_epoch(mcl, monkeypatch, seen)
    _tiny_backbone(mcl, monkeypatch)
    method = _paper("mclstexp", patch_px=32, top_k=5, max_position=16)
    assert method.temperature == 1.0
    train, test = _spots(16, seed=1), _spots(6, seed=2)
    method.fit(train)
    assert temperatures == [1.0], "one batch of 16 spots, scored at T = 1"
    assert seen == {"epochs": 90, "lrs": [1e-4], "optimizer": torch.optim.Adam}
    pred = method.predict(test)
    with torch.no_grad():
        query = method.model_.embed_images(method._image_input(test.patches)).double().numpy()
    reference = _published_retrieval(method.train_embeddings_.astype(np.float64), train.expression.astype(np.float64),
                                     query, top_k=5)
    np.testing.assert_allclose(pred, reference, rtol=1e-5, atol=1e-6)
    # the weights matter here: a uniform average of the same neighbours is told apart
    uniform = _published_retrieval(method.train_embeddings_.astype(np.float64), train.expression.astype(np.float64),
                                   query, top_k=5, weighted=False)
    assert np.abs(uniform - pred).max() > 1e-3


# -- HisToGene and THItoGene: the paper hyper-parameters ---------------------------------------------
def test_histogene_paper_hyperparameters_are_the_published_ones(monkeypatch):
    hg = _module("histogene")
    method = _paper("histogene")
    # tutorial.ipynb: HisToGene(n_layers=8, n_genes=785, learning_rate=1e-5), max_epochs=100;
    # vis_model.HisToGene: patch_size 112, dim 1024, ViT(heads=16, dim_head=64 (vit default), mlp_dim=2*dim,
    # dropout=0.1, emb_dropout=0.1), Embedding(n_pos=64, dim) for x and y; Adam
    assert (method.epochs, method.lr, method.depth, method.dim, method.heads, method.dim_head, method.mlp_dim,
            method.dropout, method.n_positions, method.patch_px, method.window_px) == \
        (100, 1e-5, 8, 1024, 16, 64, 2048, 0.1, 64, 112, 112)
    # through fit (a small network: only the sizes are cut): the optimiser and the epochs asked for
    seen, built = {}, {}
    _one_epoch(hg, monkeypatch, seen)
    real_model = hg.HisToGeneModel

    def model_spy(*args):
        built["args"] = args
        return real_model(*args)

    monkeypatch.setattr(hg, "HisToGeneModel", model_spy)
    small = _paper("histogene", patch_px=8, dim=16, mlp_dim=32, heads=2, dim_head=8, depth=1)
    small.fit(_spots(16, px=8))
    assert seen == {"epochs": 100, "lrs": [1e-5], "optimizer": torch.optim.Adam}
    assert built["args"][1:] == (4, 16, 1, 2, 8, 32, 0.1, 64)  # n_genes, dim, depth, heads, dim_head, mlp, dropout, pos


def test_thitogene_paper_hyperparameters_are_the_published_ones(monkeypatch):
    thi = _module("thitogene")
    method = _paper("thitogene")
    # train.py: THItoGene(n_genes=785, learning_rate=1e-5, route_dim=64, caps=20, heads=[16, 8], n_layers=4),
    # max_epochs 300; vis_model.THItoGene: patch_size 112, dim 1024 (ViT mlp_dim = 2 * dim), dropout 0.2,
    # n_pos 64, ODConv2d(3, 16, kernel_size=4, stride=4), MultiHeadGAT(nhid=1024, out_features=512, alpha=0.01),
    # head Linear(512, 1024); Adam
    assert (method.epochs, method.lr, method.depth, method.vit_heads, method.dim_head, method.mlp_dim,
            method.dropout, method.capsules, method.capsule_dim, method.gat_heads, method.gat_hidden,
            method.gat_out, method.gat_alpha, method.head_hidden, method.n_neighbours, method.n_positions,
            method.odconv_channels, method.odconv_kernel, method.odconv_kernel_num, method.patch_px,
            method.window_px, method.routing_lr) == \
        (300, 1e-5, 4, 16, 64, 2048, 0.2, 20, 64, 8, 1024, 512, 0.01, 1024, 4, 64, 16, 4, 4, 112, 112, None)
    assert build_method(get_method_class("thitogene"), "paper", {}, dataset="cscc").depth == 8
    seen = {}
    _one_epoch(thi, monkeypatch, seen)
    small = _paper("thitogene", patch_px=48, depth=1, vit_heads=1, dim_head=4, mlp_dim=16, capsules=2,
                   capsule_dim=4, gat_heads=2, gat_hidden=6, gat_out=5, head_hidden=8)
    small.fit(_spots(16, px=48))
    assert seen == {"epochs": 300, "lrs": [1e-5], "optimizer": torch.optim.Adam}
