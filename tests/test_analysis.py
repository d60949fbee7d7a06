"""Clustering of nucleus embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lemon.analysis import CLUSTERERS, cluster_kmeans, cluster_kmeans_stream


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
    with pytest.warns(UserWarning, match="only 1 nucleus; using 1 cluster$"):
        cluster_kmeans(points[:1], n_clusters=8)


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


# streaming k-means


def chunked(points: np.ndarray, size: int):
    """A callable giving ``points`` in chunks of ``size`` rows, as a store does."""
    return lambda: (points[i : i + size] for i in range(0, len(points), size))


def sorted_blobs(n_per: int = 300, k: int = 5, dim: int = 32, seed: int = 0):
    """Blobs in blocks, as nuclei of one tissue come in neighbouring tiles."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(k, dim))
    truth = np.repeat(np.arange(k), n_per)
    points = centres[truth] + rng.normal(scale=0.5, size=(len(truth), dim))
    return points.astype(np.float32), truth


def test_streaming_kmeans_agrees_with_kmeans_on_separated_blobs():
    from sklearn.metrics import adjusted_rand_score

    points, truth = sorted_blobs()
    streamed = cluster_kmeans_stream(chunked(points, 97), n_clusters=5, n_obs=1500)
    assert streamed.shape == (1500,) and streamed.dtype == np.int64
    assert adjusted_rand_score(truth, streamed) == pytest.approx(1.0)
    whole = cluster_kmeans(points, n_clusters=5)
    assert adjusted_rand_score(whole, streamed) == pytest.approx(1.0)


def test_streaming_kmeans_samples_all_chunks_for_its_first_centres(monkeypatch):
    from sklearn.metrics import adjusted_rand_score

    from napari_lemon.analysis import clusters

    # a sample smaller than one chunk still sees every blob
    monkeypatch.setattr(clusters, "STREAM_SAMPLE", 200)
    points, truth = sorted_blobs(n_per=400, k=4)
    labels = cluster_kmeans_stream(chunked(points, 400), n_clusters=4)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


def test_streaming_kmeans_is_reproducible_and_bounded_by_the_chunk():
    points, _ = three_blobs(n_per=50, seed=2)
    seen = []

    def chunks():
        for i in range(0, len(points), 16):
            seen.append(min(16, len(points) - i))
            yield points[i : i + 16]

    a = cluster_kmeans_stream(chunks, n_clusters=4, seed=3)
    b = cluster_kmeans_stream(chunks, n_clusters=4, seed=3)
    np.testing.assert_array_equal(a, b)
    assert max(seen) == 16
    assert set(a.tolist()) <= set(range(4))


def test_streaming_kmeans_handles_few_and_no_nuclei():
    points = np.random.default_rng(0).normal(size=(3, 8))
    with pytest.warns(UserWarning, match="n_clusters=8 but only 3 nuclei"):
        labels = cluster_kmeans_stream(chunked(points, 2), n_clusters=8)
    assert sorted(labels.tolist()) == [0, 1, 2]
    empty = cluster_kmeans_stream(lambda: iter([]), n_clusters=8)
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_streaming_kmeans_refuses_bad_input():
    points = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="n_clusters=0"):
        cluster_kmeans_stream(chunked(points, 5), n_clusters=0)
    with pytest.raises(ValueError, match="n_passes=0"):
        cluster_kmeans_stream(chunked(points, 5), n_clusters=2, n_passes=0)
    with pytest.raises(ValueError, match="chunks gave 10 rows but n_obs=12"):
        cluster_kmeans_stream(chunked(points, 5), n_clusters=2, n_obs=12)
    with pytest.raises(ValueError, match=r"embeddings have shape \(5,\)"):
        cluster_kmeans_stream(lambda: iter([np.zeros(5)]), n_clusters=2)
