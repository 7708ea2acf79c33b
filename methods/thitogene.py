"""THItoGene (Jia et al., Briefings in Bioinformatics 2024, bbad464): dynamic convolution, capsules, a
transformer and graph attention over all spots of one slide.

Model (defaults = the published HER2+ setting; shapes for 112 px patches)
- Input: each spot's 112 x 112 px patch, raw 0-255 RGB values (no scaling, no normalisation).
- ODConv (omni-dimensional dynamic convolution, Li et al. ICLR 2022), 3 -> 16 channels, kernel 4, stride
  4, no padding, 4 candidate kernels, then ReLU -> (16, 28, 28). Its attention: global average pool ->
  Linear(3 -> 16, no bias) (16 = max(int(3 * 0.0625), 16)) -> BatchNorm -> ReLU -> four heads: input
  channel, output filter and spatial (k x k) attentions by sigmoid, kernel attention by softmax over the
  4 kernels (temperature 1). The input is scaled by the channel attention, convolved with the sample's
  kernel sum_n(spatial * kernel_n * W_n), and the output scaled by the filter attention.
- Efficient-CapsNet: Conv 16->32 k5, Conv 32->64 k3, Conv 64->64 k3, Conv 64->128 k3 stride 2 (all
  valid, each BatchNorm + ReLU) -> (128, 9, 9); primary capsules: depthwise Conv 128 -> 128 with a kernel
  the size of the map (9) -> 16 capsules x 8 dims, squashed; self-attention routing to 20 capsules x 64
  dims: u = W u_primary (W: 20 x 16 x 8 x 64), c = softmax over the output capsules of
  (u_i . sum_k u_k) / sqrt(64), plus a learned bias b (20 x 16 x 1), s = sum_i c_i u_i, squashed.
  Squash: (1 - 1 / (exp(|s|) + 1e-20)) * s / (|s| + 1e-20), so every norm lies in [0, 1).
- Position: learned ``Embedding(64, 64)`` for the array x and for the array y coordinate, appended as two
  more 64-d tokens to the 20 capsules -> 22 x 64 = 1408 features per spot.
- ViT over the slide's spots as one sequence (the public ``transformer.py``, vit-pytorch form): dropout
  0.2 on the input, then depth 4 (HER2+; 8 for cSCC, set by ``dataset_settings``) pre-norm blocks:
  LayerNorm -> 16-head self-attention (64 per head, no qkv bias, output Linear + dropout 0.2) ->
  residual; LayerNorm -> Linear(1408, 2048) -> GELU -> dropout -> Linear -> dropout -> residual. No
  final norm.
- Multi-head GAT (``GATLayer.py``, pyGAT's layer): dropout 0.2 -> 8 heads, each Wh = h W (1408 -> 1024,
  no bias), scores e_ij = LeakyReLU_0.01(a1 . Wh_i + a2 . Wh_j) on the graph's edges (-9e15 elsewhere),
  softmax, dropout 0.2 on the attention weights, h'_i = sum_j alpha_ij Wh_j, ELU; the 8 heads are
  concatenated (8192) -> dropout 0.2 -> one output attention layer 8192 -> 512 (same form, no ELU
  inside) -> ELU. W and a are Xavier-uniform (gain 1.414).
  The softmax as it ran: the DataLoader (batch size 1) hands the layer the adjacency as 1 x N x N, so
  ``softmax(dim=1)`` normalises over the spots i that list j as a neighbour (each column sums to 1), not
  over a spot's neighbours as pyGAT intends for an N x N matrix; a spot that no spot lists (a column of
  -9e15 only) gives weight 1/N to every spot. ``gat_softmax="published"`` (paper and quick) is this;
  ``gat_softmax="neighbours"`` is pyGAT's intended row-wise softmax (``GraphAttention``).
- Graph: each spot's 4 nearest other spots by Euclidean distance between array coordinates (``calcADJ``
  with k = 4, ``pruneTag="NA"``: no pruning, on HER2+ and cSCC); a spot does not attend to itself (no self
  loops); edges are directed (row i lists i's neighbours).
- Head: Linear(512, 1024) -> ReLU -> LayerNorm(1024) -> Linear(1024, n_genes).

Training: one whole slide per optimiser step (slides in a new seeded order each epoch), Adam (lr 1e-5,
no weight decay), MSE over the slide's spots and genes (``thitogene_loss``), 300 epochs on HER2+ and
cSCC (the published training script; the README's example uses 200), no augmentation (the published
dataset defines transforms but never applies them), the last epoch kept (as published: no validation).
Inference: the model runs once over each test slide, in eval mode.

Per dataset (``dataset_settings``, applied under ``--profile paper``): cSCC: ViT depth 8 (``train.py``).

Patches: the paper profile cuts the published 112 px crop of the full-resolution image as it is
(``window_px=112``; ~77 µm on her2st at 0.687 µm/px), as the original does. Otherwise
(``window_px=None``, the quick profile) a window of ``window_um`` = 82 µm is resampled to ``patch_px``:
the same tissue area on any dataset, including the coarse synthetic images of the tests (82 µm was
the published crop at the ~0.73 µm/px her2st was first estimated at: 7% wider than it).

Epoch selection (audited against yrjia1015/THItoGene at 13daf4d): ``train.py`` calls
``trainer.fit(model, train_loader)`` for a fixed number of epochs, without a validation loader, early stopping or
checkpoint callback, and predicts the test slide with the last epoch's model. Nothing is chosen on the test data,
so ``bench reproduce`` runs no "epoch on the test fold" step for it.

Deviations
- Genes and targets are the benchmark's panel and common target (the original: 785 HVGs, library-size
  normalised per spot, then scprep's log, which is log10(1 + x)). Log base: the suite's targets are in
  natural log, 2.30x the original's log10 values; the loss is the same MSE, so (Adam being insensitive to
  a constant loss factor) the difference is the scale of what the head must output, not the balance of
  terms. Scores (PCC) do not depend on the base.
- Input as published: raw 0-255 RGB values, no normalisation. The original crops each patch from the
  image tensor transposed to (x, y, channel), so its patches are (channel, x, y); here (channel, y, x). A
  model trained from scratch then sees every patch transposed, a fixed symmetry of its input: the same
  model family, not the same function for given weights.
- The GAT works on a neighbour table (each spot's edge slots), not the dense N x N matrix: memory is linear
  in the number of spots. The maths is the published masked softmax (-9e15 outside the graph), including
  the 1/N weights of unlisted spots (``"published"``) or the uniform average for a spot without neighbours
  (``"neighbours"``). Attention dropout is drawn per edge (and per 1/N entry) instead of over the dense
  matrix, which is the same distribution.
- Ties among equidistant spots in the 4-NN graph are broken by spot index (the original's ``argsort``
  leaves their order to the sort). On the square ST grid this matters only at the tissue's edge: inside,
  a spot's 4 nearest are its 4 grid neighbours.
- Self-attention in the ViT uses ``scaled_dot_product_attention`` (same maths, memory-efficient on GPU).
- Patch sizes other than 112 px are allowed: the primary capsules' depthwise kernel is then the size of
  the last feature map (9 at 112 px, as published), so it still gives 16 x 8 capsule values.
- Public-code defect fixed: the routing divides by ``torch.Tensor([64])``, a CPU tensor, which fails when
  the model is on a GPU; here the same constant sqrt(64) is used on any device.
- A training slide with a single spot is skipped (its BatchNorm layers cannot train on one sample).
- ``quick`` profile (CPU): see ``profiles`` below.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.method import (
    COUNT,
    DROPOUT,
    EPOCHS,
    NON_NEGATIVE,
    POSITIVE,
    SWITCH,
    WINDOW_PX,
    Method,
    Options,
    PatchSpec,
    SpotData,
)
from bench.nn.graph import knn_graph, neighbour_table
from bench.nn.layers import Transformer
from bench.nn.slides import ShuffledSlides, check_positions, split_slides
from bench.nn.torch_utils import bf16_autocast
from bench.nn.training import train_epochs

N_PRIMARY_CAPS, PRIMARY_CAPS_DIM = 16, 8  # fixed in Efficient-CapsNet (128 channels = 16 x 8)


# -- ODConv ---------------------------------------------------------------------------------------
class ODConvAttention(nn.Module):
    """The four attentions of ODConv from one squeeze-excitation style branch (groups = 1)."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, kernel_num: int,
                 reduction: float = 0.0625, min_channel: int = 16, temperature: float = 1.0):
        super().__init__()
        hidden = max(int(in_planes * reduction), min_channel)
        self.kernel_size, self.kernel_num, self.temperature = kernel_size, kernel_num, temperature
        # 1x1 convolutions on a 1x1 map are linear layers; BatchNorm over (batch, hidden) likewise.
        self.fc = nn.Linear(in_planes, hidden, bias=False)
        self.bn = nn.BatchNorm1d(hidden)
        self.channel_fc = nn.Linear(hidden, in_planes)
        self.filter_fc = nn.Linear(hidden, out_planes)
        self.spatial_fc = nn.Linear(hidden, kernel_size * kernel_size) if kernel_size > 1 else None
        self.kernel_fc = nn.Linear(hidden, kernel_num) if kernel_num > 1 else None
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):  # (B, C, H, W) -> channel (B,C,1,1), filter (B,O,1,1), spatial, kernel
        b = x.shape[0]
        t = self.temperature
        h = F.relu(self.bn(self.fc(x.mean(dim=(2, 3)))))
        channel = torch.sigmoid(self.channel_fc(h) / t).view(b, -1, 1, 1)
        filt = torch.sigmoid(self.filter_fc(h) / t).view(b, -1, 1, 1)
        if self.spatial_fc is None:
            spatial = h.new_ones(b, 1, 1, 1, 1, 1)
        else:
            spatial = torch.sigmoid(self.spatial_fc(h) / t).view(b, 1, 1, 1, self.kernel_size, self.kernel_size)
        if self.kernel_fc is None:
            kernel = h.new_ones(b, 1, 1, 1, 1, 1)
        else:
            kernel = torch.softmax(self.kernel_fc(h) / t, dim=1).view(b, -1, 1, 1, 1, 1)
        return channel, filt, spatial, kernel


