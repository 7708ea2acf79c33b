"""ST-Net (He et al., Nature Biomedical Engineering 2020): DenseNet-121 regression of expression.

Model: torchvision DenseNet-121 (ImageNet weights when available), trainable, its classifier replaced by
``Linear(1024, n_genes)`` whose weights start at zero and whose bias starts at the training mean, so
training begins from the mean predictor.

Training: SGD (lr 1e-6, momentum 0.9, no weight decay), batch 32, 50 epochs. Loss as in the public
``run_spatial.py``: the squared error summed over the batch's spots and the genes, divided by the number
of genes (``stnet_loss``), i.e. batch-size times the gradient of a mean squared error; ``train_loss`` logs
this published per-batch loss. Augmentation: random horizontal and vertical flips and, with probability
1/2, a 90° rotation (together: each of the 8 symmetries of the square equally likely). Prediction is
averaged over all 8 symmetries (test-time augmentation).

Patches: the paper profile cuts the published 224 px crop of the full-resolution image as it is
(``window_px=224``; ~154 µm on her2st at 0.687 µm/px), as the original does. Otherwise
(``window_px=None``, the quick profile) a window of ``window_um`` = 165 µm is resampled to ``patch_px``:
the same tissue area on any dataset, including the coarse synthetic images of the tests (165 µm was
the published crop at the ~0.73 µm/px her2st was first estimated at: 7% wider than it).

Deviations
- Genes and targets are the benchmark's panel and common target, ln(1 + 10,000 x / total) per spot (the
  original: its 250 most expressed genes and ln((1 + count) / (n_genes + total)), also natural log), so
  all methods are scored alike.
- Input normalisation: the original standardises each channel with a mean and std estimated from a dozen
  training batches; here the ImageNet mean/std that the pretrained DenseNet expects.
- Epoch selection: the original picks the epoch by inner cross-validation on the training patients; here
  the last epoch is kept, as for every other method in the suite.
- ``image_encoder`` (option, off by default): a frozen encoder by name (``bench.nn.encoders``:
  ``timm:<model>``, ``hf-hub:MahmoodLab/UNI`` ...) replaces the published DenseNet-121: its embeddings are
  computed once per section and cached, and only the regression head (from the training mean) train (no image
  augmentation: the embeddings are fixed; no test-time augmentation). Not the published method: a way to put
  any encoder into the comparison (``--encoder NAME``).
- ``quick`` profile (CPU): see ``profiles`` below.
"""
from __future__ import annotations

import numpy as np
import torch

from bench.method import (
    COUNT,
    ENCODER,
    EPOCHS,
    POSITIVE,
    SWITCH,
    WINDOW_PX,
    EmbeddingSpec,
    Interval,
    Method,
    Options,
    PatchSpec,
    SpotData,
    patches_or_frozen_encoder,
)
from bench.nn.augment import dihedral, random_dihedral
from bench.nn.batching import PatchBatches, embedding_tensor, to_tensor
from bench.nn.checkpointing import checkpoint_dense_layers
from bench.nn.torch_utils import bf16_autocast, imagenet_normalise, torchvision_backbone
from bench.nn.training import train_epochs


