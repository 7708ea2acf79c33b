"""Hist2ST pieces that are easy to get wrong: the ZINB likelihood, the graph layers' reach, the augmentation
of whole slides, the distillation weights, size factors and per-slide inference."""
import sys

import numpy as np
import pytest
import torch
from scipy import stats

from bench.method import Runtime, SpotData, build_method
from bench.nn.graph import dense_adjacency, knn_graph
from bench.registry import get_method_class


@pytest.fixture(scope="module")
def h2s():
    """The method's module (methods/ is a plug-in folder, loaded by the registry)."""
    return sys.modules[get_method_class("hist2st").__module__]


def _scipy_zinb_logpmf(x, mean, disp, pi):
    nb = stats.nbinom(disp, disp / (disp + mean))
    return np.where(x == 0, np.log(pi + (1 - pi) * nb.pmf(0)), np.log(1 - pi) + nb.logpmf(x))


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_zinb_log_likelihood_matches_scipy(h2s, dtype, rtol):
    rng = np.random.default_rng(0)
    shape = (60, 30)
    mean = rng.uniform(0.05, 50, shape)
    disp = rng.uniform(0.1, 20, shape)
    pi = rng.uniform(0.01, 0.9, shape)
    x = rng.poisson(rng.uniform(0, 40, shape)).astype(float)
    x[rng.random(shape) < 0.3] = 0
    assert (x == 0).sum() > 100 and (x > 20).sum() > 100
    ours = h2s.zinb_log_likelihood(*(torch.tensor(a, dtype=dtype) for a in (x, mean, disp, pi))).double().numpy()
    np.testing.assert_allclose(ours, _scipy_zinb_logpmf(x, mean, disp, pi), rtol=rtol)


def test_zinb_nll_is_the_mean_over_spots_and_genes_with_the_mean_scaled_by_size_factors(h2s):
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.poisson(5, (8, 5)), dtype=torch.float64)
    mean, disp = torch.tensor(rng.uniform(1, 9, (8, 5))), torch.tensor(rng.uniform(0.5, 5, (8, 5)))
    pi = torch.tensor(rng.uniform(0.05, 0.5, (8, 5)))
    sf = torch.tensor(rng.uniform(0.5, 2, 8))
    expected = -_scipy_zinb_logpmf(x.numpy(), (mean * sf[:, None]).numpy(), disp.numpy(), pi.numpy()).mean()
    assert h2s.zinb_nll(x, mean, disp, pi, sf).item() == pytest.approx(expected, rel=1e-6)
    # The original's ridge term defaults to 0 (off); when asked for, it adds lambda * pi².
    with_ridge = h2s.zinb_nll(x, mean, disp, pi, sf, ridge_lambda=0.5).item()
    assert with_ridge == pytest.approx(expected + 0.5 * (pi**2).mean().item(), rel=1e-6)


def test_zinb_head_activations_are_clamped_as_published(h2s):
    x = torch.tensor([-100.0, 0.0, 2.0, 1e5])
    assert h2s.mean_activation(x).tolist() == pytest.approx([1e-5, 1.0, np.exp(2), 1e6])
    assert h2s.dispersion_activation(x).tolist() == pytest.approx([1e-4, np.log(2), np.log1p(np.exp(2)), 1e4])


def test_size_factors_are_panel_totals_over_the_slide_median(h2s):
    counts = np.array([[1, 1], [2, 2], [3, 5], [0, 0]], dtype=np.float32)  # totals 2, 4, 8, 0; median 3
    np.testing.assert_allclose(h2s.size_factors_of(counts), [2 / 3, 4 / 3, 8 / 3, 0])
    assert (h2s.size_factors_of(np.zeros((3, 2))) == 1).all()


# -- graph ------------------------------------------------------------------------------------------
def _grid(n_side):
    yy, xx = np.mgrid[0:n_side, 0:n_side]
    return np.stack([xx.ravel(), yy.ravel()], 1)


@pytest.mark.parametrize("include_self", [True, False])
def test_sage_layer_equals_the_published_dense_mean_aggregator(h2s, include_self):
    torch.manual_seed(0)
    coords = _grid(5)
    edges = knn_graph(coords, 4, max_distance=2)
    n, dim = len(coords), 16
    layer = h2s.SageLayer(dim, dim).double()
    x = torch.randn(n, dim, dtype=torch.float64)
    adjacency = torch.tensor(dense_adjacency(edges, n), dtype=torch.float64)
    if include_self:
        adjacency = adjacency + torch.eye(n, dtype=torch.float64)
    # gs_block with gcn=True, policy "mean": rows of A divided by their sums, times x; W, ReLU, L2 normalise.
    aggregated = (adjacency / adjacency.sum(1, keepdim=True)) @ x
    expected = torch.nn.functional.normalize(torch.relu(layer.weight.mm(aggregated.T)).T, 2, 1)
    got = layer(x, h2s.neighbour_table(edges, n, include_self))
    torch.testing.assert_close(got, expected)


