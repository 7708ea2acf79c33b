"""Image encoders by name: a frozen model, its preprocessing, its native magnification and its output size.

One name selects an encoder everywhere in the suite (``linear-probe``'s ``encoder=``, the learned methods'
``image_encoder=``), and its patch embeddings are computed once per section and cached on disk
(``bench.data.embeddings``), shared by every method, fold, seed and run that asks for the same encoder.

Names
- ``resnet50``, ``densenet121``, or any torchvision classification model: torchvision's ImageNet weights
  when they can be had (``pretrained`` auto/yes/no, as everywhere in the suite), pooled features.
- ``timm:<model>``: any timm model (``timm.create_model(<model>, pretrained=..., num_classes=0)``), its own
  input size and normalisation from its pretrained config; native magnification unknown.
- ``hf-hub:<org>/<repo>``: a pathology foundation model from the Hugging Face hub, through timm, with the
  keyword arguments, normalisation and output that its model card publishes (``HUB_MODELS`` below). Most
  are gated: accept the licence on the model's page and set ``HF_TOKEN``.
- ``hf-hub:owkin/phikon-v2``: through ``transformers`` (an optional dependency: ``pip install transformers``).
- ``<name>@<path>``: the architecture of ``<name>`` with weights from a local file (``.safetensors``, or a
  torch file loaded with ``weights_only=True``), e.g. ``hf-hub:MahmoodLab/UNI@/models/uni.bin`` on a machine
  without internet.
- ``cigar``: the self-supervised pathology ResNet-18 of Ciga et al. 2021 ("Self supervised contrastive learning
  for digital histopathology", release ``tenpercent_resnet18.ckpt`` of ozanciga/self-supervised-histopathology),
  TRIPLEX's encoder (``model_name: 'cigar'``). Its weights are a named local checkpoint: the file
  ``tenpercent_resnet18.ckpt`` in ``$STBENCH_WEIGHTS_DIR`` (default ``~/.cache/stbench/weights``), or
  ``cigar@<path>``. Without the file, ``pretrained`` auto gives a random initialisation (recorded as such), and
  ``pretrained`` yes is an error. ImageNet mean/std, as TRIPLEX's feature extraction uses.
- Your own: ``register_encoder(name, factory)``.

Every encoder maps uint8 RGB patches (N, px, px, 3) to float32 embeddings (N, dim); patches of another size
are resampled (bilinear, antialiased) to the encoder's input size first.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import numpy as np

from bench.errors import EnvironmentUnavailableError, InputError
from bench.nn.torch_utils import IMAGENET_MEAN, IMAGENET_STD, is_cuda, torchvision_backbone

log = logging.getLogger(__name__)


class EncoderUnavailableError(EnvironmentUnavailableError):
    """An encoder cannot be built here (gated, offline, not found, missing package); one line says which
    encoder, why and what to do."""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder expects and gives. ``um_per_px`` is its native magnification (None: unknown)."""

    name: str
    px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    um_per_px: float | None
    dim: int
    source: str  # torchvision | timm | hf-hub | transformers | custom
    reference: str = ""

    @property
    def window_um(self) -> float | None:
        """The tissue width the encoder was trained to see at its input size (px x µm/px)."""
        return None if self.um_per_px is None else self.px * self.um_per_px

    def preprocessing(self) -> dict:
        return {"px": self.px, "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class HubModel:
    """A hub model's published loading recipe (from its model card; cited in ``reference``)."""

    timm_kwargs: Callable[[], dict]  # called at load time: some arguments are timm/torch classes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    output: str = "pooled"  # pooled: the model's own output; cls+mean: class token ++ mean of patch tokens
    um_per_px: float = 0.5  # 224 px at 20x (0.5 µm/px, 112 µm) for every model listed
    px: int = 224
    reference: str = ""
    architecture: str | None = None  # timm architecture for a local checkpoint (the hub config otherwise)


def _swiglu_silu() -> dict:
    import torch
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


def _uni2_kwargs() -> dict:
    return {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
            "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
            "reg_tokens": 8, "dynamic_img_size": True, **_swiglu_silu()}


# Mean/std of H-optimus-0/1's training data, from their model cards.
_HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
_HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

HUB_MODELS: dict[str, HubModel] = {
    # Chen et al., Nat Med 2024; huggingface.co/MahmoodLab/UNI: init_values=1e-5, dynamic_img_size=True.
    "MahmoodLab/UNI": HubModel(lambda: {"init_values": 1e-5, "dynamic_img_size": True}, IMAGENET_MEAN,
                               IMAGENET_STD, 1024, reference="huggingface.co/MahmoodLab/UNI (Chen et al. 2024)",
                               architecture="vit_large_patch16_224"),
    # huggingface.co/MahmoodLab/UNI2-h: ViT-H/14 with SwiGLU, 8 register tokens.
    "MahmoodLab/UNI2-h": HubModel(_uni2_kwargs, IMAGENET_MEAN, IMAGENET_STD, 1536,
                                  reference="huggingface.co/MahmoodLab/UNI2-h", architecture="vit_giant_patch14_224"),
    # Zimmermann et al. 2024; huggingface.co/paige-ai/Virchow2: SwiGLUPacked + SiLU; the embedding is the class
    # token concatenated with the mean of the patch tokens (register tokens skipped): 1280 + 1280.
    "paige-ai/Virchow2": HubModel(_swiglu_silu, IMAGENET_MEAN, IMAGENET_STD, 2560, output="cls+mean",
                                  reference="huggingface.co/paige-ai/Virchow2 (Zimmermann et al. 2024)"),
    # Saillard et al. 2024; huggingface.co/bioptimus/H-optimus-0: init_values=1e-5, dynamic_img_size=False.
    "bioptimus/H-optimus-0": HubModel(lambda: {"init_values": 1e-5, "dynamic_img_size": False}, _HOPTIMUS_MEAN,
                                      _HOPTIMUS_STD, 1536, reference="huggingface.co/bioptimus/H-optimus-0"),
    "bioptimus/H-optimus-1": HubModel(lambda: {"init_values": 1e-5, "dynamic_img_size": False}, _HOPTIMUS_MEAN,
                                      _HOPTIMUS_STD, 1536, reference="huggingface.co/bioptimus/H-optimus-1"),
    # Xu et al., Nature 2024; huggingface.co/prov-gigapath/prov-gigapath: the tile encoder, ImageNet mean/std.
    "prov-gigapath/prov-gigapath": HubModel(dict, IMAGENET_MEAN, IMAGENET_STD, 1536,
                                            reference="huggingface.co/prov-gigapath/prov-gigapath (Xu et al. 2024)"),
}
# Filippova et al. 2024; huggingface.co/owkin/phikon-v2: a transformers ViT-L; the embedding is the class token.
TRANSFORMERS_MODELS = {"owkin/phikon-v2": (1024, "huggingface.co/owkin/phikon-v2 (Filippova et al. 2024)")}

_CUSTOM: dict[str, Callable[[str], "Encoder"]] = {}


def register_encoder(name: str, factory: Callable[[str], "Encoder"]) -> None:
    """Add an encoder: ``factory(pretrained)`` returns an ``Encoder``. Names containing ':' or '@' are reserved."""
    if ":" in name or "@" in name:
        raise InputError(f"encoder name {name!r}: ':' and '@' are reserved for timm:, hf-hub: and local checkpoints")
    _CUSTOM[name] = factory


@dataclass
class Encoder:
    """A frozen model with its spec. ``forward_batches`` counts the batches it ran (tests read it)."""

    spec: EncoderSpec
    model: object  # torch.nn.Module mapping (N, 3, px, px) normalised floats to (N, dim)
    pretrained: bool
    checkpoint: str | None = None
    forward_batches: int = 0
    _weights_sha256: str | None = field(default=None, repr=False)

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of every parameter and buffer (names, shapes, dtypes, bytes), so two encoders with the same
        name but other weights (another random initialisation, another checkpoint) never share a cache entry."""
        if self._weights_sha256 is None:
            h = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
                h.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if t.numel() else b"")
            self._weights_sha256 = h.hexdigest()
        return self._weights_sha256

    def identity(self, px: int | None = None) -> dict:
        """What makes this encoder's embeddings what they are (at input size ``px``, default its own): the
        cache key and the record of every job."""
        return {"encoder": self.spec.name, "weights_sha256": self.weights_sha256, "pretrained": self.pretrained,
                **self.spec.preprocessing(), "px": px or self.spec.px}

    def to(self, device: str) -> "Encoder":
        self.model = self.model.to(device)
        return self

    def embed(self, patches, device: str = "cpu", batch_size: int = 64, px: int | None = None) -> np.ndarray:
        """uint8 (N, h, w, 3) patches -> float32 (N, dim) embeddings, in order, at input size ``px`` (default
        the encoder's own).

        A reader thread copies the next batch's rows out of the (memory-mapped) patch file, pinned when the
        device is a GPU, while the model runs on the current one: reading from disk overlaps the forward pass."""
        import torch
        import torch.nn.functional as F

        px = px or self.spec.px
        out = np.empty((len(patches), self.spec.dim), dtype=np.float32)
        mean = torch.tensor(self.spec.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=device).view(1, 3, 1, 1)
        pin = is_cuda(device)

        def read(start: int):
            batch = torch.from_numpy(np.array(patches[start:start + batch_size]))  # a writable copy of the rows
            return batch.pin_memory() if pin else batch

        starts = range(0, len(patches), batch_size)
        self.model.eval()
        with ThreadPoolExecutor(max_workers=1) as reader, torch.inference_mode():
            pending = reader.submit(read, starts[0]) if len(starts) else None
            for i, start in enumerate(starts):
                batch = pending.result()
                if i + 1 < len(starts):
                    pending = reader.submit(read, starts[i + 1])
                x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                if x.shape[-1] != px or x.shape[-2] != px:
                    x = F.interpolate(x, size=(px, px), mode="bilinear", antialias=True, align_corners=False)
                features = self.model((x - mean) / std)
                self.forward_batches += 1
                if features.shape[1:] != (self.spec.dim,):
                    raise RuntimeError(f"encoder {self.spec.name}: output shape {tuple(features.shape)}, "
                                       f"expected (N, {self.spec.dim})")
                out[start:start + len(batch)] = features.float().cpu().numpy()
        return out


def _byte_dtype():
    import torch

    return torch.uint8


def load_encoder(name: str, pretrained: str = "auto", seed: int = 0) -> Encoder:
    """Build the encoder a name stands for (see the module docstring); errors are ``EncoderUnavailableError``
    (gated, offline, not found) or ``ValueError`` (a name that means nothing).

    An encoder that gets no weights (``pretrained`` no, or auto and none to be had) starts from a random
    initialisation drawn from its name and ``seed`` alone (``init_seed``), never from the global random
    state: a failed download builds a model before the fallback does, and only the first time in a process,
    so the global state would give each fold of one method another encoder (and embed every section again).
    Loading leaves the global random state as it was."""
    import torch

    if pretrained not in ("auto", "yes", "no"):
        raise InputError(f"pretrained must be auto, yes or no; got {pretrained!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(name, seed))
        encoder = _build_encoder(name, pretrained)
        if not encoder.pretrained and pretrained != "no":  # drawn after whatever the failed attempt drew: again
            torch.manual_seed(init_seed(name, seed))
            encoder = _build_encoder(name, "no")
    return encoder


def init_seed(name: str, seed: int) -> int:
    """The seed of a weightless encoder's random initialisation: a function of its name and the run's seed."""
    return int.from_bytes(hashlib.sha256(f"{name}|{int(seed)}".encode()).digest()[:8], "little") >> 1


def _build_encoder(name: str, pretrained: str) -> Encoder:
    base, at, checkpoint = name.partition("@")
    if base == CIGAR:
        return cigar_encoder(pretrained, Path(checkpoint) if at else None)
    if at:
        return _with_checkpoint(base, Path(checkpoint), name)
    if base in _CUSTOM:
        return _CUSTOM[base](pretrained)
    if base.startswith("hf-hub:"):
        repo = base[len("hf-hub:"):]
        if repo in TRANSFORMERS_MODELS:
            return _transformers_encoder(repo, pretrained)
        return _hub_encoder(repo, pretrained)
    if base.startswith("timm:"):
        return _timm_encoder(base[len("timm:"):], pretrained)
    return _torchvision_encoder(base, pretrained)


def known_encoders() -> list[str]:
    """The names this registry resolves without a pattern (for help texts and error messages)."""
    return ["resnet50", "densenet121", CIGAR, *(f"hf-hub:{r}" for r in [*HUB_MODELS, *TRANSFORMERS_MODELS]),
            *_CUSTOM, "timm:<model>", "<name>@<checkpoint>"]


def check_available(name: str, pretrained: str = "auto") -> None:
    """Refuse, before any job, an encoder that ``load_encoder`` could not build on this machine, and do it
    cheaply: an unknown name, a checkpoint file that is not there, a foundation model asked for without its
    weights, a missing optional package, or a hub model that is neither in the local cache nor reachable
    (offline, or gated without access). Builds no model; downloads at most the hub model's small config file,
    which is how the hub says whether this machine may have the weights. Errors as ``load_encoder``'s."""
    base, at, checkpoint = name.partition("@")
    if at and not Path(checkpoint).expanduser().is_file():
        raise EncoderUnavailableError(f"encoder {name}: no such checkpoint file {checkpoint}")
    if base == CIGAR:
        if not at and pretrained == "yes" and not (weights_dir() / CIGAR_FILE).is_file():
            raise EncoderUnavailableError(f"encoder {CIGAR}: no checkpoint at {weights_dir() / CIGAR_FILE}; download "
                                          f"{CIGAR_URL} into {weights_dir()} (or set STBENCH_WEIGHTS_DIR), or pass "
                                          f"--pretrained auto")
    elif base in _CUSTOM:
        pass  # a registered factory: what it needs is its own business
    elif base.startswith("hf-hub:"):
        _check_hub_model(base[len("hf-hub:"):], pretrained, with_checkpoint=bool(at))
    elif base.startswith("timm:"):
        model_name = base[len("timm:"):]
        known = _timm().list_models(pretrained=False)
        if model_name not in known and model_name.split(".")[0] not in known:
            raise InputError(f"unknown timm model {model_name!r} (see timm.list_models())")
    else:
        import torchvision

        if base not in torchvision.models.list_models(module=torchvision.models):
            raise InputError(f"unknown encoder {base!r}; known: {', '.join(known_encoders())}")


def _check_hub_model(repo: str, pretrained: str, with_checkpoint: bool) -> None:
    name = f"hf-hub:{repo}"
    if repo in TRANSFORMERS_MODELS:
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            raise EncoderUnavailableError(f"encoder {name}: needs the optional package transformers "
                                          f"(pip install transformers)")
    if with_checkpoint:
        recipe = HUB_MODELS.get(repo)
        if repo not in TRANSFORMERS_MODELS and (recipe is None or recipe.architecture is None):
            raise EncoderUnavailableError(f"encoder {name}: its architecture comes from its hub config, which is not "
                                          f"listed here; use timm:<architecture>@<checkpoint> with the model card's "
                                          f"architecture instead")
        return
    if pretrained == "no":
        raise EncoderUnavailableError(f"encoder {name}: a foundation model without its weights is only its "
                                      f"architecture; use it with --pretrained auto/yes, or pick another encoder")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline_reason()
    if offline:  # then the weights must be in the local cache already
        weights = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
        if not any(isinstance(try_to_load_from_cache(repo, f), str) for f in weights):
            raise EncoderUnavailableError(_hub_failure(name, LocalEntryNotFoundError("not in the local cache"),
                                                       offline))
        return
    try:  # a gated model refuses even its config to a machine without access
        hf_hub_download(repo, "config.json")
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise EncoderUnavailableError(_hub_failure(name, exc)) from exc


# ---- torchvision ------------------------------------------------------------------------------------------

def _torchvision_encoder(arch: str, pretrained: str) -> Encoder:
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise InputError(f"unknown encoder {arch!r}; known: {', '.join(known_encoders())}")
    model, used = torchvision_backbone(arch, pretrained)
    dim = _drop_classifier(model, arch)
    spec = EncoderSpec(arch, 224, IMAGENET_MEAN, IMAGENET_STD, None, dim, "torchvision",
                       "torchvision ImageNet weights" if used else "random initialisation")
    return Encoder(spec, model.eval(), used)


def _drop_classifier(model, arch: str) -> int:
    """Replace the ImageNet classifier by the identity; returns the pooled feature size."""
    import torch

    for attr in ("fc", "classifier", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, torch.nn.Linear):
            setattr(model, attr, torch.nn.Identity())
            return head.in_features
        if isinstance(head, torch.nn.Sequential) and any(isinstance(m, torch.nn.Linear) for m in head):
            first = next(m for m in head if isinstance(m, torch.nn.Linear))
            setattr(model, attr, torch.nn.Identity())
            return first.in_features
    raise ValueError(f"encoder {arch!r}: no classifier head ('fc', 'classifier' or 'head') to remove")


# ---- Ciga et al. 2021 (TRIPLEX's 'cigar') ------------------------------------------------------------------

CIGAR = "cigar"
CIGAR_FILE = "tenpercent_resnet18.ckpt"
CIGAR_URL = ("https://github.com/ozanciga/self-supervised-histopathology/releases/download/tenpercent/"
             + CIGAR_FILE)


def weights_dir() -> Path:
    """Where named local checkpoints are looked for: ``$STBENCH_WEIGHTS_DIR`` or ``~/.cache/stbench/weights``."""
    return Path(os.environ.get("STBENCH_WEIGHTS_DIR") or Path.home() / ".cache" / "stbench" / "weights")


def cigar_state(state: dict) -> dict:
    """The checkpoint's ResNet-18 weights under torchvision's names: TRIPLEX's ``load_model_weights`` strips
    'model.' and 'resnet.' from every key and keeps the keys the ResNet has (the fc head is dropped)."""
    return {k.replace("model.", "").replace("resnet.", ""): v for k, v in state.items()}


def cigar_encoder(pretrained: str = "auto", path: Path | None = None) -> Encoder:
    """The Ciga et al. ResNet-18 with its pooled 512-d output (see the module docstring)."""
    import torch
    import torchvision

    explicit = path is not None
    path = path or weights_dir() / CIGAR_FILE
    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Identity()
    used = False
    if pretrained != "no" and (explicit or path.is_file()):
        state = cigar_state(read_checkpoint(path))
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own}
        _load_state(model, state, f"{CIGAR}@{path}")
        used = True
    elif pretrained == "yes":
        raise EncoderUnavailableError(f"encoder {CIGAR}: no checkpoint at {path}; download {CIGAR_URL} into "
                                      f"{path.parent} (or set STBENCH_WEIGHTS_DIR), or pass --pretrained auto")
    spec = EncoderSpec(CIGAR, 224, IMAGENET_MEAN, IMAGENET_STD, None, 512, "custom",
                       f"Ciga et al. 2021 ({CIGAR_FILE})" if used else "random initialisation")
    return Encoder(spec, model.eval(), used, checkpoint=str(path) if used else None)


# ---- timm -------------------------------------------------------------------------------------------------

# What a download of published weights raises when they cannot be had: huggingface_hub's errors (HTTP,
# repository not found, gated, offline mode, not in the local cache) and urllib's are all OSErrors. Anything
# else raised while building a model (a TypeError, a shape mismatch) is a bug and is not reported as the network.
WEIGHTS_UNAVAILABLE = (OSError,)


def _timm_publishes_weights(timm, model_name: str) -> bool:
    """Whether timm lists pretrained weights for ``model_name`` (an architecture, or architecture.tag)."""
    published = timm.list_models(pretrained=True)
    return model_name in published or any(name.startswith(model_name + ".") for name in published)


def _timm():
    try:
        import timm
    except ImportError as exc:  # a dependency of the suite; only a broken environment lacks it
        raise EncoderUnavailableError("timm is not installed: pip install timm") from exc
    return timm


def _timm_encoder(model_name: str, pretrained: str, checkpoint_state: dict | None = None,
                  label: str | None = None) -> Encoder:
    timm = _timm()
    if model_name not in timm.list_models(pretrained=False) and model_name.split(".")[0] not in \
            timm.list_models(pretrained=False):
        raise InputError(f"unknown timm model {model_name!r} (see timm.list_models())")
    used = False
    if checkpoint_state is None and pretrained != "no":
        cause = None
        if _timm_publishes_weights(timm, model_name):
            offline = hub_offline_reason()
            try:
                with _hub_files(offline):
                    model = timm.create_model(model_name, pretrained=True, num_classes=0)
                used = True
            except WEIGHTS_UNAVAILABLE as exc:  # same rule as torchvision's weights
                why, cause = _hub_failure(f"timm:{model_name}", exc, offline), exc
        else:
            why = (f"encoder timm:{model_name}: timm publishes no pretrained weights for it; pick a pretrained "
                   f"tag (timm.list_models(pretrained=True)) or run with --pretrained no")
        if not used:
            if pretrained == "yes":
                raise EncoderUnavailableError(why) from cause
            log.warning("%s; continuing from random initialisation (recorded as pretrained=false)", why)
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
    else:
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    if checkpoint_state is not None:
        _load_state(model, checkpoint_state, label or model_name)
        used = True
    config = timm.data.resolve_data_config({}, model=model)
    px = int(config["input_size"][-1])
    spec = EncoderSpec(label or f"timm:{model_name}", px, tuple(config["mean"]), tuple(config["std"]), None,
                       int(model.num_features), "timm", f"timm {model_name}")
    return Encoder(spec, _TokensOrPooled(model, "pooled").eval(), used)


def _pooling_module():
    import torch

    class TokensOrPooled(torch.nn.Module):
        """A timm model's embedding: its pooled output, or its class token ++ the mean of its patch tokens."""

        def __init__(self, model, output: str):
            super().__init__()
            self.model, self.output = model, output

        def forward(self, x):
            if self.output == "pooled":
                return self.model(x)
            tokens = self.model.forward_features(x)
            prefix = getattr(self.model, "num_prefix_tokens", 1)
            return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(dim=1)], dim=-1)

    return TokensOrPooled