class ODConv2d(nn.Module):
    """Omni-dimensional dynamic convolution: each sample gets its own kernel, a mixture of
    ``kernel_num`` candidate kernels modulated along the spatial, input- and output-channel axes."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 kernel_num: int = 4):
        super().__init__()
        self.in_planes, self.out_planes = in_planes, out_planes
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.attention = ODConvAttention(in_planes, out_planes, kernel_size, kernel_num)
        self.weight = nn.Parameter(torch.empty(kernel_num, out_planes, in_planes, kernel_size, kernel_size))
        for i in range(kernel_num):
            nn.init.kaiming_normal_(self.weight.data[i], mode="fan_out", nonlinearity="relu")

    def sample_kernels(self, spatial, kernel):
        """(B, out, in, k, k): each sample's kernel, sum over n of spatial * kernel_n * W_n."""
        return (spatial * kernel * self.weight.unsqueeze(0)).sum(dim=1)

    def forward(self, x):
        channel, filt, spatial, kernel = self.attention(x)
        b, _, h, w = x.shape
        weights = self.sample_kernels(spatial, kernel).reshape(-1, self.in_planes, self.kernel_size, self.kernel_size)
        # One grouped convolution: sample i's channels meet only sample i's kernel.
        out = F.conv2d((x * channel).reshape(1, -1, h, w), weights.to(x.dtype), stride=self.stride,
                       padding=self.padding, groups=b)
        return out.view(b, self.out_planes, out.shape[-2], out.shape[-1]) * filt


