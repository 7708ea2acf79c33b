"""Spot graphs for the graph-based methods (Hist2ST, THItoGene), as edge lists in plain torch terms.

An edge ``(i, j)`` means spot ``i`` takes a message from spot ``j``: each spot's row lists its ``k``
nearest other spots. The published code builds the same thing as a dense 0/1 matrix; an edge list keeps
memory linear in the number of spots, which matters for Visium slides with thousands of spots.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def knn_graph(coords: np.ndarray, k: int = 4, max_distance: float | None = None) -> np.ndarray:
    """(2, n_edges) int64 edges from each spot to its ``k`` nearest other spots (Euclidean).

    ``max_distance``: drop edges longer than this (Hist2ST's "Grid" pruning on HER2+ uses 2 array units,
    so a spot at the tissue edge does not link to a far-away one). Ties in distance are broken by spot
    index, so the graph is the same on every run. A spot may end with fewer than ``k`` (or no) edges.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or len(coords) == 0:
        raise ValueError(f"coords must be a non-empty (n_spots, dims) array, got shape {coords.shape}")
    n = len(coords)
    k = min(int(k), n - 1)
    if k < 1:
        return np.zeros((2, 0), dtype=np.int64)
    # Ask for extra neighbours so that ties at the k-th distance can be resolved by index below.
    extra = min(n, k + 1 + 8)
    distances, neighbours = cKDTree(coords).query(coords, k=extra)
    targets, sources = [], []
    for i in range(n):
        d, j = distances[i], neighbours[i]
        keep = j != i
        d, j = d[keep], j[keep]
        order = np.lexsort((j, np.round(d, 9)))[:k]  # by distance, then by index
        d, j = d[order], j[order]
        if max_distance is not None:
            j = j[d <= max_distance + 1e-9]
        targets.append(np.full(len(j), i))
        sources.append(j)
    return np.stack([np.concatenate(targets), np.concatenate(sources)]).astype(np.int64)


def dense_adjacency(edges: np.ndarray, n: int) -> np.ndarray:
    """The published codes' (n, n) 0/1 matrix: ``A[i, j] = 1`` for an edge (i, j)."""
    adjacency = np.zeros((n, n), dtype=np.float32)
    adjacency[edges[0], edges[1]] = 1.0
    return adjacency


def neighbour_table(edges: np.ndarray, n: int, include_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Edges (2, E) -> a padded (n, width) table of the spots each spot aggregates from, and a boolean mask
    of the slots in use (unused slots point at spot 0). Each row keeps the edges' order (nearest first for
    ``knn_graph``), with the spot itself first when ``include_self``. Gathering rows of this table lets a
    graph layer work on all spots at once in memory linear in the number of edges."""
    edges = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    targets, sources = edges
    if include_self:
        targets = np.concatenate([np.arange(n), targets])
        sources = np.concatenate([np.arange(n), sources])
    order = np.argsort(targets, kind="stable")
    targets, sources = targets[order], sources[order]
    degree = np.bincount(targets, minlength=n)
    width = max(int(degree.max(initial=0)), 1)
    slot = np.arange(len(targets)) - np.repeat(np.cumsum(degree) - degree, degree)
    index = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=bool)
    index[targets, slot] = sources
    mask[targets, slot] = True
    return index, mask
