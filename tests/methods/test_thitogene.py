"""THItoGene's building blocks: ODConv, Efficient-CapsNet (squash, routing), the graph attention."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.nn.graph import knn_graph
from bench.registry import get_method_class

THItoGene = get_method_class("thitogene")
thi = __import__(THItoGene.__module__, fromlist=["_"])


def _grid(n_side=6):
    return np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2)


def _table(edges, n):
    table, mask = thi.neighbour_table(edges, n)
    return torch.as_tensor(table), torch.as_tensor(mask)


def _dense_gat_reference(layer, h, adjacency):
    """The dense pyGAT layer on an N x N adjacency (-9e15 outside the graph, softmax over rows), head by
    head: the ``gat_softmax="neighbours"`` option (the paper setting is checked in test_faithfulness.py)."""
    outs = []
    for head in range(layer.W.shape[0]):
        wh = h @ layer.W[head]
        f = layer.out_features
        e = F.leaky_relu((wh @ layer.a[head, :f])[:, None] + (wh @ layer.a[head, f:])[None, :], layer.alpha)
        attention = torch.softmax(torch.where(adjacency > 0, e, torch.full_like(e, -9e15)), dim=1)
        out = attention @ wh
        outs.append(F.elu(out) if layer.elu else out)
    return torch.stack(outs, dim=1)


# -- graph --------------------------------------------------------------------------------------------
def test_neighbour_table_holds_exactly_the_edges():
    coords = np.random.default_rng(0).uniform(0, 10, (30, 2))
    edges = knn_graph(coords, k=4, max_distance=2.0)  # pruning: degrees differ, some spots may have none
    table, mask = thi.neighbour_table(edges, len(coords))
    pairs = {(i, int(j)) for i in range(len(coords)) for j, used in zip(table[i], mask[i]) if used}
    assert pairs == set(map(tuple, edges.T.tolist()))
    assert mask.sum() == edges.shape[1]


def test_method_graph_is_the_published_4_nearest_without_self_loops():
    method = THItoGene()
    coords = _grid(10)
    slide = type("S", (), {"array_coords": coords, "patches": np.zeros((100, 4, 4, 3), np.uint8)})()
    prepared = method._prepare(slide, with_targets=False)
    table, mask = prepared["neighbours"].numpy(), prepared["mask"].numpy()
    assert mask.all() and table.shape == (100, 4)
    assert not (table == np.arange(100)[:, None]).any(), "no self loops"
    interior = 5 * 10 + 5  # (x=5, y=5): its 4 nearest are the grid neighbours at distance 1
    assert sorted(map(tuple, coords[table[interior]].tolist())) == [(4, 5), (5, 4), (5, 6), (6, 5)]


# -- graph attention --------------------------------------------------------------------------------
@pytest.fixture
def gat_case():
    torch.manual_seed(0)
    coords = np.random.default_rng(1).uniform(0, 8, (25, 2))
    edges = knn_graph(coords, k=4, max_distance=2.5)
    edges = edges[:, edges[0] != 3]  # spot 3 has no neighbour at all
    n = len(coords)
    layer = thi.GraphAttention(7, 5, heads=3, dropout=0.2, alpha=0.01, elu=True, softmax="neighbours").eval()
    return layer, torch.randn(n, 7), edges, n


def test_gat_attention_sums_to_one_over_neighbours_and_is_zero_elsewhere(gat_case):
    layer, h, edges, n = gat_case
    table, mask = _table(edges, n)
    _, attention = layer(h, table, mask, return_attention=True)  # (n, k, heads)
    dense = torch.zeros(layer.W.shape[0], n, n)
    for j in range(table.shape[1]):
        rows = torch.nonzero(mask[:, j]).squeeze(1)
        dense[:, rows, table[rows, j]] = attention[rows, j].T
    adjacency = torch.zeros(n, n)
    adjacency[edges[0], edges[1]] = 1
    has = adjacency.sum(1) > 0
    assert torch.allclose(dense.sum(-1)[:, has], torch.ones(1)), "each spot's weights over its neighbours sum to 1"
    assert (dense[:, adjacency == 0] == 0).all(), "exactly 0 outside the graph (self included)"
    assert torch.equal(attention[~mask], torch.zeros_like(attention[~mask]))


def test_gat_neighbour_softmax_matches_the_dense_masked_softmax(gat_case):
    layer, h, edges, n = gat_case
    adjacency = torch.zeros(n, n)
    adjacency[edges[0], edges[1]] = 1
    with torch.no_grad():
        ours = layer(h, *_table(edges, n))
        reference = _dense_gat_reference(layer, h, adjacency)
    assert torch.allclose(ours, reference, atol=1e-5)
    # The isolated spot: the published -9e15 mask gives a uniform average over all spots.
    assert torch.allclose(ours[3], F.elu((h @ layer.W).mean(dim=1)), atol=1e-5)


def test_gat_output_ignores_non_neighbours(gat_case):
    layer, h, edges, n = gat_case
    table, mask = _table(edges, n)
    i = int(edges[0, 0])
    neighbours = set(edges[1, edges[0] == i].tolist())
    outsider = next(m for m in range(n) if m != i and m not in neighbours)
    neighbour = next(iter(neighbours))
    with torch.no_grad():
        base = layer(h, table, mask)
        moved = h.clone()
        moved[outsider] += 10
        assert torch.allclose(layer(moved, table, mask)[i], base[i], rtol=0, atol=1e-6)
        moved = h.clone()
        moved[neighbour] += 10
        assert not torch.allclose(layer(moved, table, mask)[i], base[i])


def test_multi_head_gat_reaches_two_hops_only():
    torch.manual_seed(0)
    coords = np.stack([np.arange(12), np.zeros(12)], 1)  # a line: inner spots link to both sides
    edges = knn_graph(coords, k=2)
    table, mask = _table(edges, 12)
    gat = thi.MultiHeadGAT(6, 4, 3, heads=2, dropout=0.2, alpha=0.01, softmax="neighbours").eval()
    assert gat.out.W.shape == (1, 2 * 4, 3), "heads are concatenated before the output layer"
    h = torch.randn(12, 6)
    with torch.no_grad():
        base = gat(h, table, mask)
        far = h.clone()
        far[0] += 5  # spot 3 hears from 2 and 4, which hear from 1, 3 and 5: spot 0 is out of reach
        assert torch.allclose(gat(far, table, mask)[3:], base[3:], rtol=0, atol=1e-6)
        assert not torch.allclose(gat(far, table, mask)[2], base[2])  # 2 hears from 1, which hears from 0


def test_published_gat_weights_sum_to_one_over_the_spots_that_list_a_neighbour(gat_case):
    _, h, edges, n = gat_case
    layer = thi.GraphAttention(7, 5, heads=3, dropout=0.2, alpha=0.01, elu=True).eval()
    assert layer.softmax == "published"
    edges = edges[:, edges[1] != 5]  # no spot lists spot 5
    table, mask = _table(edges, n)
    _, attention = layer(h, table, mask, return_attention=True)
    column_sums = torch.zeros(n, 3).index_add_(0, table[mask], attention[mask])
    listed = torch.zeros(n, dtype=torch.bool)
    listed[table[mask]] = True
    assert not listed.all(), "the case has spots that no spot lists"
    torch.testing.assert_close(column_sums[listed], torch.ones(int(listed.sum()), 3))
    # Unlisted spots reach every spot with weight 1/n: moving one moves every output.
    j = int(torch.nonzero(~listed)[0])
    moved = h.clone()
    moved[j] += 5
    with torch.no_grad():
        assert (layer(moved, table, mask) - layer(h, table, mask)).abs().sum(dim=(1, 2)).gt(0).all()
    layer.train()
    torch.manual_seed(0)
    a = layer(h, table, mask)
    torch.manual_seed(1)
    assert not torch.allclose(a, layer(h, table, mask))


def test_gat_dropout_acts_only_in_training(gat_case):
    layer, h, edges, n = gat_case
    table, mask = _table(edges, n)
    layer.train()
    torch.manual_seed(0)
    a = layer(h, table, mask)
    torch.manual_seed(1)
    b = layer(h, table, mask)
    assert not torch.allclose(a, b)
    layer.eval()
    assert torch.equal(layer(h, table, mask), layer(h, table, mask))


# -- capsules ---------------------------------------------------------------------------------------
def test_squash_keeps_direction_and_maps_norms_into_0_1():
    torch.manual_seed(0)
    s = torch.randn(1000, 8) * torch.logspace(-4, 0.5, 1000)[:, None]
    v = thi.squash(s)
    norms = v.norm(dim=-1)
    assert (norms >= 0).all() and (norms < 1).all()
    assert torch.allclose(norms, 1 - torch.exp(-s.norm(dim=-1)), atol=1e-6)  # 1 - 1/exp(|s|)
    assert torch.allclose(F.cosine_similarity(v, s, dim=-1), torch.ones(1000), atol=1e-4)
    order = s.norm(dim=-1).argsort()
    assert (norms[order].diff() > -1e-6).all()  # a longer input gives a longer capsule
    huge = thi.squash(torch.full((3, 8), 1e4))  # float32 rounds 1 - e^-n to 1 for large n: never above
    assert torch.isfinite(huge).all() and (huge.norm(dim=-1) <= 1 + 1e-6).all()
    assert torch.equal(thi.squash(torch.zeros(2, 8)), torch.zeros(2, 8))


def test_self_attention_routing_normalises_over_output_capsules():
    torch.manual_seed(0)
    routing = thi.SelfAttentionRouting(n_caps=20, caps_dim=64)
    primary = thi.squash(torch.randn(5, 16, 8))
    out, coupling = routing(primary, return_coupling=True)
    assert out.shape == (5, 20, 64) and coupling.shape == (5, 20, 16, 1)
    assert torch.allclose(coupling.sum(dim=1), torch.ones(5, 16, 1)), "softmax over the 20 output capsules"
    assert (out.norm(dim=-1) < 1).all()
    # The published agreement: c_kj = softmax_k((u_kj . sum_i u_ki) / sqrt(64)).
    u = torch.einsum("bji,kjiz->bkjz", primary, routing.W)
    logits = (u * u.sum(dim=2, keepdim=True)).sum(-1) / 8.0
    assert torch.allclose(coupling.squeeze(-1), torch.softmax(logits, dim=1), atol=1e-6)


def test_capsnet_shapes_at_the_published_patch_size():
    assert thi.capsnet_map_size(112, 4, 4) == 9  # 112 -> 28 -> 24 -> 22 -> 20 -> 9: primary kernel 9
    assert thi.capsnet_map_size(64, 4, 4) == 3
    with pytest.raises(ValueError, match="too small"):
        thi.capsnet_map_size(40, 4, 4)
    net = thi.EfficientCapsNet(16, n_caps=20, caps_dim=64, map_size=9).eval()
    assert net.primary.kernel_size == (9, 9) and net.primary.groups == 128
    with torch.no_grad():
        out = net(torch.randn(3, 16, 28, 28))
    assert out.shape == (3, 20, 64) and (out.norm(dim=-1) < 1).all()


# -- ODConv -----------------------------------------------------------------------------------------
def test_odconv_shapes_and_attention_ranges():
    torch.manual_seed(0)
    conv = thi.ODConv2d(3, 16, kernel_size=4, stride=4, kernel_num=4)
    x = torch.rand(6, 3, 112, 112) * 255
    out = conv(x)
    assert out.shape == (6, 16, 28, 28)
    channel, filt, spatial, kernel = conv.attention(x)
    assert channel.shape == (6, 3, 1, 1) and filt.shape == (6, 16, 1, 1)
    assert spatial.shape == (6, 1, 1, 1, 4, 4) and kernel.shape == (6, 4, 1, 1, 1, 1)
    for a in (channel, filt, spatial, kernel):
        assert ((a > 0) & (a < 1)).all()
    assert torch.allclose(kernel.sum(dim=1), torch.ones(6, 1, 1, 1, 1))
    assert conv.attention.fc.out_features == 16  # max(int(3 * 0.0625), 16)


def test_odconv_is_a_per_sample_convolution_with_the_attended_kernel():
    torch.manual_seed(0)
    conv = thi.ODConv2d(3, 16, kernel_size=4, stride=4).eval()
    x = torch.rand(4, 3, 32, 32) * 255
    with torch.no_grad():
        out = conv(x)
        channel, filt, spatial, kernel = conv.attention(x)
        for i in range(4):
            w = (spatial[i] * kernel[i] * conv.weight).sum(dim=0)  # sum_n a_s * a_w,n * W_n
            expected = F.conv2d(x[i:i + 1] * channel[i:i + 1], w, stride=4) * filt[i:i + 1]
            assert torch.allclose(out[i:i + 1], expected, rtol=1e-4, atol=1e-3)
        changed = x.clone()
        changed[1] = 0  # in eval mode a sample's output does not depend on the others
        assert torch.allclose(conv(changed)[0], out[0])


# -- the method -------------------------------------------------------------------------------------
def test_paper_defaults_and_patch_spec():
    m = THItoGene()
    assert (m.epochs, m.lr, m.routing_lr, m.depth, m.vit_heads, m.gat_heads) == (300, 1e-5, None, 4, 16, 8)
    assert m.gat_softmax == "published"
    assert (m.capsules, m.capsule_dim, m.n_positions, m.n_neighbours, m.gat_alpha) == (20, 64, 64, 4, 0.01)
    assert (m.patch_spec().window_um, m.patch_spec().px) == (82.0, 112)
    model = m.build_model(n_genes=7)
    assert model.vit.blocks[0].attn.to_qkv.in_features == 22 * 64  # 20 capsules + x and y tokens of 64
    assert model.gat.hidden.W.shape == (8, 1408, 1024) and model.gat.out.W.shape == (1, 8192, 512)
    assert len(model.vit.blocks) == 4 and model.gene_head[-1].out_features == 7


def test_model_forward_on_one_slide():
    torch.manual_seed(0)
    m = THItoGene(**THItoGene.profiles["quick"])
    model = m.build_model(n_genes=5).eval()
    coords = _grid(5)
    table, mask = _table(knn_graph(coords, k=4), 25)
    with torch.no_grad():
        out = model(torch.rand(25, 3, 64, 64) * 255, torch.as_tensor(coords), table, mask)
    assert out.shape == (25, 5) and torch.isfinite(out).all()


def test_only_the_routing_layer_gets_routing_lr():
    m = THItoGene(**{**THItoGene.profiles["quick"], "routing_lr": 0.5})
    m.model_ = m.build_model(n_genes=3)
    groups = m._parameter_groups()
    assert len(groups) == 2 and groups[1]["lr"] == 0.5
    assert {id(p) for p in groups[1]["params"]} == {id(m.model_.capsnet.routing.W), id(m.model_.capsnet.routing.b)}
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in m.model_.parameters())
    m.routing_lr = None
    assert len(m._parameter_groups()) == 1


def test_positions_outside_the_table_are_refused(synthetic, tmp_path):
    from bench.data.patches import PatchStore
    from bench.data.preprocess import parse_panel
    from bench.data.splits import make_folds
    from bench.method import Runtime
    from bench.run.inputs import build_fold_inputs, fold_panel

    method = THItoGene(epochs=1, patch_px=48, depth=1, mlp_dim=32, gat_hidden=8, n_positions=5)
    method.runtime = Runtime(progress=False)
    patient_of = {s: synthetic[s].patient_id for s in synthetic.imaged_sections()}
    fold = make_folds("lopo", patient_of, seed=0)[0]
    genes = fold_panel(synthetic, fold, parse_panel("top-mean:10"))
    inputs = build_fold_inputs(synthetic, fold, genes, PatchStore(tmp_path), method.patch_spec())
    with pytest.raises(ValueError, match="n_positions"):
        method.fit(inputs.train)


def test_tiny_slides_run_in_eval_mode():
    torch.manual_seed(0)
    m = THItoGene(**{**THItoGene.profiles["quick"], "patch_px": 48})
    model = m.build_model(n_genes=3).eval()
    for n in (1, 2):
        coords = np.stack([np.arange(n), np.zeros(n, dtype=int)], 1)
        table, mask = _table(knn_graph(coords, k=4), n)
        assert mask.sum() == n * (n - 1)  # a spot never links to itself
        with torch.no_grad():
            out = model(torch.rand(n, 3, 48, 48) * 255, torch.as_tensor(coords), table, mask)
        assert out.shape == (n, 3) and torch.isfinite(out).all()