def test_graph_readout_sees_exactly_its_receptive_field(h2s):
    """After L layers (and the per-spot LSTM readout) a spot depends on spots within L hops and no others."""
    torch.manual_seed(0)
    coords = np.stack([np.arange(12), np.zeros(12, dtype=int)], 1)  # a line: spot i links to i±1, i±2
    edges = knn_graph(coords, 4, max_distance=2)
    table = h2s.neighbour_table(edges, len(coords), include_self=True)
    model = h2s.GraphSAGEJK(dim=8, depth=2, lstm_layers=2).double().eval()
    x = torch.randn(len(coords), 8, dtype=torch.float64)
    base = model(x, table)

    def changed_at(spot):
        moved = x.clone()
        moved[spot] += 5.0
        return (model(moved, table) - base).abs().sum(1) > 1e-9

    # Spot 0 reaches 1-2 in one hop and 3-4 in two; spot 5 is three hops away.
    assert changed_at(4)[0] and changed_at(1)[0]
    assert not changed_at(5)[0] and not changed_at(11)[0]
    assert changed_at(6).tolist() == [abs(i - 6) <= 4 for i in range(12)]


def test_neighbours_only_mean_reproduces_the_published_layer_and_isolated_spots_stay_finite(h2s):
    torch.manual_seed(0)
    coords = np.array([[0, 0], [1, 0], [0, 1], [30, 30]])  # the last spot is pruned away from everyone
    edges = knn_graph(coords, 4, max_distance=2)
    assert not (edges == 3).any()
    layer = h2s.SageLayer(4, 4).double()
    x = torch.randn(4, 4, dtype=torch.float64)
    with torch.no_grad():
        x[3] = layer.weight.sum(0)  # W x3 = W Wᵀ 1 has a positive entry, so ReLU leaves something
    published = h2s.neighbour_table(edges, 4, include_self=False)
    moved = x.clone()
    moved[0] += 3.0
    # Published behaviour: a spot's own features do not enter its first layer's mean.
    torch.testing.assert_close(layer(moved, published)[0], layer(x, published)[0])
    assert torch.isfinite(layer(x, published)).all() and (layer(x, published)[3] == 0).all()
    # The include_self option (off in every profile): the spot itself is part of its mean.
    intended = h2s.neighbour_table(edges, 4, include_self=True)
    assert not torch.allclose(layer(moved, intended)[0], layer(x, intended)[0])
    alone = torch.nn.functional.normalize(torch.relu(layer.weight @ x[3]), dim=0)  # its mean is itself
    assert (alone != 0).any()
    torch.testing.assert_close(layer(x, intended)[3], alone)


# -- augmentation and distillation ------------------------------------------------------------------
def test_each_copy_applies_one_augmentation_to_the_whole_slide(h2s):
    image = torch.rand(1, 3, 14, 14) * 255
    slide = image.repeat(6, 1, 1, 1)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        out = h2s.augment_slide(slide, g, grayscale_p=0.5, degrees=90, flip_p=0.5)
        assert torch.equal(out, out[:1].expand_as(out)), "every patch of a copy gets the same transform"
    # The flip is vertical in image terms (the original's horizontal flip of its transposed patches).
    flipped = h2s.augment_slide(slide, torch.Generator().manual_seed(0), grayscale_p=0, degrees=0, flip_p=1)
    torch.testing.assert_close(flipped, slide.flip(-2))
    gray = h2s.augment_slide(slide, torch.Generator().manual_seed(0), grayscale_p=1, degrees=0, flip_p=0)
    expected = 0.2989 * slide[:, 0] + 0.587 * slide[:, 1] + 0.114 * slide[:, 2]
    for c in range(3):
        torch.testing.assert_close(gray[:, c], expected)
    rotated = h2s.augment_slide(slide, torch.Generator().manual_seed(0), grayscale_p=0, degrees=90, flip_p=0)
    assert (rotated == 0).any() and not torch.equal(rotated, slide)  # corners filled with 0
    again = h2s.augment_slide(slide, torch.Generator().manual_seed(0), grayscale_p=0, degrees=90, flip_p=0)
    assert torch.equal(rotated, again)


def test_distillation_weights_copies_per_spot_by_softmax_over_copies(h2s):
    preds = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[3.0, 3.0], [3.0, 3.0]]])  # 2 copies, 2 spots, 2 genes
    coefs = torch.tensor([[[50.0], [0.0]], [[0.0], [0.0]]])
    out = h2s.distill(preds, coefs)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0], [2.0, 2.0]]))


