"""Leiden clusters of the nearest-neighbour graph of nucleus embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from napari_lemon.analysis import graph_clusters
from napari_lemon.analysis.graph_clusters import _by_size, cluster_leiden


def blobs(sizes=(200, 150, 100, 60, 40), dim: int = 64, seed: int = 0):
    """Well-separated Gaussian blobs of the given sizes, float16."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(len(sizes), dim))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[truth] + rng.normal(scale=0.5, size=(len(truth), dim))
    order = rng.permutation(len(truth))
    return points[order].astype(np.float16), truth[order]


def test_well_separated_blobs_are_recovered_and_numbered_by_size():
    points, truth = blobs()
    labels = cluster_leiden(points, n_pcs=20)

    assert labels.shape == truth.shape and labels.dtype == np.int64
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)
    # truth 0 is the largest blob, 4 the smallest
    np.testing.assert_array_equal(labels, truth)


def test_the_same_seed_gives_the_same_labels():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(400, 16)).astype(np.float32)  # no clear clusters
    a = cluster_leiden(points, seed=5)
    b = cluster_leiden(points, seed=5)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(np.bincount(a)) <= 0)  # largest first


def test_leiden_leaves_pythons_random_alone_and_restores_igraphs_generator():
    import random

    import igraph

    random.seed(11)
    expected = [random.random() for _ in range(3)]
    random.seed(11)
    cluster_leiden(blobs()[0][:100], n_pcs=10)
    assert [random.random() for _ in range(3)] == expected  # its own generator

    # igraph draws from `random` again: seeding it repeats a random graph
    edges = []
    for _ in range(2):
        random.seed(3)
        edges.append(igraph.Graph.Erdos_Renyi(n=30, p=0.2).get_edgelist())
    assert edges[0] == edges[1]


def test_a_higher_resolution_gives_more_clusters():
    points = np.random.default_rng(4).normal(size=(500, 8)).astype(np.float32)
    coarse = cluster_leiden(points, resolution=0.2)
    fine = cluster_leiden(points, resolution=3.0)
    assert fine.max() > coarse.max() + 2


def test_progress_names_each_stage():
    calls = []
    cluster_leiden(blobs()[0], n_pcs=10, progress=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == [*graph_clusters.STAGES, "done"]
    assert [c[1:] for c in calls] == [(i, 4) for i in range(5)]


@pytest.mark.slow
def test_approximate_neighbours_beyond_exact_max_recover_the_blobs(monkeypatch):
    # compiles pynndescent's numba code on its first call (about 20 s)
    monkeypatch.setattr(graph_clusters, "EXACT_MAX", 100)
    points, truth = blobs()
    labels = cluster_leiden(points, n_pcs=20)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_by_size_numbers_the_largest_group_zero():
    labels = np.array([2, 0, 2, 1, 2, 1, 3])
    np.testing.assert_array_equal(_by_size(labels), [0, 2, 0, 1, 0, 1, 3])


def test_too_few_nuclei_are_refused():
    with pytest.raises(ValueError, match="n_neighbors=15 needs at least 16 nuclei"):
        cluster_leiden(np.ones((15, 4)))


@pytest.mark.parametrize("resolution", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_resolution_is_refused(resolution):
    with pytest.raises(ValueError, match="resolution=.* must be a positive number"):
        cluster_leiden(np.ones((30, 4)), resolution=resolution)


@pytest.mark.parametrize("name, value", [("n_neighbors", 0), ("n_pcs", 2.5)])
def test_bad_neighbours_or_components_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name}={value!r} must be a whole number"):
        cluster_leiden(np.ones((30, 4)), **{name: value})


def test_embeddings_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"shape \(30,\); expected \(n_nuclei, dim\)"):
        cluster_leiden(np.ones(30))
