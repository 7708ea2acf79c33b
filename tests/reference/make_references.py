"""Run each method's ORIGINAL model class on fixed weights and a fixed tiny input, and store its output in
tests/data/reference/<method>.npz (see README.md here for how to rerun).

The original code is imported from a checkout of the authors' repository, unchanged; only what a model's
forward pass does not use is stubbed (pytorch_lightning's base class becomes ``nn.Module``, torchmetrics and
easydl imports are satisfied by empty modules, ``.cuda()`` is the identity on this CPU, and ImageNet weight
downloads are skipped: every tensor is overwritten anyway). Weights and inputs come from ``fill.py``, by the
original's parameter names; the npz keeps those names and shapes (not the values), the tiny configuration, the
outputs, and the repository and commit it ran.

    python tests/reference/make_references.py [--mirror DIR] [method ...]

``--mirror``: a folder holding ``<owner>+<name>/repo`` bare git directories (what the project's fetch tool
writes); each repository's HEAD is exported to a temporary folder. Or ``--source method=PATH`` for a plain
checkout. Needs torch, torchvision, timm and einops (``pip install einops``; pure Python).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fill  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "data" / "reference"
REPOS = {"stnet": "bryanhe/ST-Net", "bleep": "bowang-lab/BLEEP", "mclstexp": "ZhicengShi/mclSTExp",
         "histogene": "maxpmx/HisToGene", "hist2st": "biomed-AI/Hist2ST", "thitogene": "yrjia1015/THItoGene"}
# The tiny configurations (the suite's test builds its model with the same values).
CONFIG = {
    "stnet": {"n_genes": 5, "images": [2, 3, 32, 32]},
    "bleep": {"n_genes": 6, "images": [3, 3, 32, 32]},
    "mclstexp": {"n_genes": 6, "images": [3, 3, 32, 32], "depth": 2, "heads": 8, "dim_head": 64},
    "histogene": {"n_genes": 5, "patch_px": 8, "dim": 32, "depth": 2, "n_spots": 6},
    # Hist2ST's attention blocks take vit-pytorch's default dim_head of 64; dim = (14 // 7)² x 32 // 8 = 16
    "hist2st": {"n_genes": 5, "patch_px": 14, "patch_size": 7, "kernel_size": 5, "channels": 32, "mixer_depth": 2,
                "depth": 1, "heads": 2, "dim_head": 64, "gnn_depth": 2, "n_copies": 5},
    # THItoGene's capsule network needs 112 px (its primary capsules' kernel is 9); GAT 1024 / 512 and the
    # head's 1024 are fixed in the original class, the rest is made small through its constructor.
    "thitogene": {"n_genes": 5, "patch_px": 112, "depth": 1, "capsules": 2, "capsule_dim": 4, "vit_heads": 2,
                  "gat_heads": 2, "dim": 8},
}


# -- helpers -------------------------------------------------------------------------------------------
def export(mirror: Path, repo: str, dest: Path) -> str:
    """The repository's Python files at HEAD into ``dest`` (data files, some stored absent, are not needed);
    returns the commit."""
    git_dir = mirror / repo.replace("/", "+") / "repo"
    git = ["git", "--git-dir", str(git_dir)]
    commit = subprocess.check_output(git + ["rev-parse", "HEAD"], text=True).strip()
    files = [f for f in subprocess.check_output(git + ["ls-tree", "-r", "--name-only", "HEAD"], text=True).split("\n")
             if f.endswith(".py")]
    archive = subprocess.run(git + ["archive", "HEAD", "--"] + files, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return commit


def stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def lightning_stubs():
    """What the original files import for training only (their forward passes use plain torch)."""
    stub("pytorch_lightning", LightningModule=torch.nn.Module, Trainer=object)
    stub("torchmetrics")
    stub("torchmetrics.functional", accuracy=None)
    stub("easydl")


@contextlib.contextmanager
def imported_from(path: Path):
    """Import the original's top-level modules from ``path``; forget them afterwards (names clash between
    repositories: several have a ``transformer.py``)."""
    before = set(sys.modules)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for name in set(sys.modules) - before:
            if not name.startswith(("torch", "numpy", "timm", "einops", "scipy", "sklearn", "pandas")):
                sys.modules.pop(name, None)


def load(model: torch.nn.Module) -> tuple[list[str], list[tuple[int, ...]]]:
    """Fill every tensor of the model's state dict from its name; returns the names and shapes."""
    state = model.state_dict()
    names = list(state)
    shapes = [tuple(state[n].shape) for n in names]
    values = fill.state_dict(names, shapes)
    model.load_state_dict({n: torch.as_tensor(values[n]).to(state[n].dtype) for n in names})
    return names, shapes


def outputs_of(module: torch.nn.Module, names: list[str], model: torch.nn.Module) -> dict:
    """Forward hooks that record the outputs of the named submodules."""
    seen = {}
    for name in names:
        model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    return seen


