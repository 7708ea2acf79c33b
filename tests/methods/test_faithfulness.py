"""Faithfulness to the published code: each method's training loss, and the graph layers of THItoGene and
Hist2ST, on tiny fixed inputs, against references written here from the formulas of the original
repositories (ST-Net @43022c1, BLEEP @2395967, HisToGene @44ff75b, Hist2ST @7480e5d, THItoGene @13daf4d,
mclSTExp @fdd3ab1). Each reference states what it follows; the methods under test are built with their paper
profile, so a paper setting that drifts from the published one fails here."""
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from bench.method import SpotData, build_method
from bench.registry import get_method_class

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _module(name):
    return sys.modules[get_method_class(name).__module__]


def _paper(name, dataset=None, **overrides):
    return build_method(get_method_class(name), "paper", overrides, dataset=dataset)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _calc_adj(coords, k=4, prune_at=None):
    """graph_construction.calcADJ (Hist2ST and THItoGene): row i gets a 1 at each of its k nearest other
    spots (Euclidean; argsort of the distance row, the spot itself first), dropped beyond ``prune_at``
    ("Grid": 2) when given. The published argsort leaves the order of equal distances to the sort; the
    stable sort used here keeps index order."""
    coords = np.asarray(coords, dtype=float)
    adj = np.zeros((len(coords), len(coords)))
    for i in range(len(coords)):
        d = cdist(coords[i:i + 1], coords)[0]
        for j in np.argsort(d, kind="stable")[1:k + 1]:
            if prune_at is None or d[j] <= prune_at:
                adj[i, j] = 1.0
    return torch.tensor(adj, dtype=torch.float64)


def _slide(coords, px=4):
    n = len(coords)
    return SpotData(genes=["g"], section_ids=np.array(["s"] * n), spot_ids=np.arange(n).astype(str),
                    array_coords=np.asarray(coords, dtype=np.int64), pixel_coords=np.zeros((n, 2)),
                    patches=np.zeros((n, px, px, 3), np.uint8), expression=np.zeros((n, 1), np.float32),
                    counts=np.ones((n, 1), np.float32))


# -- ST-Net ------------------------------------------------------------------------------------------
def test_stnet_loss_is_the_published_sum_over_the_batch_divided_by_the_genes():
    stnet = _module("st-net")
    pred, target = _rand(32, 7, seed=1).requires_grad_(), _rand(32, 7, seed=2)
    # run_spatial.py, task "gene": loss = torch.sum((pred - gene) ** 2) / outputs, outputs = number of genes
    reference = ((pred.detach() - target) ** 2).sum() / 7
    loss = stnet.stnet_loss(pred, target)
    torch.testing.assert_close(loss.detach(), reference)
    # So the gradient is batch-size times that of a mean over spots and genes (what plain SGD at lr 1e-6 sees).
    (grad,) = torch.autograd.grad(loss, pred)
    (grad_mean,) = torch.autograd.grad(F.mse_loss(pred, target), pred)
    torch.testing.assert_close(grad, 32 * grad_mean)
    paper = _paper("st-net")
    assert (paper.batch_size, paper.lr, paper.momentum, paper.epochs) == (32, 1e-6, 0.9, 50)


# -- THItoGene ---------------------------------------------------------------------------------------
def _gat_layer_as_run(h, W, a, adjacency, alpha, concat):
    """GATLayer.GraphAttentionLayer.forward with the adjacency the DataLoader (batch size 1) hands it:
    1 x N x N, so softmax(dim=1) runs over the first spot index i of e[i, j]."""
    wh = h @ W
    f = W.shape[1]
    e = F.leaky_relu(wh @ a[:f] + (wh @ a[f:]).T, alpha)  # e[i, j] = a1.Wh_i + a2.Wh_j
    masked = torch.where(adjacency[None] > 0, e, torch.full_like(e, -9e15))  # (1, N, N)
    attention = torch.softmax(masked, dim=1)
    out = torch.matmul(attention, wh)  # (1, N, F)
    return F.elu(out) if concat else out


def _pygat(h, W, a, adjacency, alpha, concat):
    """The same layer on an N x N adjacency (pyGAT's intended use): softmax over each row's neighbours j."""
    wh = h @ W
    f = W.shape[1]
    e = F.leaky_relu(wh @ a[:f] + (wh @ a[f:]).T, alpha)
    attention = torch.softmax(torch.where(adjacency > 0, e, torch.full_like(e, -9e15)), dim=1)
    out = attention @ wh
    return F.elu(out) if concat else out