# -- Efficient-CapsNet ------------------------------------------------------------------------------
def squash(s: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """Efficient-CapsNet's squash: keeps the direction, maps the norm n to 1 - 1/exp(n), in [0, 1)."""
    n = torch.linalg.vector_norm(s, dim=-1, keepdim=True)
    return (1 - 1 / (torch.exp(n) + eps)) * (s / (n + eps))


class SelfAttentionRouting(nn.Module):
    """Efficient-CapsNet's non-iterative routing from 16 x 8 primary to ``n_caps`` x ``caps_dim`` capsules."""

    def __init__(self, n_caps: int, caps_dim: int):
        super().__init__()
        self.caps_dim = caps_dim
        self.W = nn.Parameter(torch.empty(n_caps, N_PRIMARY_CAPS, PRIMARY_CAPS_DIM, caps_dim))
        self.b = nn.Parameter(torch.zeros(n_caps, N_PRIMARY_CAPS, 1))
        nn.init.kaiming_normal_(self.W)

    def forward(self, primary, return_coupling: bool = False):  # (B, 16, 8) -> (B, n_caps, caps_dim)
        u = torch.einsum("bji,kjiz->bkjz", primary, self.W)  # predictions of each primary capsule j
        agreement = torch.einsum("bkjz,bkz->bkj", u, u.sum(dim=2))[..., None] / math.sqrt(self.caps_dim)
        coupling = torch.softmax(agreement, dim=1)  # over the output capsules, as published
        out = squash((u * (coupling + self.b)).sum(dim=2))
        return (out, coupling) if return_coupling else out


class EfficientCapsNet(nn.Module):
    def __init__(self, in_channels: int, n_caps: int, caps_dim: int, map_size: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, 32, 5), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3),
                                    nn.Conv2d(64, 128, 3, stride=2)])
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in (32, 64, 64, 128)])
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight)
        channels = N_PRIMARY_CAPS * PRIMARY_CAPS_DIM
        self.primary = nn.Conv2d(channels, channels, map_size, groups=channels)  # depthwise, valid
        self.routing = SelfAttentionRouting(n_caps, caps_dim)

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
        primary = squash(self.primary(x).reshape(x.shape[0], N_PRIMARY_CAPS, PRIMARY_CAPS_DIM))
        return self.routing(primary)


