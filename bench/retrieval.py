"""Prediction by retrieval: average the expression of the training spots nearest in embedding space.

Used by the contrastive methods (mclSTExp, BLEEP). Neighbours are chosen by cosine similarity of
L2-normalised embeddings; their expression is averaged uniformly (BLEEP's default), with weights 1/d²
(mclSTExp) or with weights exp(-d²) (BLEEP's weighted variant), where d is the L1 or L2 distance between
the *un-normalised* embeddings.
"""
from __future__ import annotations

import numpy as np
import torch

DISTANCES = ("l1", "l2")
WEIGHTINGS = ("inverse-square", "uniform", "exponential")


def retrieve_expression(query: np.ndarray, keys: np.ndarray, values: np.ndarray, top_k: int,
                        distance: str = "l2", weighting: str = "inverse-square", chunk: int = 1024) -> np.ndarray:
    """query (q, d) and keys (n, d) embeddings, values (n, g) expression -> (q, g) predictions."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    k = min(int(top_k), len(keys))
    if k < 1:
        raise ValueError("top_k must be at least 1 and there must be training spots to retrieve from")
    q = torch.as_tensor(np.asarray(query), dtype=torch.float64)
    keys_t = torch.as_tensor(np.asarray(keys), dtype=torch.float64)
    values_t = torch.as_tensor(np.asarray(values), dtype=torch.float64)
    keys_unit = torch.nn.functional.normalize(keys_t, dim=1)
    out = []
    for start in range(0, len(q), chunk):  # bounded memory: (chunk x n) similarities at a time
        block = q[start:start + chunk]
        similarity = torch.nn.functional.normalize(block, dim=1) @ keys_unit.T
        nearest = similarity.topk(k, dim=1).indices  # (b, k)
        if weighting == "uniform":
            weights = torch.ones(nearest.shape, dtype=torch.float64)
        else:
            diff = block[:, None, :] - keys_t[nearest]  # (b, k, d)
            d = diff.abs().sum(-1) if distance == "l1" else diff.pow(2).sum(-1).sqrt()
            if weighting == "exponential":
                # exp(-d²) relative to the smallest d² (a constant factor, removed by normalising): no underflow
                squared = d.pow(2)
                weights = torch.exp(-(squared - squared.min(dim=1, keepdim=True).values))
            else:
                weights = 1.0 / d.clamp_min(1e-12).pow(2)  # an exact match gets a huge, finite weight
        weights = weights / weights.sum(dim=1, keepdim=True)
        out.append(torch.einsum("bk,bkg->bg", weights, values_t[nearest]))
    return torch.cat(out).numpy().astype(np.float32)