def _multi_head_gat(layer, gat, x, adjacency):
    """GATLayer.MultiHeadGAT.forward in eval mode: heads concatenated (after squeeze(0)), output layer, ELU."""
    heads = [layer(x, gat.hidden.W[k], gat.hidden.a[k][:, None], adjacency, gat.hidden.alpha, True).reshape(
        len(x), -1) for k in range(gat.hidden.W.shape[0])]
    hidden = torch.cat(heads, dim=1)
    out = layer(hidden, gat.out.W[0], gat.out.a[0][:, None], adjacency, gat.out.alpha, False)
    return F.elu(out).reshape(len(x), -1)


THI_SMALL = {"patch_px": 48, "depth": 1, "mlp_dim": 16, "vit_heads": 1, "dim_head": 4, "capsules": 2,
             "capsule_dim": 4, "gat_heads": 3, "gat_hidden": 6, "gat_out": 5, "head_hidden": 8}


def _thitogene_case(**overrides):
    # 20 spots of a 6 x 6 grid and one far away: it lists 4 grid spots, and no spot lists it.
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 2)
    coords = np.concatenate([grid[rng.choice(36, 20, replace=False)], [[30, 30]]])
    method = _paper("thitogene", **{**THI_SMALL, **overrides})
    prepared = method._prepare(_slide(coords), with_targets=False)
    gat = method.build_model(n_genes=3).gat.double().eval()
    x = _rand(len(coords), gat.hidden.W.shape[1], seed=3)
    adjacency = _calc_adj(coords, k=4)
    assert adjacency[:, -1].sum() == 0, "the far spot is listed by no spot"
    return gat, x, prepared["neighbours"], prepared["mask"], adjacency


def test_thitogene_paper_gat_equals_the_published_layer_as_it_ran():
    assert _paper("thitogene").gat_softmax == "published"
    gat, x, table, mask, adjacency = _thitogene_case()
    with torch.no_grad():
        ours = gat(x, table, mask)
        reference = _multi_head_gat(_gat_layer_as_run, gat, x, adjacency)
        intended = _multi_head_gat(_pygat, gat, x, adjacency)
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(ours, intended, atol=1e-3), "as run and as intended differ"
    # One layer on its own, head by head, including the far spot's 1/N weight to every spot.
    layer = gat.hidden
    with torch.no_grad():
        one = layer(x, table, mask)
        for k in range(layer.W.shape[0]):
            expected = _gat_layer_as_run(x, layer.W[k], layer.a[k][:, None], adjacency, layer.alpha, True)[0]
            torch.testing.assert_close(one[:, k], expected, rtol=1e-9, atol=1e-10)


def test_thitogene_neighbour_softmax_option_equals_pygat():
    gat, x, table, mask, adjacency = _thitogene_case(gat_softmax="neighbours")
    with torch.no_grad():
        torch.testing.assert_close(gat(x, table, mask), _multi_head_gat(_pygat, gat, x, adjacency),
                                   rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="gat_softmax"):
        _paper("thitogene", **{**THI_SMALL, "gat_softmax": "rows"}).build_model(n_genes=3)


def test_thitogene_loss_and_per_dataset_depth():
    thi = _module("thitogene")
    pred, target = _rand(9, 4, seed=4), _rand(9, 4, seed=5)
    # vis_model.THItoGene.training_step: F.mse_loss(pred.view_as(exp), exp), the mean over spots and genes
    torch.testing.assert_close(thi.thitogene_loss(pred, target), ((pred - target) ** 2).sum() / 36)
    assert _paper("thitogene").depth == 4 and _paper("thitogene", dataset="her2st").depth == 4
    assert _paper("thitogene", dataset="cscc").depth == 8  # train.py: n_layers=8 for the skin data


# -- Hist2ST -----------------------------------------------------------------------------------------
def _sage_as_published(x, weight, adjacency):
    """gcn.gs_block with gcn=True, policy "mean": mean of the neighbours' rows (adjacency rows divided by
    their sums; no identity added), then ReLU(W x) per spot and L2 normalisation."""
    aggregated = (adjacency / adjacency.sum(1, keepdim=True)) @ x
    return F.normalize(F.relu(weight.mm(aggregated.T)).T, 2, 1)


