"""Make tests/data/triplex_reference.npz: the ORIGINAL TRIPLEX class's output for fixed weights and a tiny input.

Run from the repository root, with the original code fetched (NEXGEM/TRIPLEX) and ``einops`` installed
(``pip install einops``; the extra ``reference`` of pyproject.toml):

    python tools/triplex_reference.py /path/to/NEXGEM/TRIPLEX/git-dir

It writes ``src/model/TRIPLEX/{TRIPLEX,module}.py`` of commit 7f8ad96 (the version methods/triplex.py runs) into a
temporary folder and imports them as they are. Three things they import cannot run here and are stood in for:
``flash_attn`` (a CUDA kernel; stood in by plain softmax attention on its (batch, tokens, heads, dim) layout,
without dropout: the reference is an inference), ``wget`` (the checkpoint download; never called, because
``load_model_weights`` is replaced by an untrained torchvision ResNet-18, whose weights are then overwritten) and
``pytorch_lightning`` (imported, unused by the class).

Weights: every entry of the original model's state dict, in sorted key order, drawn from one seeded generator
(``fill_weights``; the test draws the suite's model's weights the same way, so equal names get equal values).
Dropout: the original's global attention layers never leave training mode (their ``train()`` does nothing without
an attention bias), so after ``eval()`` every dropout is switched off by hand: the reference is the model's
deterministic output. PEGH: the input's spots have distinct first coordinates, where the original's
sort-then-map-back order is unambiguous (see methods/triplex.py, Deviations).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

COMMIT = "7f8ad96c4533089f008692d7be732eb6415add18"
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "triplex_reference.npz"
# A small configuration of the published architecture (emb_dim must stay 512: the features enter unprojected).
CONFIG = dict(num_outputs=6, emb_dim=512, depth1=1, depth2=2, depth3=1, num_heads1=4, num_heads2=4, num_heads3=4,
              mlp_ratio1=1.0, mlp_ratio2=1.0, mlp_ratio3=0.5, dropout1=0.2, dropout2=0.1, dropout3=0.3,
              kernel_size=3)
SEED = 2024


def fill_weights(model: nn.Module, seed: int = SEED) -> None:
    """Every float entry of the state dict (sorted by name) from one generator: N(0, 0.05²), the neighbour
    attention's biases N(0, 1) (at 0.05 they would move the output by less than the test's 1e-5), BatchNorm
    running variances in [0.5, 1.5); integer entries left as they are."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name in sorted(state):
        t = state[name]
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif name.endswith("attention_biases"):
            t.copy_(torch.randn(t.shape, generator=g))
        else:
            t.copy_(torch.randn(t.shape, generator=g) * 0.05)


def tiny_input(seed: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    n_spots, batch = 7, 3
    # Distinct first coordinates; the second repeats (a real grid's columns), with a gap in the grid.
    positions = torch.tensor([[3, 1], [0, 0], [5, 2], [1, 1], [2, 0], [6, 0], [4, 2]], dtype=torch.long)
    mask = torch.ones(batch, 25, dtype=torch.long)
    mask[1, [0, 4, 20, 24]] = 0  # some masked neighbour tiles
    return {"img": torch.rand(batch, 3, 64, 64, generator=g) * 2 - 1,
            "neighbor_emb": torch.randn(batch, 25, 512, generator=g),
            "mask": mask,
            "global_emb": torch.randn(1, n_spots, 512, generator=g),
            "position": positions,
            "sid": torch.tensor([4, 0, 6], dtype=torch.long),
            "label": torch.rand(batch, CONFIG["num_outputs"], generator=g)}


def _attention(q, k, v):  # (b, n, h, d) each -> (b, n, h, d)
    w = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) * q.shape[-1] ** -0.5, dim=-1)
    return torch.einsum("bhnm,bmhd->bnhd", w, v)


def _stand_ins() -> None:
    flash = types.ModuleType("flash_attn")
    flash.flash_attn_qkvpacked_func = lambda qkv, dropout_p=0.0, softmax_scale=None, causal=False: _attention(
        qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    flash.flash_attn_func = lambda q, k, v, *args, **kwargs: _attention(q, k, v)
    sys.modules["flash_attn"] = flash
    sys.modules["wget"] = types.ModuleType("wget")
    sys.modules["pytorch_lightning"] = types.ModuleType("pytorch_lightning")


def original_class(git_dir: Path):
    root = Path(tempfile.mkdtemp(prefix="triplex-original-"))
    package = root / "model" / "TRIPLEX"
    package.mkdir(parents=True)
    (root / "model" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    for name in ("TRIPLEX.py", "module.py"):
        text = subprocess.run(["git", "-C", str(git_dir), "show", f"{COMMIT}:src/model/TRIPLEX/{name}"],
                              check=True, capture_output=True, text=True).stdout
        (package / name).write_text(text)
    _stand_ins()
    sys.path.insert(0, str(root))
    import torchvision

    from model.TRIPLEX import TRIPLEX as original

    def untrained_resnet18(_ckpt):
        resnet = torchvision.models.resnet18(weights=None)
        resnet.fc = nn.Identity()
        return resnet

    original.load_model_weights = untrained_resnet18
    return original.TRIPLEX


def main(git_dir: str) -> None:
    torch.manual_seed(0)
    model = original_class(Path(git_dir))(**CONFIG)
    fill_weights(model)
    model.eval()
    for m in model.modules():  # see the module docstring: the original keeps some dropout on in eval mode
        if isinstance(m, nn.Dropout):
            m.eval()
    x = tiny_input()
    with torch.no_grad():
        logits = model(x["img"], x["mask"], x["neighbor_emb"], position=x["position"],
                       global_emb=x["global_emb"], sid=x["sid"])["logits"]
        tokens = model._encode_all(x["img"], x["mask"], x["neighbor_emb"], x["position"], x["global_emb"],
                                   sid=x["sid"])
        loss = model._get_outputs(*tokens, x["label"])["loss"]
        fusion, target, neighbor, global_token = tokens
        views = torch.stack([model.fc_target(target.mean(1)), model.fc_neighbor(neighbor.mean(1)),
                             model.fc_global(global_token)])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, logits=logits.numpy(), views=views.numpy(), loss=np.float32(loss.item()), commit=COMMIT,
                        n_parameters=sum(p.numel() for p in model.parameters()),
                        state_keys=np.array(sorted(model.state_dict())))
    print(f"wrote {OUT}: logits {tuple(logits.shape)}, loss {loss.item():.6f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
