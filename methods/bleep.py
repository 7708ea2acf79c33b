"""BLEEP (Xie et al., NeurIPS 2023): bi-modal contrastive embedding of image patches and expression,
prediction by retrieval.

Model
- Image encoder: ResNet-50, ImageNet weights when available, trainable, global average pooling -> 2048-d
  (no classifier). The original builds it with timm (``timm.create_model("resnet50", pretrained=True,
  num_classes=0, global_pool="avg")``), which loads timm's default ResNet-50 checkpoint: ``resnet50.a1_in1k``
  (``resnet50_a1_0-14fe96d1.pth``, the "ResNet strikes back" A1 recipe, timm's default since 2021, before
  BLEEP). Here torchvision's ``resnet50`` with ``ResNet50_Weights.IMAGENET1K_V2`` (torchvision's default):
  the same architecture (stride on the 3x3 convolution in both; the whole-model reference test maps one
  onto the other), other ImageNet weights (**deviation**).
- Spot encoder: none; the expression vector goes straight into a projection head.
- Projection heads to 256-d (``bench.nn.layers.ProjectionHead``: Linear -> GELU -> Linear -> Dropout(0.1)
  -> + first Linear's output -> LayerNorm), one for images, one for expression.
- Loss (``soft_clip_loss``): CLIP with soft targets. logits = spot · imageᵀ / T; targets =
  softmax((image·imageᵀ + spot·spotᵀ) / 2 / T) row-wise; loss = mean over the batch of (CE(logits,
  targets) + CE(logitsᵀ, targetsᵀ)) / 2 with soft-label cross-entropy. T = 1. (The targets divide by T
  since upstream commit 9efa01e; before it they multiplied, which at the published T = 1 is the same.)

Training: AdamW (lr 1e-3, weight decay 1e-3), 150 epochs, data-parallel as published: 4 GPUs with a
batch of 128 each (the authors, BLEEP issues #6 and #8), the contrastive loss computed on each GPU's own
128 spots (no gather of embeddings across GPUs) and the gradients averaged. Here ``devices`` per-device
batches of ``batch_size`` spots form one optimiser step: each is embedded (its own BatchNorm batch
statistics) and scored on its own, and the mean of their losses is back-propagated (``device_losses``).
BLEEP issue #12 reports that one batch of 512 on one GPU (``devices=1, batch_size=512``) does not
reproduce the paper. The public sampler (``DistributedSampler``) never has ``set_epoch`` called, so the
spots come in the same shuffled order every epoch (``reshuffle=False``); the last incomplete step is
dropped (the loaders' ``drop_last``). Augmentation: random horizontal and vertical flips and a rotation
by a multiple of 90° (together: a uniform draw from the 8 symmetries of the square,
``bench.nn.augment.random_dihedral``).

Inference: embed every training spot (projection of its expression) and every test patch; for each
test patch take the top-50 training spots by cosine similarity and average their expression, uniformly
(``weighting="uniform"``, the published "average") or with weights exp(-d²) where d is the L2 distance
between un-normalised embeddings (``weighting="exponential"``, the public notebook's "weighted_average").

Patches: the paper profile cuts the published 224 px crop of the full-resolution image as it is
(``window_px=224``; ~154 µm on her2st at 0.687 µm/px), as the original does. Otherwise
(``window_px=None``, the quick profile) a window of ``window_um`` = 165 µm is resampled to ``patch_px``:
the same tissue area on any dataset, including the coarse synthetic images of the tests (165 µm was
the published crop at the ~0.73 µm/px her2st was first estimated at: 7% wider than it).

Deviations
- Input normalisation: the code the paper ran reads patches with OpenCV (BGR channel order) and feeds
  raw 0-255 values to the ImageNet-pretrained encoder (**defect**: the weights expect RGB standardised
  with the ImageNet mean/std; upstream added that standardisation in 94750c5, Oct 2024, after the
  paper). By default (``image_input="imagenet"``, every profile) patches are RGB in [0, 1], standardised with the
  ImageNet mean/std. ``image_input="raw-bgr"`` feeds what the published code fed: the channels in BGR order,
  raw 0-255 values, no standardisation (``--set bleep.image_input=raw-bgr``), in training and at inference.
- Epoch selection: the original keeps the epoch with the lowest contrastive loss on a random 20% of its
  training spots (``BLEEP_main.py``: ``random_split`` 80/20 with seed 42, ``test_epoch`` after every epoch,
  ``best.pt``). Here (``select_epoch``, paper profile) the harness holds whole training patients out instead
  (spots of the same sections as the training spots would share their tissue), and the epoch with the lowest
  loss on them (in batches of ``batch_size``, eval mode, no augmentation) is kept. The quick profile keeps the
  last epoch. Audited against bowang-lab/BLEEP at 2395967: the held-out spots are training data, never the test
  slide (left out before the split), so ``bench reproduce`` runs no "epoch on the test fold" step for BLEEP.
- Genes and targets are the benchmark's panel and common target (the original: the union of per-slide
  HVGs, scanpy's normalize_total (to the median library size) and log1p, batch-corrected with Harmony).
  Log base: natural log in both.
- Per-device batches run one after another on one device, and the mean of their losses is back-propagated
  once (memory of all ``devices x batch_size`` spots at once). BatchNorm's running statistics (used only
  at inference) are updated by every per-device batch in turn; under DDP they come from the first GPU's.
  The step's spots are consecutive in the shuffled order, then split into per-device batches (the
  public sampler deals them out to the GPUs in turn: the same distribution). A training set smaller than
  one step is split evenly over the devices instead of being dropped.
- ``image_encoder`` (option, off by default): a frozen encoder by name (``bench.nn.encoders``:
  ``timm:<model>``, ``hf-hub:MahmoodLab/UNI`` ...) replaces the published ResNet-50: its embeddings are
  computed once per section and cached, and only the projection heads train (no image augmentation: the
  embeddings are fixed). Not the published method: a way to put any encoder into the comparison (``--encoder
  NAME``).
- ``quick`` profile (CPU): see ``profiles`` below.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.method import (
    COUNT,
    DROPOUT,
    ENCODER,
    EPOCHS,
    NON_NEGATIVE,
    POSITIVE,
    SWITCH,
    WINDOW_PX,
    EmbeddingSpec,
    Method,
    Options,
    PatchSpec,
    SpotData,
    patches_or_frozen_encoder,
)
from bench.nn.augment import random_dihedral
from bench.nn.batching import PatchBatches, embedding_tensor, to_tensor
from bench.nn.layers import ProjectionHead
from bench.nn.retrieval import retrieve_expression
from bench.nn.torch_utils import bf16_autocast, imagenet_normalise, torchvision_backbone
from bench.nn.training import train_epochs

INPUTS = ("imagenet", "raw-bgr")


def soft_targets(image_emb: torch.Tensor, spot_emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """BLEEP's target matrix: row-wise softmax of the mean of the two within-modality similarities / T."""
    similarity = (image_emb @ image_emb.T + spot_emb @ spot_emb.T) / 2
    return F.softmax(similarity / temperature, dim=-1)