def test_hist2st_paper_graph_layer_equals_the_published_neighbours_only_mean():
    h2s = _module("hist2st")
    method = _paper("hist2st")
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(np.arange(7), np.arange(7)), -1).reshape(-1, 2)
    coords = grid[rng.choice(49, 26, replace=False)]
    adjacency = _calc_adj(coords, k=4, prune_at=2.0)  # HER2+: pruneTag "Grid"
    assert (adjacency.sum(1) > 0).all() and adjacency.sum() < 4 * len(coords), "pruned, no isolated spot"
    table = method._prepare(_slide(coords), with_targets=False)[0].table
    layer = h2s.SageLayer(8, 8).double()
    x = _rand(len(coords), 8, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, table), _sage_as_published(x, layer.weight, adjacency))
    # cSCC: the tutorial builds the graph with pruneTag "NA".
    cscc = _paper("hist2st", dataset="cscc")
    assert cscc.max_distance is None and cscc.include_self is False
    table = cscc._prepare(_slide(coords), with_targets=False)[0].table
    with torch.no_grad():
        torch.testing.assert_close(layer(x, table), _sage_as_published(x, layer.weight, _calc_adj(coords, k=4)))


def _zinb_nll_as_published(x, mean, disp, pi, scale_factor):
    """NB_module.ZINB_loss (ridge_lambda 0): the DCA form with eps 1e-10, averaged over spots and genes."""
    eps = 1e-10
    mean = mean * scale_factor[:, None]
    t1 = torch.lgamma(disp + eps) + torch.lgamma(x + 1.0) - torch.lgamma(x + disp + eps)
    t2 = (disp + x) * torch.log(1.0 + mean / (disp + eps)) + x * (torch.log(disp + eps) - torch.log(mean + eps))
    nb_case = t1 + t2 - torch.log(1.0 - pi + eps)
    zero_case = -torch.log(pi + (1.0 - pi) * torch.pow(disp / (disp + mean + eps), disp) + eps)
    return torch.where(x <= 1e-8, zero_case, nb_case).mean()


def test_hist2st_loss_is_the_published_sum_of_terms_on_log10_targets():
    h2s = _module("hist2st")
    g = torch.Generator().manual_seed(7)
    counts = torch.poisson(torch.rand(6, 5, generator=g, dtype=torch.float64) * 8)
    mean = torch.rand(6, 5, generator=g, dtype=torch.float64) * 5 + 0.1
    disp = torch.rand(6, 5, generator=g, dtype=torch.float64) * 3 + 0.1
    pi = torch.rand(6, 5, generator=g, dtype=torch.float64) * 0.8
    sf = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    pred, target, distilled = _rand(6, 5, seed=8), _rand(6, 5, seed=9), _rand(6, 5, seed=10)
    # HIST2ST.training_step: mse_loss + zinb * zinb_loss + lamb * bake_loss, zinb 0.25, lamb 0.5
    reference = (F.mse_loss(pred, target) + 0.25 * _zinb_nll_as_published(counts, mean, disp, pi, sf)
                 + 0.5 * F.mse_loss(distilled, pred))
    method = _paper("hist2st")
    got = h2s.hist2st_loss(pred, target, (counts, mean, disp, pi, sf), distilled, method.zinb_weight,
                           method.distill_weight)
    torch.testing.assert_close(got, reference)
    # The targets it trains on are the original's scprep log, log10(1 + x): the suite's ln(1 + x) / ln 10.
    x = np.random.default_rng(2).uniform(0, 50, (16, 1))
    data = _slide(np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2))
    data.expression = np.log1p(x).astype(np.float32)
    trained_on = method._prepare(data, with_targets=True)[0].expression.numpy()
    np.testing.assert_allclose(trained_on, np.log10(1 + x), rtol=1e-6)