# -- one function per method: (model, inputs -> outputs) ------------------------------------------------
def make_stnet(src: Path, cfg: dict) -> dict:
    import torchvision

    stub("stnet")  # stnet/utils/nn.py imports its package only for the name
    spec = importlib.util.spec_from_file_location("stnet_nn", src / "stnet" / "utils" / "nn.py")
    stnet_nn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stnet_nn)
    # run_spatial.py: torchvision.models.__dict__[args.model](pretrained=args.pretrained), then
    # stnet.utils.nn.set_out_features(model, outputs); ``weights=None`` is today's spelling of pretrained=False
    model = torchvision.models.__dict__["densenet121"](weights=None)
    stnet_nn.set_out_features(model, cfg["n_genes"])
    names, shapes = load(model.double().eval())
    images = torch.as_tensor(fill.values("input:images", cfg["images"]))
    with torch.no_grad():
        return {"names": names, "shapes": shapes, "out:prediction": model(images)}


def make_bleep(src: Path, cfg: dict) -> dict:
    with imported_from(src):
        config = importlib.import_module("config")
        config.pretrained = False  # no download; every weight is overwritten below
        config.spot_embedding = cfg["n_genes"]
        models = importlib.import_module("models")
        model = models.CLIPModel().double().eval()  # ImageEncoder: timm resnet50, num_classes=0, avg pool
        names, shapes = load(model)
        seen = outputs_of(model, ["image_projection", "spot_projection"], model)
        batch = {"image": torch.as_tensor(fill.values("input:images", cfg["images"])),
                 "reduced_expression": torch.as_tensor(fill.values("input:expression",
                                                                   (cfg["images"][0], cfg["n_genes"])))}
        with torch.no_grad():
            loss = model(batch)
    return {"names": names, "shapes": shapes, "out:image_embeddings": seen["image_projection"],
            "out:spot_embeddings": seen["spot_projection"], "out:loss": loss}


def make_mclstexp(src: Path, cfg: dict) -> dict:
    with imported_from(src):
        original = importlib.import_module("model")
        original.DenseNet121_Weights = types.SimpleNamespace(DEFAULT=None)  # no download
        cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self  # the loss's label matrix; this machine has no GPU
        try:
            # train.py: mclSTExp_Attention(encoder_name="densenet121", spot_dim=n_genes, temperature=1.,
            # image_dim=1024, projection_dim=256, heads_num=8, heads_dim=64, head_layers=2, dropout=0.)
            model = original.mclSTExp_Attention(encoder_name="densenet121", temperature=1.0, image_dim=1024,
                                                spot_dim=cfg["n_genes"], projection_dim=256, heads_num=cfg["heads"],
                                                heads_dim=cfg["dim_head"], head_layers=cfg["depth"],
                                                dropout=0.0).double().eval()
            names, shapes = load(model)
            seen = outputs_of(model, ["image_projection", "spot_projection"], model)
            n = cfg["images"][0]
            batch = {"image": torch.as_tensor(fill.values("input:images", cfg["images"])),
                     "expression": torch.as_tensor(fill.values("input:expression", (n, cfg["n_genes"]))),
                     "position": torch.as_tensor(fill.raw_image("input:position", (n, 2)) % 40)}
            with torch.no_grad():
                loss = model(batch)
        finally:
            torch.Tensor.cuda = cuda
    return {"names": names, "shapes": shapes, "out:image_embeddings": seen["image_projection"],
            "out:spot_embeddings": seen["spot_projection"].squeeze(0), "out:loss": loss,
            "in:position": batch["position"]}


def make_histogene(src: Path, cfg: dict) -> dict:
    lightning_stubs()
    with imported_from(src):
        vis_model = importlib.import_module("vis_model")
        model = vis_model.HisToGene(patch_size=cfg["patch_px"], n_layers=cfg["depth"], n_genes=cfg["n_genes"],
                                    dim=cfg["dim"], n_pos=64).double().eval()
        names, shapes = load(model)
        n = cfg["n_spots"]
        patches = torch.as_tensor(fill.raw_image("input:patches", (1, n, 3 * cfg["patch_px"] ** 2)))
        centers = torch.as_tensor(fill.raw_image("input:centers", (1, n, 2)) % 64).long()
        with torch.no_grad():
            out = model(patches, centers)
    return {"names": names, "shapes": shapes, "out:prediction": out[0], "in:centers": centers[0]}


# Spot positions with no tie between a spot's 4th and 5th nearest (the original's argsort would break a tie
# in its own order) and, for Hist2ST's "Grid" pruning, every spot within 2 of some other spot (else the
# published mean divides by 0).
COORDS = np.array([[1, 4], [2, 5], [2, 3], [1, 0], [3, 4], [0, 1], [4, 4]])