def _TokensOrPooled(model, output: str):
    return _pooling_module()(model, output)


# ---- the Hugging Face hub ---------------------------------------------------------------------------------

def hub_offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached from here, or None. huggingface_hub retries an unreachable host with
    back-off for minutes per file, so one quick connection attempt decides first; through a proxy the
    attempt is left to the client."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        return f"cannot connect to {host} ({exc.strerror or type(exc).__name__})"
    return None


@contextmanager
def _hub_files(offline_reason: str | None):
    """Hub downloads as usual, or, when the hub cannot be reached, from the local cache only (no retries)."""
    if offline_reason is None:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_failure(name: str, exc: BaseException, offline_reason: str | None = None) -> str:
    """One line: which model, why it could not be had, what to do."""
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    local = f"or point to a local checkpoint ({name}@/path/to/weights.safetensors)"
    if offline_reason:
        why = f"the Hugging Face hub cannot be reached ({offline_reason}) and the model is not in the local cache"
        fix = f"run once where the hub is reachable (with HF_TOKEN for gated models) to fill the cache, {local}"
    elif any(k in lowered for k in ("gated", "401", "403", "unauthorized", "access to model", "restricted")):
        why = "the model is gated and this machine has no access to it"
        fix = f"accept its licence on its Hugging Face page, set HF_TOKEN to a token of that account, {local}"
    elif any(k in lowered for k in ("404", "not found", "repositorynotfound", "does not exist")) and \
            "localentrynotfound" not in lowered and "offline" not in lowered:
        why = "no such model on the hub"
        fix = f"check the name ({', '.join(known_encoders())}) {local}"
    else:
        why = "the Hugging Face hub cannot be reached (offline?) and the model is not in the local cache"
        fix = f"run once where the hub is reachable (with HF_TOKEN for gated models) to fill the cache, {local}"
    return f"encoder {name}: {why} ({type(exc).__name__}); {fix}"


