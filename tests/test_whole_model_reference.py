"""Whole-model references: each method's network, given the same weights and the same tiny input as the
ORIGINAL class, gives the original's output to 1e-5. The originals' outputs are vendored in
tests/data/reference/<method>.npz, made by tests/reference/make_references.py from the authors' repositories
(README.md there). Weights and inputs come from tests/reference/fill.py by the original's tensor names, so the
npz holds only those names and shapes; each test maps them onto the suite's names and loads them strictly (a
parameter that exists on one side only fails). A change to a layer, its order, an activation or a shape fails.

tests/test_faithfulness.py checks the losses and the graph layers against formulas; this checks the networks.
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


def _tests_dir() -> Path:
    here = Path(__file__).resolve().parent
    for folder in (here, *here.parents):  # tests may move into tests/<stage>/ folders
        if (folder / "reference" / "fill.py").is_file() and (folder / "data" / "reference").is_dir():
            return folder
    raise FileNotFoundError("tests/reference/fill.py not found above " + str(here))


TESTS = _tests_dir()
_spec = importlib.util.spec_from_file_location("reference_fill", TESTS / "reference" / "fill.py")
fill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fill)


class Reference:
    def __init__(self, method: str):
        z = np.load(TESTS / "data" / "reference" / f"{method}.npz")
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


def test_references_record_where_they_came_from():
    for name, repo in {"stnet": "bryanhe/ST-Net", "bleep": "bowang-lab/BLEEP", "mclstexp": "ZhicengShi/mclSTExp",
                       "histogene": "maxpmx/HisToGene"}.items():
        meta = Reference(name).meta
        assert meta["repo"] == repo and re.fullmatch(r"[0-9a-f]{40}", meta["commit"])
