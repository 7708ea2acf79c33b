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
    "hist2st": {"n_genes": 5, "patch_px": 14, "patch_size": 7, "kernel_size": 5, "channels": 32, "depth": 1,
                "heads": 2, "dim_head": 8, "gnn_depth": 2, "n_spots": 9},
    "thitogene": {"n_genes": 5, "patch_px": 48, "depth": 1, "n_spots": 7},
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
