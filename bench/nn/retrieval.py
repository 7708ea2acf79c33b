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


# Bounds on the temporary arrays of one block of queries (elements, not bytes), whatever the training set's
# size: the (block x n_keys) float32 similarities and the (block x candidates x dim) float64 neighbour keys.
SIMILARITY_ELEMENTS = 16 << 20
GATHER_ELEMENTS = 4 << 20


def retrieve_expression(query: np.ndarray, keys: np.ndarray, values: np.ndarray, top_k: int,
                        distance: str = "l2", weighting: str = "inverse-square", chunk: int = 1024) -> np.ndarray:
    """query (q, d) and keys (n, d) embeddings, values (n, g) expression -> (q, g) predictions.

    Memory is O(n x d) for the keys as given (float32 keys are not copied) plus bounded per-block arrays:
    candidates are screened with float32 cosine similarities, then the top k are chosen among them, and
    weighted, in float64 (the same neighbours as an all-float64 search unless float32 rounding reorders
    a gap of more than the extra candidates)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    k = min(int(top_k), len(keys))
    if k < 1:
        raise ValueError("top_k must be at least 1 and there must be training spots to retrieve from")
    keys_t = torch.as_tensor(np.asarray(keys))
    values_t = torch.as_tensor(np.asarray(values))
    n, dim = keys_t.shape
    screen_keys = keys_t.float()  # a view when the keys are float32 already
    # 1 / |key| (F.normalize's rule: norms below 1e-12 count as 1e-12), in float64, a slice at a time.
    inv_norm = torch.cat([1.0 / keys_t[i:i + 65536].double().norm(dim=1).clamp_min(1e-12)
                          for i in range(0, n, 65536)]).float()
    n_candidates = min(n, k + max(16, k // 4))  # margin for float32 rounding in the screening
    block_rows = max(1, min(int(chunk), SIMILARITY_ELEMENTS // n, GATHER_ELEMENTS // (n_candidates * dim)))
    out = np.empty((len(query), values_t.shape[1]), dtype=np.float32)
    for start in range(0, len(query), block_rows):
        block = torch.as_tensor(np.asarray(query[start:start + block_rows]), dtype=torch.float64)
        block_unit = torch.nn.functional.normalize(block, dim=1)
        screened = (block_unit.float() @ screen_keys.T).mul_(inv_norm)  # (b, n) cosine similarities
        candidates = screened.topk(n_candidates, dim=1).indices
        del screened
        candidate_unit = torch.nn.functional.normalize(keys_t[candidates].double(), dim=2)  # (b, c, d)
        similarity = torch.einsum("bd,bcd->bc", block_unit, candidate_unit)
        nearest = candidates.gather(1, similarity.topk(k, dim=1).indices)  # (b, k)
        if weighting == "uniform":
            weights = torch.ones(nearest.shape, dtype=torch.float64)
        else:
            diff = block[:, None, :] - keys_t[nearest].double()  # (b, k, d)
            d = diff.abs().sum(-1) if distance == "l1" else diff.pow(2).sum(-1).sqrt()
            if weighting == "exponential":
                # exp(-d²) relative to the smallest d² (a constant factor, removed by normalising): no underflow
                squared = d.pow(2)
                weights = torch.exp(-(squared - squared.min(dim=1, keepdim=True).values))
            else:
                weights = 1.0 / d.clamp_min(1e-12).pow(2)  # an exact match gets a huge, finite weight
        weights = weights / weights.sum(dim=1, keepdim=True)
        out[start:start + len(block)] = torch.einsum("bk,bkg->bg", weights, values_t[nearest].double()).numpy()
    return out
