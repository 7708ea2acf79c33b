"""Whole-model references: each method's network, given the same weights and the same tiny input as the
ORIGINAL class, gives the original's output to 1e-5. The originals' outputs are vendored in
tests/fixtures/reference/<method>.npz, made by tests/fixtures/reference/make_references.py from the authors' repositories
(README.md there). Weights and inputs come from tests/fixtures/reference/fill.py by the original's tensor names, so the
npz holds only those names and shapes; each test maps them onto the suite's names and loads them strictly (a
parameter that exists on one side only fails). A change to a layer, its order, an activation or a shape fails.

tests/methods/test_faithfulness.py checks the losses and the graph layers against formulas; this checks the networks.
"""
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.method import Runtime, build_method
from bench.registry import get_method_class

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "reference"  # arrays and the scripts that made them
_spec = importlib.util.spec_from_file_location("reference_fill", REFERENCE / "fill.py")
fill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fill)


class Reference:
    def __init__(self, method: str):
        z = np.load(REFERENCE / f"{method}.npz")
        self.meta = json.loads(str(z["meta"]))
        self.config = self.meta["config"]
        self.names = [str(n) for n in z["names"]]
        self.shapes = fill.unpack_shapes(z["shape_values"], z["shape_offsets"])
        self.arrays = {k: torch.as_tensor(z[k]) for k in z.files if k.startswith(("out_", "in_"))}

    def state(self, rules, convert=None) -> dict:
        """The original's state dict, renamed by ``rules`` (regex, replacement) applied in order, then
        ``convert(state)`` for tensors whose layout differs."""
        state = {}
        for name, shape in zip(self.names, self.shapes):
            new = name
            for pattern, replacement in rules:
                new = re.sub(pattern, replacement, new)
            state[new] = torch.as_tensor(fill.values(name, shape))
        return convert(state) if convert else state

    def input(self, name: str, shape, raw: bool = False) -> torch.Tensor:
        return torch.as_tensor((fill.raw_image if raw else fill.values)(f"input:{name}", shape))


def _paper(name, **overrides):
    method = build_method(get_method_class(name), "paper", overrides)
    method.runtime = Runtime(seed=0, progress=False, pretrained="no")
    return method


def _load(model: torch.nn.Module, state: dict) -> torch.nn.Module:
    model.double()  # float64 like the reference: the state's arrays load without a copy
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}, strict=True)
    return model.eval()


def _close(got, expected):
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


PROJECTION = [(r"projection\.layer_norm\.", "projection.norm.")]
# vit-pytorch's PreNorm(Attention) / PreNorm(FeedForward) pairs -> bench.nn.layers.PreNormBlock
PRENORM = [(r"\.0\.norm\.", ".attn_norm."), (r"\.0\.fn\.to_", ".attn.to_"), (r"\.1\.norm\.", ".mlp_norm."),
           (r"\.1\.fn\.net\.", ".mlp.")]


def test_stnet_is_the_published_densenet121():
    ref = Reference("stnet")
    model, _ = _paper("st-net").build_model(ref.config["n_genes"])
    _load(model, ref.state([]))
    with torch.no_grad():
        _close(model(ref.input("images", ref.config["images"])), ref.arrays["out_prediction"])


@pytest.mark.slow
def test_bleep_is_the_published_clip_model():
    ref = Reference("bleep")
    model = _load(_paper("bleep").build_model(ref.config["n_genes"]),
                  ref.state([(r"^image_encoder\.model\.", "image_encoder."), *PROJECTION]))
    images = ref.input("images", ref.config["images"])
    expression = ref.input("expression", (ref.config["images"][0], ref.config["n_genes"]))
    with torch.no_grad():
        _close(model.embed_images(images), ref.arrays["out_image_embeddings"])
        _close(model.embed_spots(expression), ref.arrays["out_spot_embeddings"])
        _close(model.loss(images, expression), ref.arrays["out_loss"])