def capsnet_map_size(patch_px: int, kernel: int, stride: int) -> int:
    """Side of the feature map the primary capsules see (9 for 112 px patches and the 4/4 ODConv)."""
    side = (patch_px - kernel) // stride + 1  # ODConv, no padding
    side = side - 4 - 2 - 2  # three valid convolutions, kernels 5, 3, 3
    side = (side - 3) // 2 + 1  # kernel 3, stride 2
    if side < 1:
        raise ValueError(f"thitogene: patches of {patch_px} px are too small for the capsule network "
                         f"(it needs at least {11 * stride + kernel - stride} px)")
    return side


# -- ViT --------------------------------------------------------------------------------------------
# -- graph attention --------------------------------------------------------------------------------
GAT_SOFTMAX = ("published", "neighbours")


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Softmax inputs in float32 under bf16 autocast (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class GraphAttention(nn.Module):
    """``heads`` independent GAT attention heads on a neighbour table (row i lists the spots i takes from).

    Scores e_ij = LeakyReLU(a1 . W h_i + a2 . W h_j) on the graph's edges; the output of spot i is
    sum_j alpha_ij W h_j (ELU'd when ``elu``). Returns (n, heads, out_features). ``softmax`` says what the
    weights are normalised over:

    - ``"published"``: what THItoGene's code computes. Its adjacency reaches the layer as a 1 x N x N batch,
      so ``softmax(dim=1)`` runs over the spots i that list j (each column of the dense matrix sums to 1):
      alpha_ij = exp(e_ij) / sum_{i' lists j} exp(e_i'j). A spot j that no spot lists has a column of -9e15
      only, which the softmax turns into 1/N for every spot i: each output gets (1/N) W h_j from it.
    - ``"neighbours"``: what pyGAT intends (an N x N adjacency): alpha_ij = softmax over the neighbours j of
      spot i (each row sums to 1); a spot without neighbours gets the uniform average over all spots, as the
      dense -9e15 mask gives.

    Attention dropout acts on each weight of the dense matrix the published layer would hold (the edges,
    and in ``"published"`` mode the 1/N entries of the unlisted spots), so it has the same distribution.
    """

    def __init__(self, in_features: int, out_features: int, heads: int, dropout: float, alpha: float, elu: bool,
                 softmax: str = "published"):
        super().__init__()
        if softmax not in GAT_SOFTMAX:
            raise ValueError(f"thitogene: gat_softmax must be one of {GAT_SOFTMAX}, got {softmax!r}")
        self.dropout, self.alpha, self.elu, self.softmax = dropout, alpha, elu, softmax
        self.W = nn.Parameter(torch.empty(heads, in_features, out_features))
        self.a = nn.Parameter(torch.empty(heads, 2 * out_features))
        self.out_features = out_features
        gain = 1.414
        w_bound = gain * math.sqrt(6.0 / (in_features + out_features))
        a_bound = gain * math.sqrt(6.0 / (2 * out_features + 1))  # xavier on each head's (2F, 1) vector
        nn.init.uniform_(self.W, -w_bound, w_bound)
        nn.init.uniform_(self.a, -a_bound, a_bound)

    def forward(self, h, neighbours, mask, return_attention: bool = False):
        wh = torch.einsum("ni,hio->nho", h, self.W)  # (n, heads, F)
        score_self = (wh * self.a[:, :self.out_features]).sum(-1)  # (n, heads): a1 . W h_i
        score_other = (wh * self.a[:, self.out_features:]).sum(-1)  # a2 . W h_j
        e = F.leaky_relu(score_self[:, None, :] + score_other[neighbours], self.alpha)  # (n, k, heads)
        if self.softmax == "neighbours":
            out, attention = self._over_neighbours(wh, e, neighbours, mask)
        else:
            out, attention = self._over_listing_spots(wh, e, neighbours, mask)
        if self.elu:
            out = F.elu(out)
        return (out, attention) if return_attention else out

    def _over_neighbours(self, wh, e, neighbours, mask):
        has_neighbour = mask.any(dim=1)
        # Unused slots are -inf (weight exactly 0). A spot with no neighbour at all (all -inf would give
        # NaN) gets the uniform average over all spots below, as the dense -9e15 mask gives.
        e = e.masked_fill(~mask[..., None] & has_neighbour[:, None, None], float("-inf"))
        attention = torch.softmax(_at_least_float32(e), dim=1).to(wh.dtype).masked_fill(~mask[..., None], 0.0)
        dropped = F.dropout(attention, self.dropout, training=self.training)
        out = torch.einsum("nkh,nkhf->nhf", dropped, wh[neighbours])
        return torch.where(has_neighbour[:, None, None], out, wh.mean(dim=0, keepdim=True)), attention

    def _over_listing_spots(self, wh, e, neighbours, mask):
        n, heads = wh.shape[0], wh.shape[1]
        listed = neighbours[mask]  # (E,): the j of each edge (i, j)
        scores = _at_least_float32(e[mask])  # (E, heads)
        index = listed[:, None].expand(-1, heads)
        column_max = scores.new_full((n, heads), float("-inf")).scatter_reduce(0, index, scores, "amax")
        weights = torch.exp(scores - column_max[listed])
        column_sum = scores.new_zeros(n, heads).index_add_(0, listed, weights)
        attention = wh.new_zeros(mask.shape + (heads,))
        attention[mask] = (weights / column_sum[listed]).to(wh.dtype)
        dropped = F.dropout(attention, self.dropout, training=self.training)
        out = torch.einsum("nkh,nkhf->nhf", dropped, wh[neighbours])
        unlisted = torch.ones(n, dtype=torch.bool, device=wh.device)
        unlisted[listed] = False
        if unlisted.any():  # their all -9e15 columns: weight 1/N from each to every spot
            uniform = wh.new_full((n, int(unlisted.sum()), heads), 1.0 / n)
            uniform = F.dropout(uniform, self.dropout, training=self.training)
            out = out + torch.einsum("nuh,uhf->nhf", uniform, wh[unlisted])
        return out, attention


class MultiHeadGAT(nn.Module):
    def __init__(self, in_features: int, hidden: int, out_features: int, heads: int, dropout: float, alpha: float,
                 softmax: str = "published"):
        super().__init__()
        self.dropout = dropout
        self.hidden = GraphAttention(in_features, hidden, heads, dropout, alpha, elu=True, softmax=softmax)
        self.out = GraphAttention(hidden * heads, out_features, 1, dropout, alpha, elu=False, softmax=softmax)

    def forward(self, x, neighbours, mask):  # (n, in) -> (n, out)
        x = F.dropout(x, self.dropout, training=self.training)
        x = self.hidden(x, neighbours, mask).flatten(1)  # heads concatenated
        x = F.dropout(x, self.dropout, training=self.training)
        return F.elu(self.out(x, neighbours, mask).squeeze(1))


def thitogene_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The published training loss: mean squared error over the slide's spots and genes."""
    return F.mse_loss(pred, target)


# -- the model --------------------------------------------------------------------------------------
class THItoGeneModel(nn.Module):
    def __init__(self, n_genes: int, patch_px: int, odconv_channels: int, odconv_kernel: int, odconv_kernel_num: int,
                 capsules: int, capsule_dim: int, n_positions: int, depth: int, vit_heads: int, dim_head: int,
                 mlp_dim: int, dropout: float, gat_heads: int, gat_hidden: int, gat_out: int, gat_alpha: float,
                 head_hidden: int, gat_softmax: str = "published"):
        super().__init__()
        self.odconv = ODConv2d(3, odconv_channels, odconv_kernel, stride=odconv_kernel, kernel_num=odconv_kernel_num)
        self.capsnet = EfficientCapsNet(odconv_channels, capsules, capsule_dim,
                                        capsnet_map_size(patch_px, odconv_kernel, odconv_kernel))
        self.x_embed = nn.Embedding(n_positions, capsule_dim)
        self.y_embed = nn.Embedding(n_positions, capsule_dim)
        dim = (capsules + 2) * capsule_dim
        self.vit = Transformer(dim, depth, vit_heads, dim_head, mlp_dim, dropout, input_dropout=dropout)
        self.gat = MultiHeadGAT(dim, gat_hidden, gat_out, gat_heads, dropout, gat_alpha, gat_softmax)
        self.gene_head = nn.Sequential(nn.Linear(gat_out, head_hidden), nn.ReLU(), nn.LayerNorm(head_hidden),
                                       nn.Linear(head_hidden, n_genes))

    def forward(self, images, coords, neighbours, mask):
        """images (n, 3, H, W) raw 0-255, coords (n, 2) array x/y, graph as a neighbour table -> (n, G)."""
        caps = self.capsnet(F.relu(self.odconv(images)))  # (n, capsules, capsule_dim)
        tokens = torch.cat([caps, self.x_embed(coords[:, 0])[:, None].to(caps.dtype),
                            self.y_embed(coords[:, 1])[:, None].to(caps.dtype)], dim=1)
        x = self.vit(tokens.flatten(1).unsqueeze(0)).squeeze(0)  # the slide's spots as one sequence
        return self.gene_head(self.gat(x, neighbours, mask))


class THItoGene(Method):
    name = "thitogene"
    description = "ODConv + Efficient-CapsNet + x/y embeddings -> slide ViT -> 4-NN graph attention (Jia et al. 2024)"
    # "paper" is the published HER2+ setting (the constructor defaults, and the published 112 px crop:
    # window_px). "quick" makes a 2-core CPU run affordable and still learn:
    # - 64 px patches of a 82 µm window: ~3x less convolution work per spot; the capsule network
    #   keeps its layers (the primary capsules' kernel follows the smaller map, 3 instead of 9);
    # - ViT depth 1, MLP 512 and GAT hidden 128 per head (instead of 4 / 2048 / 1024): the 1408-wide ViT
    #   and the 8 x 1024 GAT are ~2/3 of the CPU time (depth 2 learns no better here: planted-gene PCC
    #   0.71 vs 0.67 after 20 epochs, at 1.5x the time); the 20 x 64 capsules, 16 / 8 heads, the
    #   position tables and the graph are kept;
    # - 20 epochs instead of 300 (one slide per step: 80 steps on a 4-slide fold), so lr 2e-4 instead of
    #   1e-5, and the routing layer (W, b) at 2e-2: its outputs start ~1/500 the size of the position
    #   embeddings they are concatenated with (Kaiming W over 16 x 8 x 64 inputs, couplings ~1/20), and
    #   the published run has ~100x more steps to grow them. With one lr for all, 20 epochs learn the
    #   positions but barely the image (planted-gene PCC ~0.1 on the synthetic data); the routing
    #   outputs are squashed (norms < 1), so its high rate cannot blow up.
    # Quick inherits the GAT as it ran (gat_softmax="published"; before issue 18 it normalised over each
    # spot's neighbours). On her2st (lopo, hvg:250, --threads 1) its mean PCC moved from 0.2245 / 0.0397
    # (folds 0 / 1) to 0.2220 / 0.0420: not retuned.
    # A cluster job of the paper profile (300 epochs, capsules + ViT + GAT per slide): long.
    resources = {"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 600}
    dataset_settings = {"cscc": {"depth": 8}}  # train.py: n_layers=8 for the skin (cSCC) data
    profiles = {"paper": {"window_px": 112},
                "quick": {"epochs": 20, "lr": 2e-4, "routing_lr": 2e-2, "patch_px": 64, "depth": 1,
                          "mlp_dim": 512, "gat_hidden": 128}}

    parameter_constraints = {
        "epochs": EPOCHS, "lr": POSITIVE, "routing_lr": [*POSITIVE, None], "depth": COUNT, "vit_heads": COUNT,
        "dim_head": COUNT, "mlp_dim": COUNT, "dropout": DROPOUT, "capsules": COUNT, "capsule_dim": COUNT,
        "odconv_channels": COUNT, "odconv_kernel": COUNT, "odconv_kernel_num": COUNT, "gat_heads": COUNT,
        "gat_hidden": COUNT, "gat_out": COUNT, "gat_alpha": NON_NEGATIVE, "gat_softmax": [Options(*GAT_SOFTMAX)],
        "head_hidden": COUNT, "n_neighbours": COUNT, "n_positions": COUNT, "patch_px": COUNT, "window_um": POSITIVE,
        "window_px": WINDOW_PX, "bf16": SWITCH}

    def __init__(self, epochs: int = 300, lr: float = 1e-5, routing_lr: float | None = None, depth: int = 4,
                 vit_heads: int = 16, dim_head: int = 64, mlp_dim: int = 2048, dropout: float = 0.2, capsules: int = 20,
                 capsule_dim: int = 64, odconv_channels: int = 16, odconv_kernel: int = 4, odconv_kernel_num: int = 4,
                 gat_heads: int = 8, gat_hidden: int = 1024, gat_out: int = 512, gat_alpha: float = 0.01,
                 gat_softmax: str = "published", head_hidden: int = 1024, n_neighbours: int = 4,
                 n_positions: int = 64, patch_px: int = 112, window_um: float = 82.0,
                 window_px: int | None = None, bf16: bool = True):
        self.epochs = epochs
        self.lr = lr
        self.routing_lr = routing_lr  # None: the same lr as the rest (published)
        self.depth = depth  # 4 for HER2+, 8 for cSCC in the paper
        self.vit_heads = vit_heads
        self.dim_head = dim_head
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.capsules = capsules
        self.capsule_dim = capsule_dim
        self.odconv_channels = odconv_channels
        self.odconv_kernel = odconv_kernel  # kernel = stride
        self.odconv_kernel_num = odconv_kernel_num
        self.gat_heads = gat_heads
        self.gat_hidden = gat_hidden
        self.gat_out = gat_out
        self.gat_alpha = gat_alpha  # LeakyReLU slope
        # "published": the attention as the public code ran it (normalised over the spots that list a
        # neighbour); "neighbours": pyGAT's intended softmax over each spot's neighbours (GraphAttention)
        self.gat_softmax = gat_softmax
        self.head_hidden = head_hidden
        self.n_neighbours = n_neighbours
        self.n_positions = n_positions
        self.patch_px = patch_px
        self.window_um = window_um
        # A crop of window_px pixels of the image as it is (paper: the published 112; resampled to patch_px
        # when that differs); None: a window of window_um µm (the same tissue area on every dataset).
        self.window_px = window_px
        self.bf16 = bf16  # bf16 autocast, CUDA only

    def patch_spec(self) -> PatchSpec:
        return PatchSpec(window_um=self.window_um, px=self.patch_px, window_px=self.window_px)

    def build_model(self, n_genes: int) -> THItoGeneModel:
        return THItoGeneModel(n_genes, self.patch_px, self.odconv_channels, self.odconv_kernel, self.odconv_kernel_num,
                              self.capsules, self.capsule_dim, self.n_positions, self.depth, self.vit_heads,
                              self.dim_head, self.mlp_dim, self.dropout, self.gat_heads, self.gat_hidden, self.gat_out,
                              self.gat_alpha, self.head_hidden, self.gat_softmax)

    def fit(self, train: SpotData) -> "THItoGene":
        device, seed = self.runtime.device, self.runtime.seed
        self.runtime.facts["pretrained"] = False  # trained from scratch, as published
        check_positions(train.array_coords, self.n_positions, self.name)
        self.model_ = self.build_model(train.n_genes).to(device)
        optimizer = torch.optim.Adam(self._parameter_groups(), lr=self.lr)
        slides = [self._prepare(slide, with_targets=True) for slide in split_slides(train)]

        def loss_of(slide):
            if len(slide["coords"]) < 2:  # BatchNorm cannot train on one spot
                return None
            with bf16_autocast(device, self.bf16):
                pred = self.model_(slide["images"].float(), slide["coords"], slide["neighbours"], slide["mask"])
            return thitogene_loss(pred.float(), slide["expression"]), len(slide["coords"])

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
                s = self._prepare(slide, with_targets=False)
                pred = self.model_(s["images"].float(), s["coords"], s["neighbours"], s["mask"])
                out[slide.rows] = pred.float().cpu().numpy()
        return out

    def _parameter_groups(self) -> list[dict]:
        routing = list(self.model_.capsnet.routing.parameters())
        if self.routing_lr is None:
            return [{"params": list(self.model_.parameters())}]
        others = [p for p in self.model_.parameters() if all(p is not q for q in routing)]
        return [{"params": others}, {"params": routing, "lr": self.routing_lr}]

    def _prepare(self, slide, with_targets: bool) -> dict:
        """A slide's tensors on the device: uint8 images (made float per step), coordinates, graph."""
        device = self.runtime.device
        coords = np.asarray(slide.array_coords, dtype=np.int64)
        table, mask = neighbour_table(knn_graph(coords, k=self.n_neighbours), len(coords))
        images = torch.from_numpy(np.ascontiguousarray(slide.patches)).to(device).permute(0, 3, 1, 2)
        prepared = {"images": images, "coords": torch.as_tensor(coords, device=device),
                    "neighbours": torch.as_tensor(table, device=device), "mask": torch.as_tensor(mask, device=device)}
        if with_targets:
            prepared["expression"] = torch.as_tensor(slide.expression, device=device)
        return prepared
