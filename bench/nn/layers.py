"""Network pieces several published methods share, written once.

- ``ProjectionHead``: the CLIP-style head of mclSTExp and BLEEP (Linear -> GELU -> Linear -> Dropout,
  plus the first Linear's output, then LayerNorm).
- ``Transformer``: a pre-norm transformer encoder in the form of the ``vit-pytorch`` ViT that HisToGene,
  mclSTExp and others build on (LayerNorm -> multi-head self-attention without qkv bias -> residual;
  LayerNorm -> MLP with GELU -> residual; dropout after the attention output and inside the MLP).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 256, dropout: float = 0.0):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x):
        projected = self.projection(x)
        x = self.dropout(self.fc(F.gelu(projected)))
        return self.norm(x + projected)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x):  # (batch, seq, dim)
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / sqrt(dim_head)) v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PreNormBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dim_head, dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """``depth`` pre-norm blocks over (batch, seq, dim), with dropout on the input embeddings."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)
        self.blocks = nn.Sequential(*[PreNormBlock(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.input_dropout(x))