@pytest.mark.slow
def test_mclstexp_is_the_published_attention_model():
    ref = Reference("mclstexp")
    cfg = ref.config
    rules = [(r"^image_encoder\.model\.0\.", "image_encoder.features."), (r"^([xy])_embed", r"spot_encoder.\1_embed"),
             (r"^spot_encoder\.(\d+)\.attn\.norm\.", r"spot_encoder.blocks.blocks.\1.attn_norm."),
             (r"^spot_encoder\.(\d+)\.attn\.fn\.", r"spot_encoder.blocks.blocks.\1.attn."),
             (r"^spot_encoder\.(\d+)\.ff\.norm\.", r"spot_encoder.blocks.blocks.\1.mlp_norm."),
             (r"^spot_encoder\.(\d+)\.ff\.fn\.net\.", r"spot_encoder.blocks.blocks.\1.mlp."), *PROJECTION]
    method = _paper("mclstexp")
    assert (method.depth, method.heads, method.dim_head) == (cfg["depth"], cfg["heads"], cfg["dim_head"])
    model = _load(method.build_model(cfg["n_genes"]), ref.state(rules))
    n = cfg["images"][0]
    images = ref.input("images", cfg["images"])
    expression = ref.input("expression", (n, cfg["n_genes"]))
    coords = ref.arrays["in_position"].long()
    with torch.no_grad():
        _close(model.embed_images(images), ref.arrays["out_image_embeddings"])
        _close(model.embed_spots(expression, coords), ref.arrays["out_spot_embeddings"])
        _close(model.loss(images, expression, coords), ref.arrays["out_loss"])


def test_histogene_is_the_published_vit():
    ref = Reference("histogene")
    cfg = ref.config
    # vis_model.HisToGene: ViT(heads=16, dim_head=64, mlp_dim=2 * dim, dropout 0.1, emb_dropout 0.1)
    method = _paper("histogene", patch_px=cfg["patch_px"], dim=cfg["dim"], depth=cfg["depth"], mlp_dim=2 * cfg["dim"])
    rules = [(r"^vit\.transformer\.layers\.(\d+)", r"transformer.blocks.\1"), *PRENORM]
    model = _load(method.build_model(cfg["n_genes"]), ref.state(rules))
    patches = ref.input("patches", (1, cfg["n_spots"], 3 * cfg["patch_px"] ** 2), raw=True)[0]
    with torch.no_grad():
        _close(model(patches, ref.arrays["in_centers"].long()), ref.arrays["out_prediction"])


def _slide(coords, px):
    from bench.method import SpotData

    n = len(coords)
    return SpotData(genes=["g"], section_ids=np.array(["s"] * n), spot_ids=np.arange(n).astype(str),
                    array_coords=np.asarray(coords, dtype=np.int64), pixel_coords=np.zeros((n, 2)),
                    patches=np.zeros((n, px, px, 3), np.uint8), expression=np.zeros((n, 1), np.float32),
                    counts=np.ones((n, 1), np.float32))


def _dense(index, mask, n):
    """A neighbour table as the dense adjacency the originals use (row i: the spots i aggregates from)."""
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)[:, None].expand_as(index)
    adjacency[rows[mask.bool()], index[mask.bool()]] = 1.0
    return adjacency


def test_hist2st_is_the_published_model():
    ref = Reference("hist2st")
    cfg = ref.config
    h2s = sys.modules[get_method_class("hist2st").__module__]
    method = _paper("hist2st", **{k: cfg[k] for k in ("patch_px", "patch_size", "kernel_size", "channels",
                                                       "mixer_depth", "depth", "heads", "dim_head", "gnn_depth",
                                                       "n_copies")})
    model = h2s.Hist2STModel(cfg["n_genes"], method.patch_px, method.patch_size, method.kernel_size, method.channels,
                             method.mixer_depth, method.depth, method.heads, method.dim_head, method.gnn_depth,
                             method.jk_lstm_layers, method.dropout, method.n_positions, distill=True)
    rules = [(r"^vit\.transformer\.layer1\.(\d+)\.dw\.", r"mixer.\1.depthwise."),
             (r"^vit\.transformer\.layer1\.(\d+)\.pw\.", r"mixer.\1.pointwise."),
             (r"^vit\.transformer\.layer2\.(\d+)\.attn\.norm\.", r"transformer.blocks.\1.attn_norm."),
             (r"^vit\.transformer\.layer2\.(\d+)\.attn\.fn\.", r"transformer.blocks.\1.attn."),
             (r"^vit\.transformer\.layer2\.(\d+)\.ff\.norm\.", r"transformer.blocks.\1.mlp_norm."),
             (r"^vit\.transformer\.layer2\.(\d+)\.ff\.fn\.net\.", r"transformer.blocks.\1.mlp."),
             (r"^vit\.transformer\.layer3\.", "graph.layers."), (r"^vit\.transformer\.jknet\.0\.", "graph.jk."),
             (r"^vit\.transformer\.down\.", "down."), (r"^(mean|disp|pi)\.0\.", r"\1_head."),
             (r"^coef\.", "coef_head.")]
    _load(model, ref.state(rules))
    coords = ref.arrays["in_coords"].long()
    table = method._prepare(_slide(coords.numpy(), cfg["patch_px"]), with_targets=False)[0].table
    # the suite's graph is the original's calcADJ(k=4, pruneTag="Grid") on these spots
    torch.testing.assert_close(_dense(table.index, table.mask, len(coords)), ref.arrays["in_adjacency"])
    images = ref.input("patches", (1, len(coords), 3, cfg["patch_px"], cfg["patch_px"]), raw=True)[0]
    with torch.no_grad():
        h = model.embed(images, coords, table)
        _close(model.gene_head(h), ref.arrays["out_prediction"])
        # zinb_parameters computes in float32 for stability under bf16; the same activations in float64 here
        _close(h2s.mean_activation(model.mean_head(h)), ref.arrays["out_zinb_mean"])
        _close(h2s.dispersion_activation(model.disp_head(h)), ref.arrays["out_zinb_disp"])
        _close(torch.sigmoid(model.pi_head(h)), ref.arrays["out_zinb_pi"])
        _close(model.coef_head(h), ref.arrays["out_distill_coefficient"])