def soft_clip_loss(image_emb: torch.Tensor, spot_emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logits = spot_emb @ image_emb.T / temperature
    targets = soft_targets(image_emb, spot_emb, temperature)
    spots_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(1)
    images_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(1)
    return ((spots_loss + images_loss) / 2).mean()


def device_losses(model: "BLEEPModel", images: torch.Tensor, expression: torch.Tensor, devices: int):
    """The loss of one data-parallel step as published: the step's spots split into ``devices`` per-device
    batches, each embedded and scored on its own (no embeddings shared across devices), the losses
    averaged (DDP averages the devices' gradients). None when no per-device batch has two spots."""
    losses = [model.loss(img, expr) for img, expr in zip(torch.tensor_split(images, devices),
                                                          torch.tensor_split(expression, devices))
              if len(img) >= 2]  # BatchNorm and a contrastive loss both need two samples
    return torch.stack(losses).mean() if losses else None


class BLEEPModel(nn.Module):
    def __init__(self, image_encoder: nn.Module, image_dim: int, n_genes: int, projection_dim: int, dropout: float,
                 temperature: float):
        super().__init__()
        self.image_encoder = image_encoder  # ResNet-50 without its classifier, or the identity on frozen embeddings
        self.image_projection = ProjectionHead(image_dim, projection_dim, dropout)
        self.spot_projection = ProjectionHead(n_genes, projection_dim, dropout)
        self.temperature = temperature

    def embed_images(self, images):  # images standardised for the encoder
        return self.image_projection(self.image_encoder(images))

    def embed_spots(self, expression):
        return self.spot_projection(expression)

    def loss(self, images, expression):
        return soft_clip_loss(self.embed_images(images).float(), self.embed_spots(expression).float(),
                              self.temperature)


class BLEEP(Method):
    name = "bleep"
    description = "contrastive ResNet-50 / expression embeddings with soft targets, top-50 retrieval (Xie et al. 2023)"
    # "paper" is the published setting (the constructor defaults, and the published pixel crop:
    # window_px). "quick" makes a CPU run affordable:
    # 64 px patches of a 165 µm window (~12x less compute per spot than 224 px), 8 epochs instead of
    # 150, and steps of 64 spots on one device (one loss per step) reshuffled every epoch: with few epochs
    # the model needs more optimiser steps per epoch (on the synthetic planted-signal test, batches of 128
    # reach PCC 0.17 and batches of 64 reach 0.69). The same quick setting as before the per-device batches
    # and the fixed order were added to the paper profile.
    # A cluster job of the paper profile (150 epochs of ResNet-50 at 224 px): one GPU, a few hours at most.
    resources = {"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 360}
    profiles = {"paper": {"window_px": 224}, "quick": {"epochs": 8, "patch_px": 64, "batch_size": 64, "devices": 1,
                                       "reshuffle": True, "select_epoch": False}}

    parameter_constraints = {
        "epochs": EPOCHS, "batch_size": COUNT, "devices": COUNT, "reshuffle": SWITCH, "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE, "temperature": POSITIVE, "projection_dim": COUNT, "dropout": DROPOUT,
        "top_k": COUNT, "weighting": [Options("uniform", "exponential")], "patch_px": COUNT,
        "window_um": [*POSITIVE, Options("encoder")], "window_px": WINDOW_PX, "augment": SWITCH,
        "channels_last": SWITCH, "bf16": SWITCH, "image_encoder": ENCODER, "image_input": [Options(*INPUTS)],
        "select_epoch": SWITCH}

    def __init__(self, epochs: int = 150, batch_size: int = 128, devices: int = 4, reshuffle: bool = False,
                 lr: float = 1e-3, weight_decay: float = 1e-3, temperature: float = 1.0, projection_dim: int = 256,
                 dropout: float = 0.1, top_k: int = 50, weighting: str = "uniform", patch_px: int = 224,
                 window_um: float = 165.0,
                 window_px: int | None = None, augment: bool = True, channels_last: bool = True, bf16: bool = True,
                 image_encoder: str | None = None, image_input: str = "imagenet",
                 select_epoch: bool = True):
        self.epochs = epochs
        self.batch_size = batch_size  # per device
        self.devices = devices  # per-device batches in one optimiser step, each with its own loss
        self.reshuffle = reshuffle  # False: the same shuffled order every epoch (the published sampler)
        self.lr = lr
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.dropout = dropout
        self.top_k = top_k
        self.weighting = weighting  # "uniform" (published) or "exponential" (the weighted variant)
        self.patch_px = patch_px
        self.window_um = window_um
        # A crop of window_px pixels of the image as it is (paper: the published 224; resampled to patch_px
        # when that differs); None: a window of window_um µm (the same tissue area on every dataset).
        self.window_px = window_px
        self.augment = augment
        self.channels_last = channels_last  # faster convolutions on CPU and GPU
        self.bf16 = bf16  # bf16 autocast, CUDA only
        # None: the published ResNet-50, trained end to end on patches. An encoder name (bench.nn.encoders): that
        # encoder frozen, its cached embeddings in place of the ResNet.
        self.image_encoder = image_encoder
        # What the ResNet sees: "imagenet" (RGB standardised with the ImageNet mean/std, what its weights
        # expect) or "raw-bgr" (BGR 0-255 unstandardised: the published code as the paper ran it).
        self.image_input = image_input
        # True: keep the epoch of lowest loss on the validation patients the harness holds out (as published,
        # with held-out spots); False: the last epoch.
        self.select_epoch = select_epoch

    def wants_validation(self) -> bool:
        return bool(self.select_epoch)

    def patch_spec(self) -> PatchSpec | None:
        return patches_or_frozen_encoder(self)[0]

    def embedding_spec(self) -> EmbeddingSpec | None:
        return patches_or_frozen_encoder(self)[1]

    def build_model(self, n_genes: int, embedding_dim: int | None = None) -> BLEEPModel:
        """ResNet-50 (pooled 2048-d features, no classifier) and the two projection heads; with a frozen
        ``image_encoder``, the identity on its embeddings in place of the ResNet."""
        if self.image_encoder:  # frozen: only the projection heads learn
            image_net, image_dim = nn.Identity(), int(embedding_dim)
        else:
            image_net, _ = torchvision_backbone("resnet50", self.runtime.pretrained, self.runtime.facts)
            image_net.fc, image_dim = nn.Identity(), 2048  # pooled 2048-d features
        return BLEEPModel(image_net, image_dim, n_genes, self.projection_dim, self.dropout, self.temperature)

    def fit(self, train: SpotData, validation: SpotData | None = None) -> "BLEEP":
        if self.weighting not in ("uniform", "exponential"):
            raise ValueError(f"bleep: weighting must be 'uniform' or 'exponential', got {self.weighting!r}")
        if self.image_input not in INPUTS:
            raise ValueError(f"bleep: image_input must be one of {INPUTS}, got {self.image_input!r}")
        if int(self.devices) < 1:
            raise ValueError(f"bleep: devices must be at least 1, got {self.devices}")
        device, seed = self.runtime.device, self.runtime.seed
        self.model_ = self.build_model(train.n_genes, None if train.embeddings is None
                                       else train.embeddings.shape[1]).to(device)
        if self.channels_last and not self.image_encoder:
            self.model_.image_encoder.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        expression = torch.as_tensor(train.expression, device=device)
        generator = torch.Generator(device=device).manual_seed(seed)
        # One step = the spots of all per-device batches. The public loaders drop the last incomplete batch; a
        # training set smaller than one step keeps it.
        step = self.batch_size * int(self.devices)
        batches = PatchBatches(self._images(train), step, shuffle=True, rng=np.random.default_rng(seed),
                               drop_last=len(train) > step, reshuffle=self.reshuffle)

        def loss_of(batch):
            rows, patches = batch
            if self.image_encoder:  # fixed embeddings: nothing to augment or normalise
                images = embedding_tensor(patches, device)
            else:
                images = self._network_input(patches, augment=self.augment, generator=generator)
            with bf16_autocast(device, self.bf16):
                loss = device_losses(self.model_, images,
                                     expression[torch.as_tensor(rows, device=device)], int(self.devices))
            return None if loss is None else (loss, len(rows))

        if validation is None:
            self.model_.train()
            train_epochs(self.runtime, self.name, self.epochs, batches, loss_of, optimizer)
        else:
            best, best_state, best_epoch = float("inf"), None, None
            for epoch in range(self.epochs):
                self.model_.train()
                train_epochs(self._at_epoch(epoch), self.name, 1, batches, loss_of, optimizer)
                loss = self._validation_loss(validation)
                self.runtime.log_metric("validation_loss", loss, epoch)
                if loss < best:
                    best, best_epoch = loss, epoch
                    best_state = {k: v.detach().clone() for k, v in self.model_.state_dict().items()}
            if best_state is not None:
                self.model_.load_state_dict(best_state)
            self.runtime.facts.update({"chosen_epoch": best_epoch, "validation_loss_best": best})
        self.runtime.facts["data_wait_fraction"] = batches.wait_fraction

        self.model_.eval()
        with torch.inference_mode(), bf16_autocast(device, self.bf16):
            keys = [self.model_.embed_spots(expression[start:start + 1024]).float().cpu()
                    for start in range(0, len(train), 1024)]
        self.train_embeddings_ = torch.cat(keys).numpy()
        self.train_expression_ = np.asarray(train.expression, dtype=np.float32)
        return self

    def predict(self, test: SpotData) -> np.ndarray:
        device = self.runtime.device
        self.model_.eval()
        queries = []
        with torch.inference_mode(), bf16_autocast(device, self.bf16):
            for _, patches in PatchBatches(self._images(test), self.batch_size):
                images = (embedding_tensor(patches, device) if self.image_encoder
                          else self._network_input(patches))
                queries.append(self.model_.embed_images(images).float().cpu())
        return retrieve_expression(torch.cat(queries).numpy(), self.train_embeddings_, self.train_expression_,
                                   self.top_k, distance="l2", weighting=self.weighting)

    def _images(self, data: SpotData):
        return data.embeddings if self.image_encoder else data.patches

    def _at_epoch(self, epoch: int):
        """The runtime with its curves logged at this epoch's step (training one epoch at a time)."""
        import dataclasses

        return dataclasses.replace(self.runtime, log_metric=lambda n, v, s=None: self.runtime.log_metric(n, v, epoch))

    def _validation_loss(self, validation: SpotData) -> float:
        """The mean contrastive loss over batches of ``batch_size`` validation spots (eval mode, no
        augmentation; a last incomplete batch dropped unless it is the only one), as the original's test_epoch."""
        device = self.runtime.device
        self.model_.eval()
        expression = torch.as_tensor(validation.expression, device=device)
        total, count = 0.0, 0
        batches = PatchBatches(self._images(validation), self.batch_size,
                               drop_last=len(validation) > self.batch_size)
        with torch.inference_mode(), bf16_autocast(device, self.bf16):
            for rows, patches in batches:
                images = embedding_tensor(patches, device) if self.image_encoder else self._network_input(patches)
                loss = device_losses(self.model_, images, expression[torch.as_tensor(rows, device=device)], 1)
                if loss is not None:
                    total, count = total + float(loss) * len(rows), count + len(rows)
        return total / count if count else float("nan")

    def _network_input(self, patches, augment: bool = False, generator=None) -> torch.Tensor:
        """A batch of uint8 RGB patches as the ResNet's input (``self.image_input``), augmented if asked (the
        flips and rotations act on each channel alike, so before or after the scaling is the same)."""
        if self.image_input == "raw-bgr":  # cv2.imread's channel order and range, as the published code fed it
            images = to_tensor(np.asarray(patches)[..., ::-1], self.runtime.device, self.channels_last).mul_(255)
        else:
            images = to_tensor(patches, self.runtime.device, self.channels_last)
        if augment:
            images = random_dihedral(images, generator)
        return images if self.image_input == "raw-bgr" else imagenet_normalise(images)
