"""Spot k-NN graphs: the published rule (each spot's k nearest others, optional distance pruning)."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from bench.nn.graph import dense_adjacency, knn_graph


def _reference_adjacency(coords, k, max_distance=None):
    """Hist2ST's construction as a dense matrix, written directly: sort each row's distances (ties by
    index), skip the spot itself, keep the k nearest, drop those beyond max_distance."""
    d = cdist(coords, coords)
    adjacency = np.zeros_like(d)
    for i in range(len(coords)):
        order = [j for j in np.lexsort((np.arange(len(coords)), d[i])) if j != i][:k]
        for j in order:
            if max_distance is None or d[i, j] <= max_distance:
                adjacency[i, j] = 1
    return adjacency


def test_grid_corner_and_centre_neighbours():
    coords = np.array([(x, y) for y in range(3) for x in range(3)])  # index = 3*y + x
    edges = knn_graph(coords, k=4)
    neighbours = {i: sorted(edges[1][edges[0] == i].tolist()) for i in range(9)}
    assert neighbours[4] == [1, 3, 5, 7]  # the centre: its 4 direct neighbours
    # Corner (0,0): two at distance 1, the diagonal at √2, then (2,0) and (0,2) tie at 2: the lower index wins.
    assert neighbours[0] == [1, 2, 3, 4]
    assert not (edges[0] == edges[1]).any(), "no self loops"


def test_pruning_drops_long_edges_and_can_isolate_a_spot():
    coords = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [10, 10]])
    edges = knn_graph(coords, k=4, max_distance=2)
    lengths = np.linalg.norm(coords[edges[0]] - coords[edges[1]], axis=1)
    assert lengths.max() <= 2
    assert not (edges[0] == 4).any(), "the far spot has no neighbour within 2"
    assert (edges[0] == 0).sum() == 3
    unpruned = knn_graph(coords, k=4)
    assert (unpruned[0] == 4).sum() == 4


@pytest.mark.parametrize("max_distance", [None, 2.0])
def test_matches_the_dense_reference_on_random_and_tied_coordinates(max_distance):
    rng = np.random.default_rng(3)
    for coords in (rng.integers(0, 12, size=(60, 2)).astype(float), rng.normal(size=(80, 2)) * 3):
        coords = np.unique(coords, axis=0)
        got = dense_adjacency(knn_graph(coords, 4, max_distance), len(coords))
        assert np.array_equal(got, _reference_adjacency(coords, 4, max_distance))


def test_tiny_and_bad_inputs():
    assert knn_graph(np.zeros((1, 2)), 4).shape == (2, 0)
    assert knn_graph(np.array([[0, 0], [3, 4]]), 4).tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="non-empty"):
        knn_graph(np.zeros((0, 2)), 4)


def test_real_her2st_grid(her2st):
    """On the ST array, the 'Grid' rule (k = 4, pruned at 2) keeps most spots' 4 direct neighbours."""
    obs = her2st["B4"].counts.obs
    coords = obs[["array_x", "array_y"]].to_numpy(float)
    edges = knn_graph(coords, 4, max_distance=2)
    degree = np.bincount(edges[0], minlength=len(coords))
    assert degree.max() <= 4
    assert (degree == 4).mean() > 0.8
    assert np.linalg.norm(coords[edges[0]] - coords[edges[1]], axis=1).max() <= 2
