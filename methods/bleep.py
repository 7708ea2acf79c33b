"""BLEEP (Xie et al., NeurIPS 2023): bi-modal contrastive embedding of image patches and expression,
prediction by retrieval.

Model
- Image encoder: ResNet-50 (torchvision's; the original builds the same architecture with timm), ImageNet
  weights when available, trainable, global average pooling -> 2048-d (no classifier).
- Spot encoder: none; the expression vector goes straight into a projection head.
- Projection heads to 256-d (``bench.layers.ProjectionHead``: Linear -> GELU -> Linear -> Dropout(0.1)
  -> + first Linear's output -> LayerNorm), one for images, one for expression.
- Loss: CLIP with soft targets. logits = spot · imageᵀ / T; targets = softmax((image·imageᵀ +
  spot·spotᵀ) / 2 · T) row-wise; loss = mean over the batch of (CE(logits, targets) +
  CE(logitsᵀ, targetsᵀ)) / 2 with soft-label cross-entropy. T = 1. (The public code multiplies by T in the
  targets; with the published T = 1 that equals dividing.)

Training: AdamW (lr 1e-3, weight decay 1e-3), batch 256 shuffled over all training spots, the last
incomplete batch dropped (as the public loader does), 150 epochs. Augmentation: random horizontal and
vertical flips and a rotation by a multiple of 90° (together: a uniform draw from the 8 symmetries of
the square, ``bench.augment.random_dihedral``).

Inference: embed every training spot (projection of its expression) and every test patch; for each
test patch take the top-50 training spots by cosine similarity and average their expression, uniformly
(``weighting="uniform"``, the published "average") or with weights exp(-d²) where d is the L2 distance
between un-normalised embeddings (``weighting="exponential"``, the public notebook's "weighted_average").

Deviations
- The public code reads patches with OpenCV (BGR channel order) and feeds raw 0-255 values to the
  ImageNet-pretrained encoder (**defect**: the weights expect RGB standardised with the ImageNet
  mean/std). Here patches are RGB in [0, 1], standardised with the ImageNet mean/std.
- The original keeps the epoch with the lowest loss on a random 20% of spots held out from training;
  here, as for every method in the suite, no spots are held out and the last epoch is kept.
- Genes and targets are the benchmark's panel and common target (the original used the union of
  per-slide HVGs, batch-corrected with Harmony).
- ``quick`` profile (CPU): see ``profiles`` below.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.method import Method, PatchSpec, SpotData
from bench.nn.augment import random_dihedral
from bench.nn.batching import PatchBatches, to_tensor
from bench.nn.layers import ProjectionHead
from bench.nn.retrieval import retrieve_expression
from bench.nn.torch_utils import bf16_autocast, imagenet_normalise, torchvision_backbone
from bench.nn.training import train_epochs


def soft_targets(image_emb: torch.Tensor, spot_emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """BLEEP's target matrix: row-wise softmax of the mean of the two within-modality similarities."""
    similarity = (image_emb @ image_emb.T + spot_emb @ spot_emb.T) / 2
    return F.softmax(similarity * temperature, dim=-1)


def soft_clip_loss(image_emb: torch.Tensor, spot_emb: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logits = spot_emb @ image_emb.T / temperature
    targets = soft_targets(image_emb, spot_emb, temperature)
    spots_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(1)
    images_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(1)
    return ((spots_loss + images_loss) / 2).mean()


class BLEEPModel(nn.Module):
    def __init__(self, resnet: nn.Module, n_genes: int, projection_dim: int, dropout: float, temperature: float):
        super().__init__()
        resnet.fc = nn.Identity()  # pooled 2048-d features
        self.image_encoder = resnet
        self.image_projection = ProjectionHead(2048, projection_dim, dropout)
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
    # "paper" is the published setting (the constructor defaults). "quick" makes a CPU run affordable:
    # 64 px patches of the same 165 µm window (~12x less compute per spot than 224 px), 8 epochs instead of
    # 150, and batches of 64: with few epochs the model needs more optimiser steps per epoch (on the
    # synthetic planted-signal test, batches of 128 reach PCC 0.17 and batches of 64 reach 0.69).
    # A cluster job of the paper profile (150 epochs of ResNet-50 at 224 px): one GPU, a few hours at most.
    resources = {"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 360}
    profiles = {"paper": {}, "quick": {"epochs": 8, "patch_px": 64, "batch_size": 64}}

    def __init__(self, epochs: int = 150, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-3,
                 temperature: float = 1.0, projection_dim: int = 256, dropout: float = 0.1, top_k: int = 50,
                 weighting: str = "uniform", patch_px: int = 224, window_um: float = 165.0, augment: bool = True,
                 channels_last: bool = True, bf16: bool = True):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.dropout = dropout
        self.top_k = top_k
        self.weighting = weighting  # "uniform" (published) or "exponential" (the weighted variant)
        self.patch_px = patch_px
        self.window_um = window_um
        self.augment = augment
        self.channels_last = channels_last  # faster convolutions on CPU and GPU
        self.bf16 = bf16  # bf16 autocast, CUDA only

    def patch_spec(self) -> PatchSpec:
        return PatchSpec(window_um=self.window_um, px=self.patch_px)

    def fit(self, train: SpotData) -> "BLEEP":
        if self.weighting not in ("uniform", "exponential"):
            raise ValueError(f"bleep: weighting must be 'uniform' or 'exponential', got {self.weighting!r}")
        device, seed = self.runtime.device, self.runtime.seed
        resnet, used_pretrained = torchvision_backbone("resnet50", self.runtime.pretrained)
        self.runtime.facts["pretrained"] = used_pretrained
        self.model_ = BLEEPModel(resnet, train.n_genes, self.projection_dim, self.dropout,
                                 self.temperature).to(device)
        if self.channels_last:
            self.model_.image_encoder.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        expression = torch.as_tensor(train.expression, device=device)
        generator = torch.Generator(device=device).manual_seed(seed)
        # The public loader drops the last incomplete batch; a training set smaller than one batch keeps it.
        drop_last = len(train) > self.batch_size
        batches = PatchBatches(train.patches, self.batch_size, shuffle=True, rng=np.random.default_rng(seed),
                               drop_last=drop_last)

        def loss_of(batch):
            rows, patches = batch
            if len(rows) < 2:  # BatchNorm and a contrastive loss both need two samples
                return None
            images = to_tensor(patches, device, self.channels_last)
            if self.augment:
                images = random_dihedral(images, generator)
            with bf16_autocast(device, self.bf16):
                loss = self.model_.loss(imagenet_normalise(images),
                                        expression[torch.as_tensor(rows, device=device)])
            return loss, len(rows)

        self.model_.train()
        train_epochs(self.runtime, self.name, self.epochs, batches, loss_of, optimizer)
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
            for _, patches in PatchBatches(test.patches, self.batch_size):
                images = imagenet_normalise(to_tensor(patches, device, self.channels_last))
                queries.append(self.model_.embed_images(images).float().cpu())
        return retrieve_expression(torch.cat(queries).numpy(), self.train_embeddings_, self.train_expression_,
                                   self.top_k, distance="l2", weighting=self.weighting)