def make_hist2st(src: Path, cfg: dict) -> dict:
    lightning_stubs()
    with imported_from(src):
        h2s = importlib.import_module("HIST2ST")
        graph_construction = importlib.import_module("graph_construction")
        # HIST2ST_train.py / the tutorial: Hist2ST(depth1=2, depth2=8, depth3=4, n_genes, learning_rate=1e-5,
        # kernel_size=5, patch_size=7, fig_size=112, heads=16, channel=32, dropout=0.2, zinb=0.25, bake=5,
        # lamb=0.5, policy='mean'); here small sizes through the same constructor
        model = h2s.Hist2ST(fig_size=cfg["patch_px"], patch_size=cfg["patch_size"], kernel_size=cfg["kernel_size"],
                            channel=cfg["channels"], depth1=cfg["mixer_depth"], depth2=cfg["depth"],
                            depth3=cfg["gnn_depth"], heads=cfg["heads"], n_genes=cfg["n_genes"], dropout=0.2,
                            n_pos=64, zinb=0.25, bake=cfg["n_copies"], lamb=0.5, policy="mean").double().eval()
        names, shapes = load(model)
        n, px = len(COORDS), cfg["patch_px"]
        adj = graph_construction.calcADJ(COORDS.astype(float), k=4, pruneTag="Grid").double()  # dataset.py, HER2+
        patches = torch.as_tensor(fill.raw_image("input:patches", (1, n, 3, px, px)))
        centers = torch.as_tensor(COORDS)[None].long()
        with torch.no_grad():
            prediction, (mean, disp, pi), _ = model(patches, centers, adj)
            _, _, coefficient = model(patches, centers, adj, aug=True)
    return {"names": names, "shapes": shapes, "out:prediction": prediction, "out:zinb_mean": mean,
            "out:zinb_disp": disp, "out:zinb_pi": pi, "out:distill_coefficient": coefficient,
            "in:coords": torch.as_tensor(COORDS), "in:adjacency": adj}


def make_thitogene(src: Path, cfg: dict) -> dict:
    lightning_stubs()
    stub("scprep")  # utils.py imports it for data preparation only
    with imported_from(src):
        vis_model = importlib.import_module("vis_model")
        graph_construction = importlib.import_module("graph_construction")
        # train.py: THItoGene(n_genes=785, learning_rate=1e-5, route_dim=64, caps=20, heads=[16, 8], n_layers=4)
        model = vis_model.THItoGene(patch_size=cfg["patch_px"], n_layers=cfg["depth"], n_genes=cfg["n_genes"],
                                    dim=cfg["dim"], dropout=0.2, n_pos=64, heads=[cfg["vit_heads"], cfg["gat_heads"]],
                                    caps=cfg["capsules"], route_dim=cfg["capsule_dim"]).double().eval()
        names, shapes = load(model)
        n, px = len(COORDS), cfg["patch_px"]
        adj = graph_construction.calcADJ(COORDS.astype(float), k=4, pruneTag="NA").double()  # dataset.py
        patches = torch.as_tensor(fill.raw_image("input:patches", (1, n, 3, px, px)))
        centers = torch.as_tensor(COORDS)[None].long()
        with torch.no_grad():
            # the DataLoader (batch size 1) hands the model the adjacency as 1 x N x N: as it ran
            prediction = model(patches, centers, adj[None])
    return {"names": names, "shapes": shapes, "out:prediction": prediction, "in:coords": torch.as_tensor(COORDS),
            "in:adjacency": adj}


MAKERS = {name: globals()[f"make_{name}"] for name in CONFIG if f"make_{name}" in globals()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("methods", nargs="*", default=sorted(MAKERS))
    parser.add_argument("--mirror", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--source", action="append", default=[], help="method=PATH of a plain checkout")
    args = parser.parse_args(argv)
    sources = dict(s.split("=", 1) for s in args.source)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            if name in sources:
                src, commit = Path(sources[name]), "unknown (plain checkout)"
            else:
                src, commit = Path(tmp), export(args.mirror, REPOS[name], Path(tmp))
            torch.manual_seed(0)
            result = MAKERS[name](src, CONFIG[name])
        flat, offsets = fill.pack_shapes(result.pop("shapes"))
        arrays = {k.replace(":", "_"): np.asarray(torch.as_tensor(v).detach().double()) for k, v in result.items()
                  if k.startswith(("out:", "in:"))}
        meta = {"repo": REPOS[name], "commit": commit, "config": CONFIG[name], "torch": torch.__version__}
        np.savez_compressed(OUT / f"{name}.npz", names=np.asarray(result["names"]), shape_values=flat,
                            shape_offsets=offsets, meta=np.asarray(json.dumps(meta)), **arrays)
        size = (OUT / f"{name}.npz").stat().st_size
        print(f"{name}: {REPOS[name]}@{commit[:7]}, {len(result['names'])} tensors, outputs "
              f"{[k for k in arrays if k.startswith('out_')]}, {size / 1024:.1f} KB")


if __name__ == "__main__":
    main()