def _thitogene_state(state: dict) -> dict:
    """The original's per-head GAT tensors stacked as the suite keeps them, its 1x1 convolutions as Linear."""
    heads = sorted(k for k in state if re.fullmatch(r"gat\.attention_\d+\.W", k))
    state["gat.hidden.W"] = torch.stack([state.pop(k) for k in heads])
    state["gat.hidden.a"] = torch.stack([state.pop(k.replace(".W", ".a"))[:, 0] for k in heads])
    state["gat.out.W"] = state.pop("gat.out_att.W")[None]
    state["gat.out.a"] = state.pop("gat.out_att.a")[:, 0][None]
    for k in [k for k in state if k.startswith("odconv.attention.") and k.endswith("fc.weight")]:
        state[k] = state[k][:, :, 0, 0]
    return state


def test_thitogene_is_the_published_model():
    ref = Reference("thitogene")
    cfg = ref.config
    # vis_model.THItoGene: ViT(dim=caps_out, heads=heads[0], dim_head 64 (default), mlp_dim=2 * dim), GAT with
    # heads[1] heads of nhid 1024 -> 512, head Linear(512, 1024)
    method = _paper("thitogene", depth=cfg["depth"], capsules=cfg["capsules"], capsule_dim=cfg["capsule_dim"],
                    vit_heads=cfg["vit_heads"], gat_heads=cfg["gat_heads"], mlp_dim=2 * cfg["dim"])
    rules = [(r"^odconv2d\.", "odconv."), (r"^caps_layer\.conv(\d)\.", lambda m: f"capsnet.convs.{int(m[1]) - 1}."),
             (r"^caps_layer\.batch_norm(\d)\.", lambda m: f"capsnet.norms.{int(m[1]) - 1}."),
             (r"^caps_layer\.primary_caps\.depthwise_conv\.", "capsnet.primary."),
             (r"^caps_layer\.digit_caps\.", "capsnet.routing."),
             (r"^vit\.transformer\.layers\.(\d+)", r"vit.blocks.\1"), *PRENORM]
    model = _load(method.build_model(cfg["n_genes"]), ref.state(rules, _thitogene_state))
    coords = ref.arrays["in_coords"].long()
    prepared = method._prepare(_slide(coords.numpy(), cfg["patch_px"]), with_targets=False)
    # the suite's graph is the original's calcADJ(k=4, pruneTag="NA") on these spots
    torch.testing.assert_close(_dense(prepared["neighbours"], prepared["mask"], len(coords)),
                               ref.arrays["in_adjacency"])
    images = ref.input("patches", (1, len(coords), 3, cfg["patch_px"], cfg["patch_px"]), raw=True)[0]
    with torch.no_grad():
        _close(model(images, coords, prepared["neighbours"], prepared["mask"]), ref.arrays["out_prediction"][0])


def test_references_record_where_they_came_from():
    for name, repo in {"stnet": "bryanhe/ST-Net", "bleep": "bowang-lab/BLEEP", "mclstexp": "ZhicengShi/mclSTExp",
                       "histogene": "maxpmx/HisToGene", "hist2st": "biomed-AI/Hist2ST",
                       "thitogene": "yrjia1015/THItoGene"}.items():
        meta = Reference(name).meta
        assert meta["repo"] == repo and re.fullmatch(r"[0-9a-f]{40}", meta["commit"])
