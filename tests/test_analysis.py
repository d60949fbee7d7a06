"""Clustering of nucleus embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lemon.analysis import CLUSTERERS, cluster_kmeans


def three_blobs(n_per: int = 20, dim: int = 384, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(3, dim))
    truth = np.repeat(np.arange(3), n_per)
    points = centres[truth] + rng.normal(scale=0.1, size=(len(truth), dim))
    return points.astype(np.float32), truth


def test_kmeans_recovers_well_separated_groups():
    points, truth = three_blobs()
    labels = cluster_kmeans(points, n_clusters=3)
    assert labels.shape == (60,) and labels.dtype == np.int64
    # the same partition, whatever the numbering
    pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3


def test_kmeans_is_reproducible_with_a_seed():
    points, _ = three_blobs(seed=1)
    a = cluster_kmeans(points, n_clusters=5, seed=7)
    b = cluster_kmeans(points, n_clusters=5, seed=7)
    np.testing.assert_array_equal(a, b)
    assert set(a.tolist()) == set(range(5))


def test_kmeans_lowers_n_clusters_to_the_number_of_nuclei():
    points = np.random.default_rng(0).normal(size=(3, 8))
    with pytest.warns(UserWarning, match="n_clusters=8 but only 3 nuclei"):
        labels = cluster_kmeans(points, n_clusters=8)
    assert sorted(labels.tolist()) == [0, 1, 2]


def test_kmeans_of_no_nuclei_is_empty():
    labels = cluster_kmeans(np.empty((0, 384), np.float32))
    assert labels.shape == (0,) and labels.dtype == np.int64


@pytest.mark.parametrize("bad", [0, -2, 2.5])
def test_kmeans_refuses_bad_n_clusters(bad):
    with pytest.raises(ValueError, match=f"n_clusters={bad!r}"):
        cluster_kmeans(np.zeros((5, 4)), n_clusters=bad)


def test_kmeans_refuses_one_dimensional_input():
    with pytest.raises(ValueError, match=r"embeddings have shape \(5,\)"):
        cluster_kmeans(np.zeros(5))


def test_clusterers_registry_names_kmeans():
    assert CLUSTERERS["kmeans"] is cluster_kmeans
