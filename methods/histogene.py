"""HisToGene (Pang et al., bioRxiv 2021): a vision transformer over all spots of one slide.

Model
- Each spot's 112 x 112 px patch (raw 0-255 values, RGB) is flattened and linearly embedded to 1024.
- Learned x and y position embeddings (``Embedding(64, 1024)`` each), indexed by the spot's integer array
  coordinates, are added.
- Transformer over the slide's spots as one sequence (``bench.nn.layers.Transformer``, the vit-pytorch
  form the original uses): depth 8 (the published tutorial; the class default is 4), 16 heads of 64,
  MLP 2048 with GELU, dropout 0.1 after attention and in the MLP, dropout 0.1 on the input embeddings.
- Head: LayerNorm -> Linear(1024, n_genes).

Training: one whole slide per optimiser step, slides in a new random order each epoch, Adam (lr 1e-5),
100 epochs, MSE over the slide's spots and genes (``histogene_loss``), the last epoch kept (as the
tutorial: no validation). No augmentation (the published whole-slide dataset applies none).
Inference: the model runs once over each test slide.

Patches: the paper profile cuts the published 112 px crop of the full-resolution image as it is
(``window_px=112``; ~77 µm on her2st at 0.687 µm/px), as the original does. Otherwise (``window_px=None``,
the quick profile) a window of ``window_um`` = 82 µm is resampled to ``patch_px``: the same tissue area on
any dataset, including the coarse synthetic images of the tests (82 µm was the published crop at the
~0.73 µm/px her2st was first estimated at: 7% wider than it).

Epoch selection (audited against maxpmx/HisToGene at 44ff75b): the tutorial trains with
``pl.Trainer(max_epochs=100)`` and ``trainer.fit(model, train_loader)`` (no validation loader, no early stopping,
no checkpoint callback) and saves the model after the last epoch; the test slide is only predicted afterwards.
Nothing is chosen on the test data, so ``bench reproduce`` runs no "epoch on the test fold" step for it.

Deviations
- Genes and targets are the benchmark's panel and common target (the original: 785 HVGs, library-size
  normalised per spot like the common target, then scprep's log, which is log10(1 + x)). Log base: the
  suite's targets are in natural log, 2.30x the original's values; the loss is the same MSE, so (Adam
  being insensitive to a constant loss factor) the difference is the scale of what the head must output.
  Scores (PCC) do not depend on the base.
- Input as published: raw 0-255 values, no normalisation.
- The original flattens each patch from an image array transposed to (x, y, channel); here patches are
  flattened as (y, x, channel). A linear embedding trained from scratch sees only a fixed reordering of
  its inputs, so the model family is the same.
- The published "super-resolution" prediction (extra spots between measured ones) is not part of the
  benchmark.
- ``quick`` profile (CPU): see ``profiles`` below.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.method import COUNT, DROPOUT, EPOCHS, POSITIVE, SWITCH, WINDOW_PX, Method, PatchSpec, SpotData
from bench.nn.layers import Transformer
from bench.nn.slides import ShuffledSlides, check_positions, split_slides
from bench.nn.torch_utils import bf16_autocast
from bench.nn.training import train_epochs


def histogene_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The published training loss: mean squared error over the slide's spots and genes."""
    return F.mse_loss(pred, target)


class HisToGeneModel(nn.Module):
    def __init__(self, patch_px: int, n_genes: int, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 dropout: float, n_positions: int):
        super().__init__()
        self.patch_embedding = nn.Linear(3 * patch_px * patch_px, dim)
        self.x_embed = nn.Embedding(n_positions, dim)
        self.y_embed = nn.Embedding(n_positions, dim)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, input_dropout=dropout)
        self.gene_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))

    def forward(self, patches, coords):  # (n, px*px*3) raw values, (n, 2) -> (n, n_genes); one slide
        x = self.patch_embedding(patches) + self.x_embed(coords[:, 0]) + self.y_embed(coords[:, 1])
        return self.gene_head(self.transformer(x.unsqueeze(0))).squeeze(0)