# -- mclSTExp ----------------------------------------------------------------------------------------
def test_mclstexp_loss_rotation_and_per_dataset_retrieval():
    mcl = _module("mclstexp")
    spot, image = _rand(6, 4, seed=11), _rand(6, 4, seed=12)
    # model.py: cos_smi = spot @ image.T / T; cross_entropy with label = eye, both directions, averaged
    logits = spot @ image.T / 0.5
    eye = torch.eye(6, dtype=torch.float64)
    reference = (F.cross_entropy(logits, eye) + F.cross_entropy(logits.T, eye.T)) / 2
    torch.testing.assert_close(mcl.clip_loss(spot, image, 0.5), reference)
    # dataset.py: transforms.RandomRotation(degrees=180) on a PIL image: nearest-neighbour, no new values.
    levels = torch.arange(1, 17, dtype=torch.float32) / 17
    images = levels[torch.randint(0, 16, (4, 3, 12, 12), generator=torch.Generator().manual_seed(0))]
    out = mcl.augment(images.clone(), torch.Generator().manual_seed(1))
    jitter_free = mcl.random_rotation(images, 180, torch.Generator().manual_seed(1), interpolation="nearest")
    assert torch.isin(jitter_free, torch.cat([levels, torch.zeros(1)])).all()
    assert out.shape == images.shape
    # Retrieval: HER2+ k = 200 and L1; cSCC k = 600 and L2 (evel_cscc.py); 10x Visium k = 200 and L2.
    assert (_paper("mclstexp").top_k, _paper("mclstexp").distance) == (200, "l1")
    assert (_paper("mclstexp", dataset="cscc").top_k, _paper("mclstexp", dataset="cscc").distance) == (600, "l2")
    assert (_paper("mclstexp", dataset="visium").top_k, _paper("mclstexp", dataset="visium").distance) == (200, "l2")


def test_mclstexp_augmentation_rotates_with_nearest_neighbours(monkeypatch):
    mcl = _module("mclstexp")
    seen = {}

    def spy(x, degrees, generator=None, interpolation="bilinear"):
        seen.update(degrees=degrees, interpolation=interpolation)
        return x

    monkeypatch.setattr(mcl, "random_rotation", spy)
    paper = _paper("mclstexp")
    assert paper.augment and paper.rotation_interpolation == "nearest"
    mcl.augment(torch.rand(2, 3, 8, 8), torch.Generator().manual_seed(0), paper.rotation_interpolation)
    assert seen == {"degrees": 180, "interpolation": "nearest"}
    mcl.augment(torch.rand(2, 3, 8, 8), torch.Generator().manual_seed(0))
    assert seen == {"degrees": 180, "interpolation": "nearest"}


# -- BLEEP -------------------------------------------------------------------------------------------
def _bleep_loss_as_published(image, spot, temperature):
    """models.CLIPModel.forward (after 9efa01e): logits spot.imageᵀ / T, targets softmax((ii + ss) / 2 / T),
    soft-label cross-entropy both ways, (images + spots) / 2, mean over the batch."""
    logits = spot @ image.T / temperature
    targets = torch.softmax((image @ image.T + spot @ spot.T) / 2 / temperature, dim=-1)
    spots_loss = (-targets * torch.log_softmax(logits, dim=-1)).sum(1)
    images_loss = (-targets.T * torch.log_softmax(logits.T, dim=-1)).sum(1)
    return ((images_loss + spots_loss) / 2).mean()


def test_bleep_loss_and_per_device_batches_are_published():
    bleep = _module("bleep")
    image, spot = _rand(8, 4, seed=13), _rand(8, 4, seed=14)
    torch.testing.assert_close(bleep.soft_clip_loss(image, spot, 0.5), _bleep_loss_as_published(image, spot, 0.5))

    class Embedded:  # stands in for the model: the inputs are already embeddings
        def loss(self, images, expression):
            return bleep.soft_clip_loss(images, expression)

    # BLEEP_main.py under DDP: each GPU scores its own batch, the gradients (so the losses) are averaged.
    per_device = torch.stack([_bleep_loss_as_published(image[i:i + 2], spot[i:i + 2], 1.0)
                              for i in range(0, 8, 2)]).mean()
    torch.testing.assert_close(bleep.device_losses(Embedded(), image, spot, 4), per_device)
    assert not torch.isclose(per_device, _bleep_loss_as_published(image, spot, 1.0))
    paper = _paper("bleep")
    assert (paper.batch_size, paper.devices, paper.reshuffle, paper.temperature) == (128, 4, False, 1.0)


# -- HisToGene ---------------------------------------------------------------------------------------
def test_histogene_loss_is_the_published_mse():
    hg = _module("histogene")
    pred, target = _rand(5, 3, seed=15), _rand(5, 3, seed=16)
    # vis_model.HisToGene.training_step: F.mse_loss(pred.view_as(exp), exp)
    torch.testing.assert_close(hg.histogene_loss(pred, target), ((pred - target) ** 2).mean())