def stnet_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ST-Net's training loss (``run_spatial.py``): the squared error summed over the batch and the genes,
    divided by the number of genes only. Its gradient is batch-size times that of a mean over both."""
    return (pred - target).square().sum() / target.shape[-1]


class STNet(Method):
    name = "st-net"
    description = "DenseNet-121 regression head from the training mean, 8-fold TTA (He et al. 2020)"
    # "paper" is the published setting (the constructor defaults, and the published pixel crop:
    # window_px). "quick" makes a CPU run affordable:
    # 64 px patches of a 165 µm window (~12x less compute per spot) and 8 epochs instead of 50.
    # With ~6x fewer steps the published lr of 1e-6 would leave the model at its mean initialisation,
    # so quick raises it to 1e-3 (momentum unchanged), on the published summed loss (32x the gradient of a
    # mean). It does not diverge; on her2st (lopo, hvg:250, --threads 1, no ImageNet weights) it moved quick's
    # mean PCC from 0.139 / 0.084 (folds 0 / 1, a mean loss at lr 1e-3) to 0.185 / 0.110.
    # A cluster job of the paper profile (50 epochs of DenseNet-121 at 224 px): one GPU, a few hours at most.
    resources = {"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 240}
    # Quick keeps DenseNet's activations (memory_efficient off: the same numbers): at 64 px they are small, and
    # recomputing them would cost training time on the CPU the profile is for.
    profiles = {"paper": {"window_px": 224},
                "quick": {"epochs": 8, "patch_px": 64, "lr": 1e-3, "memory_efficient": False}}

    parameter_constraints = {
        "epochs": EPOCHS, "batch_size": COUNT, "lr": POSITIVE, "momentum": [Interval(float, 0, 1, closed="left")],
        "patch_px": COUNT, "window_um": [*POSITIVE, Options("encoder")], "window_px": WINDOW_PX, "augment": SWITCH,
        "tta": SWITCH, "channels_last": SWITCH, "bf16": SWITCH, "memory_efficient": SWITCH,
        "image_encoder": ENCODER}

    def __init__(self, epochs: int = 50, batch_size: int = 32, lr: float = 1e-6, momentum: float = 0.9,
                 patch_px: int = 224, window_um: float = 165.0,
                 window_px: int | None = None, augment: bool = True, tta: bool = True,
                 channels_last: bool = True, bf16: bool = True, memory_efficient: bool = True,
                 image_encoder: str | None = None):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.patch_px = patch_px
        self.window_um = window_um
        # A crop of window_px pixels of the image as it is (paper: the published 224; resampled to patch_px
        # when that differs); None: a window of window_um µm (the same tissue area on every dataset).
        self.window_px = window_px
        self.augment = augment
        self.tta = tta
        self.channels_last = channels_last  # faster convolutions on CPU (~25%) and GPU
        self.bf16 = bf16  # bf16 autocast, CUDA only
        # Recompute DenseNet's dense layers in the backward pass instead of keeping their activations: the same
        # numbers, less than half the training memory (see bench.nn.checkpointing).
        self.memory_efficient = memory_efficient
        # None: the published DenseNet-121, trained end to end on patches. An encoder name (bench.nn.encoders):
        # that encoder frozen, and ST-Net's regression head trained on its cached embeddings (no augmentation
        # and no test-time augmentation: the embeddings are fixed).
        self.image_encoder = image_encoder

    def patch_spec(self) -> PatchSpec | None:
        return patches_or_frozen_encoder(self)[0]

    def embedding_spec(self) -> EmbeddingSpec | None:
        return patches_or_frozen_encoder(self)[1]

    def build_model(self, n_genes: int, embedding_dim: int | None = None):
        """(network, regression head): DenseNet-121 with its classifier replaced by ``Linear(1024, n_genes)``, as
        ``set_out_features`` does; with a frozen ``image_encoder``, the head alone on its embeddings."""
        if self.image_encoder:
            head = torch.nn.Linear(int(embedding_dim), n_genes)
            return head, head
        model, _ = torchvision_backbone("densenet121", self.runtime.pretrained, self.runtime.facts)
        if self.memory_efficient:
            checkpoint_dense_layers(model)
        model.classifier = torch.nn.Linear(model.classifier.in_features, n_genes)
        return model, model.classifier

    def fit(self, train: SpotData) -> "STNet":
        device, seed = self.runtime.device, self.runtime.seed
        model, head = self.build_model(train.n_genes, None if train.embeddings is None else train.embeddings.shape[1])
        with torch.no_grad():  # start from the mean predictor
            head.weight.zero_()
            head.bias.copy_(torch.as_tensor(train.expression.mean(axis=0)))
        self.model_ = model.to(device)
        if self.channels_last and not self.image_encoder:
            self.model_.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(self.model_.parameters(), lr=self.lr, momentum=self.momentum)
        expression = torch.as_tensor(train.expression, device=device)
        generator = torch.Generator(device=device).manual_seed(seed)
        batches = PatchBatches(self._images(train), self.batch_size, shuffle=True, rng=np.random.default_rng(seed))

        def loss_of(batch):
            rows, patches = batch
            if len(rows) < 2:  # BatchNorm cannot train on a single sample
                return None
            if self.image_encoder:
                inputs = embedding_tensor(patches, device)
            else:
                images = self._prepare(patches)
                if self.augment:
                    images = random_dihedral(images, generator)
                inputs = imagenet_normalise(images)
            with self._autocast():
                pred = self.model_(inputs).float()
            return stnet_loss(pred, expression[torch.as_tensor(rows, device=device)]), len(rows)

        self.model_.train()
        train_epochs(self.runtime, self.name, self.epochs, batches, loss_of, optimizer)
        self.runtime.facts["data_wait_fraction"] = batches.wait_fraction
        return self

    def predict(self, test: SpotData) -> np.ndarray:
        self.model_.eval()
        out = []
        if self.image_encoder:
            with torch.inference_mode():
                for _, rows in PatchBatches(test.embeddings, self.batch_size):
                    out.append(self.model_(embedding_tensor(rows, self.runtime.device)).float().cpu())
            return torch.cat(out).numpy()
        views = range(8) if self.tta else range(1)
        with torch.inference_mode(), self._autocast():
            for _, patches in PatchBatches(test.patches, self.batch_size):
                images = imagenet_normalise(self._prepare(patches))
                pred = sum(self.model_(dihedral(images, k)).float() for k in views) / len(views)
                out.append(pred.cpu())
        return torch.cat(out).numpy()

    def _images(self, data: SpotData):
        return data.embeddings if self.image_encoder else data.patches

    def _prepare(self, patches: np.ndarray) -> torch.Tensor:
        return to_tensor(patches, self.runtime.device, self.channels_last)

    def _autocast(self):
        return bf16_autocast(self.runtime.device, self.bf16)