def _hub_encoder(repo: str, pretrained: str, checkpoint_state: dict | None = None) -> Encoder:
    name = f"hf-hub:{repo}"
    if pretrained == "no" and checkpoint_state is None:
        raise EncoderUnavailableError(f"encoder {name}: a foundation model without its weights is only its "
                                      f"architecture; use it with --pretrained auto/yes, or pick another encoder")
    recipe = HUB_MODELS.get(repo)
    timm = _timm()
    kwargs = {"num_classes": 0, **(recipe.timm_kwargs() if recipe else {})}
    if checkpoint_state is not None:
        if recipe is None or recipe.architecture is None:
            raise EncoderUnavailableError(f"encoder {name}: its architecture comes from its hub config, which is not "
                                          f"listed here; use timm:<architecture>@<checkpoint> with the model card's "
                                          f"architecture instead")
        model = timm.create_model(recipe.architecture, pretrained=False, **kwargs)
        _load_state(model, checkpoint_state, name)
    else:
        offline = hub_offline_reason()
        try:
            with _hub_files(offline):
                model = timm.create_model(name, pretrained=True, **kwargs)
        except WEIGHTS_UNAVAILABLE as exc:
            raise EncoderUnavailableError(_hub_failure(name, exc, offline)) from exc
    if recipe is None:  # a hub model this registry does not list: its own pretrained config decides
        config = timm.data.resolve_data_config({}, model=model)
        spec = EncoderSpec(name, int(config["input_size"][-1]), tuple(config["mean"]), tuple(config["std"]),
                           None, int(model.num_features), "hf-hub", name)
        return Encoder(spec, _TokensOrPooled(model, "pooled").eval(), True)
    spec = EncoderSpec(name, recipe.px, recipe.mean, recipe.std, recipe.um_per_px, recipe.dim, "hf-hub",
                       recipe.reference)
    return Encoder(spec, _TokensOrPooled(model, recipe.output).eval(), True)