class HisToGene(Method):
    name = "histogene"
    description = "whole-slide ViT over flattened 112 px patches with learned x/y embeddings (Pang et al. 2021)"
    # "paper" is the published setting (the constructor defaults, and the published pixel crop:
    # window_px). "quick" makes a CPU run affordable:
    # 56 px patches of a 82 µm window (4x fewer inputs to the patch embedding), depth 4 (the class
    # default of the public code; the tutorial uses 8), 30 epochs instead of 100, and lr 1e-4: with ~3x
    # fewer steps the published 1e-5 leaves the model near its initialisation.
    # A cluster job of the paper profile (100 epochs, one slide per step): one GPU, small memory.
    resources = {"gpus": 1, "cpus": 4, "mem_gb": 16, "time_min": 180}
    profiles = {"paper": {"window_px": 112}, "quick": {"epochs": 30, "patch_px": 56, "depth": 4, "lr": 1e-4}}

    parameter_constraints = {
        "epochs": EPOCHS, "lr": POSITIVE, "dim": COUNT, "depth": COUNT, "heads": COUNT, "dim_head": COUNT,
        "mlp_dim": COUNT, "dropout": DROPOUT, "n_positions": COUNT, "patch_px": COUNT, "window_um": POSITIVE,
        "window_px": WINDOW_PX, "bf16": SWITCH}

    def __init__(self, epochs: int = 100, lr: float = 1e-5, dim: int = 1024, depth: int = 8, heads: int = 16,
                 dim_head: int = 64, mlp_dim: int = 2048, dropout: float = 0.1, n_positions: int = 64,
                 patch_px: int = 112, window_um: float = 82.0,
                 window_px: int | None = None, bf16: bool = True):
        self.epochs = epochs
        self.lr = lr
        self.dim = dim
        self.depth = depth
        self.heads = heads
        self.dim_head = dim_head
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.n_positions = n_positions
        self.patch_px = patch_px
        self.window_um = window_um
        # A crop of window_px pixels of the image as it is (paper: the published 112; resampled to patch_px
        # when that differs); None: a window of window_um µm (the same tissue area on every dataset).
        self.window_px = window_px
        self.bf16 = bf16  # bf16 autocast, CUDA only

    def patch_spec(self) -> PatchSpec:
        return PatchSpec(window_um=self.window_um, px=self.patch_px, window_px=self.window_px)

    def build_model(self, n_genes: int) -> HisToGeneModel:
        return HisToGeneModel(self.patch_px, n_genes, self.dim, self.depth, self.heads, self.dim_head, self.mlp_dim,
                              self.dropout, self.n_positions)

    def fit(self, train: SpotData) -> "HisToGene":
        device, seed = self.runtime.device, self.runtime.seed
        self.runtime.facts["pretrained"] = False  # trained from scratch, as published
        check_positions(train.array_coords, self.n_positions, self.name)
        self.model_ = self.build_model(train.n_genes).to(device)
        optimizer = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        slides = split_slides(train)

        def loss_of(slide):
            patches, coords = self._inputs(slide)
            with bf16_autocast(device, self.bf16):
                pred = self.model_(patches, coords).float()
            return histogene_loss(pred, torch.as_tensor(slide.expression, device=device)), len(slide)

        self.model_.train()
        train_epochs(self.runtime, self.name, self.epochs, ShuffledSlides(slides, np.random.default_rng(seed)),
                     loss_of, optimizer)
        return self

    def predict(self, test: SpotData) -> np.ndarray:
        check_positions(test.array_coords, self.n_positions, self.name)
        out = np.zeros((len(test), test.n_genes), dtype=np.float32)
        self.model_.eval()
        with torch.inference_mode(), bf16_autocast(self.runtime.device, self.bf16):
            for slide in split_slides(test):
                out[slide.rows] = self.model_(*self._inputs(slide)).float().cpu().numpy()
        return out

    def _inputs(self, slide):
        device = self.runtime.device
        # (n, H, W, 3) uint8 -> (n, H*W*3) raw 0-255 values, the published input
        patches = torch.from_numpy(np.ascontiguousarray(slide.patches)).to(device).reshape(len(slide), -1).float()
        return patches, torch.as_tensor(slide.array_coords, device=device)