# -- the method -------------------------------------------------------------------------------------
def test_paper_defaults_are_the_published_settings():
    method = build_method(get_method_class("hist2st"), "paper")
    assert (method.epochs, method.lr, method.lr_step, method.lr_gamma) == (350, 1e-5, 50, 0.9)
    assert (method.patch_px, method.patch_size, method.kernel_size, method.channels, method.mixer_depth) == \
        (112, 7, 5, 32, 2)
    assert (method.depth, method.heads, method.dim_head, method.gnn_depth, method.jk_lstm_layers) == (8, 16, 64, 4, 2)
    assert (method.n_neighbors, method.max_distance, method.n_positions, method.dropout) == (4, 2.0, 64, 0.2)
    assert (method.include_self, method.target_log_base) == (False, 10.0)
    assert (method.zinb_weight, method.distill_weight, method.n_copies, method.mean_init) == (0.25, 0.5, 5, False)
    assert (method.grayscale_p, method.rotation_degrees, method.flip_p) == (0.1, 90.0, 0.2)
    assert method.patch_spec().px == 112 and method.patch_spec().window_um == 82.0


def test_published_feature_width_is_1024(h2s):
    assert h2s.feature_dim(112, 7, 32) == 1024
    model = h2s.Hist2STModel(5, 112, 7, 5, 32, 1, 1, 2, 8, 1, 1, 0.0, 64, True)
    table = h2s.neighbour_table(np.zeros((2, 0), dtype=np.int64), 2, True)
    h = model.embed(torch.rand(2, 3, 112, 112) * 255, torch.tensor([[0, 0], [1, 0]]), table)
    assert h.shape == (2, 1024)


def _tiny_data(n_sections=2, side=4, px=14, n_genes=5, seed=0, with_truth=True):
    rng = np.random.default_rng(seed)
    coords = np.concatenate([_grid(side)] * n_sections)
    n = len(coords)
    counts = rng.poisson(rng.uniform(0, 20, (n, n_genes))).astype(np.float32)
    expression = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    return SpotData(genes=[f"g{i}" for i in range(n_genes)],
                    section_ids=np.repeat([f"s{i}" for i in range(n_sections)], side * side),
                    spot_ids=np.array([f"{i}" for i in range(n)]), array_coords=coords,
                    pixel_coords=coords * 10.0, patches=rng.integers(0, 256, (n, px, px, 3), dtype=np.uint8),
                    expression=expression if with_truth else None, counts=counts if with_truth else None)


def _tiny_method(**overrides):
    params = {"epochs": 2, "patch_px": 14, "depth": 1, "heads": 2, "dim_head": 8, "gnn_depth": 2, "n_copies": 2,
              "lr": 1e-3, **overrides}
    method = build_method(get_method_class("hist2st"), "paper", params)
    method.runtime = Runtime(seed=0, progress=False, pretrained="no")
    return method


@pytest.mark.slow
def test_prediction_is_per_slide_and_recorded_as_not_pretrained():
    torch.manual_seed(0)
    method = _tiny_method().fit(_tiny_data())
    assert method.runtime.facts["pretrained"] is False
    test = _tiny_data(seed=1, with_truth=False)
    both = method.predict(test)
    assert np.isfinite(both).all() and both.shape == (32, 5)
    # Each slide is its own sequence and graph: predicting one slide alone gives the same rows.
    second = np.arange(16, 32)
    np.testing.assert_allclose(method.predict(test.subset(second)), both[second], rtol=1e-5, atol=1e-6)


def test_mean_init_starts_the_heads_at_the_training_means():
    data = _tiny_data()
    torch.manual_seed(0)
    method = _tiny_method(epochs=0, mean_init=True).fit(data)
    # the targets it trains on are log10(1 + x): the suite's ln(1 + x) / ln 10
    np.testing.assert_allclose(method.model_.gene_head[-1].bias.detach().numpy(),
                               data.expression.mean(0) / np.log(10), rtol=1e-5)
    assert method.model_.mean_head.bias.detach().mean().item() > 1.0  # log of mean counts ~ 10


@pytest.mark.slow
def test_zinb_needs_counts_and_positions_must_fit_the_table():
    data = _tiny_data()
    no_counts = data.subset(np.arange(len(data)))
    no_counts.counts = None
    with pytest.raises(ValueError, match="raw counts"):
        _tiny_method().fit(no_counts)
    _tiny_method(zinb_weight=0.0, epochs=1).fit(no_counts)  # without the ZINB term counts are not needed
    with pytest.raises(ValueError, match="n_positions"):
        _tiny_method(n_positions=3).fit(data)