def _transformers_encoder(repo: str, pretrained: str, checkpoint_state: dict | None = None) -> Encoder:
    name = f"hf-hub:{repo}"
    dim, reference = TRANSFORMERS_MODELS[repo]
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise EncoderUnavailableError(f"encoder {name}: needs the optional package transformers "
                                      f"(pip install transformers)") from exc
    if pretrained == "no" and checkpoint_state is None:
        raise EncoderUnavailableError(f"encoder {name}: a foundation model without its weights is only its "
                                      f"architecture; use it with --pretrained auto/yes")
    offline = hub_offline_reason()
    try:
        with _hub_files(offline):
            model = AutoModel.from_pretrained(repo)
    except WEIGHTS_UNAVAILABLE as exc:
        raise EncoderUnavailableError(_hub_failure(name, exc, offline)) from exc
    if checkpoint_state is not None:
        _load_state(model, checkpoint_state, name)

    class ClassToken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(pixel_values=x).last_hidden_state[:, 0, :]

    spec = EncoderSpec(name, 224, IMAGENET_MEAN, IMAGENET_STD, 0.5, dim, "transformers", reference)
    return Encoder(spec, ClassToken(model).eval(), True)


# ---- local checkpoints ------------------------------------------------------------------------------------

def read_checkpoint(path: Path) -> dict:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``: nothing is unpickled)."""
    import torch

    if not path.is_file():
        raise EncoderUnavailableError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except EncoderUnavailableError:
        raise
    except Exception as exc:
        raise EncoderUnavailableError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model"):  # common wrappers around the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise EncoderUnavailableError(f"{path}: holds no state dict")
    return state


def _load_state(model, state: dict, name: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: the checkpoint is for another architecture
        raise EncoderUnavailableError(f"encoder {name}: the checkpoint does not fit its architecture "
                                      f"({str(exc).splitlines()[0]})") from exc
    # A head left out is fine (num_classes=0 drops it); anything else missing means the wrong checkpoint.
    missing = [k for k in missing if not k.startswith(("head.", "fc.", "classifier."))]
    if missing:
        raise EncoderUnavailableError(f"encoder {name}: the checkpoint lacks {len(missing)} weight(s) of the "
                                      f"architecture, e.g. {missing[:3]}")
    if unexpected:
        log.warning("encoder %s: %d checkpoint entries not used (e.g. %s)", name, len(unexpected), unexpected[:3])


def _with_checkpoint(base: str, path: Path, full_name: str) -> Encoder:
    state = read_checkpoint(path)
    if base.startswith("hf-hub:"):
        repo = base[len("hf-hub:"):]
        encoder = (_transformers_encoder if repo in TRANSFORMERS_MODELS else _hub_encoder)(repo, "auto", state)
    elif base.startswith("timm:"):
        encoder = _timm_encoder(base[len("timm:"):], "no", checkpoint_state=state, label=base)
    elif base in _CUSTOM:
        encoder = _CUSTOM[base]("no")
        _load_state(encoder.model, state, full_name)
        encoder.pretrained = True
    else:
        encoder = _torchvision_encoder(base, "no")
        _load_state(encoder.model, state, full_name)
        encoder.pretrained = True
    encoder.checkpoint = str(path)
    return encoder


def describe(encoder: Encoder) -> dict:
    """The facts a job records about its encoder."""
    return {**asdict(encoder.spec), "weights_sha256": encoder.weights_sha256, "pretrained": encoder.pretrained,
            "checkpoint": encoder.checkpoint, "hf_token_set": bool(os.environ.get("HF_TOKEN"))}
