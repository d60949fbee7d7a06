"""Silhouette hint for the number of k-means clusters."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from napari_lemon.analysis import clusters
from napari_lemon.analysis.clusters import best_k, silhouette_hint


def blobs(n_clusters: int, n: int = 400, dim: int = 32, seed: int = 0):
    """Well-separated Gaussian blobs, float16 like stored embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(n_clusters, dim))
    truth = rng.integers(0, n_clusters, n)
    points = centres[truth] + rng.normal(size=(n, dim))
    return points.astype(np.float16), truth


@pytest.mark.parametrize("n_clusters", [3, 5])
def test_the_best_k_is_the_number_of_blobs(n_clusters):
    points, _ = blobs(n_clusters)
    scores = silhouette_hint(points, ks=range(2, 9), sample=300)
    assert list(scores) == list(range(2, 9))
    assert best_k(scores) == n_clusters
    assert all(-1 <= s <= 1 for s in scores.values())


def test_scores_are_sklearns_silhouette_of_kmeans_on_the_sample():
    points, _ = blobs(4, n=150)
    scores = silhouette_hint(points, ks=[3], sample=1000, seed=2)  # all rows

    x = points.astype(np.float32)
    labels = KMeans(n_clusters=3, n_init=1, random_state=2).fit_predict(x)
    assert scores[3] == pytest.approx(silhouette_score(x, labels), abs=1e-5)


def test_scores_are_taken_in_the_principal_components_of_the_sample():
    from sklearn.decomposition import PCA

    points, _ = blobs(4, n=150, dim=80)
    scores = silhouette_hint(points, ks=[3, 4], sample=1000, n_pcs=5)

    x = PCA(5, svd_solver="covariance_eigh").fit_transform(points.astype(np.float32))
    for k in (3, 4):
        labels = KMeans(n_clusters=k, n_init=1, random_state=0).fit_predict(x)
        assert scores[k] == pytest.approx(silhouette_score(x, labels), abs=1e-5)
    raw = silhouette_hint(points, ks=[3, 4], sample=1000, n_pcs=None)
    assert raw != scores


def test_a_large_sample_scores_without_precomputed_distances(monkeypatch):
    points, _ = blobs(3, n=200)
    expected = silhouette_hint(points, ks=[2, 3, 4], sample=200)
    monkeypatch.setattr(clusters, "PRECOMPUTED_MAX", 50)
    scores = silhouette_hint(points, ks=[2, 3, 4], sample=200)
    for k in expected:
        assert scores[k] == pytest.approx(expected[k], abs=1e-5)


def test_the_hint_is_reproducible_and_follows_the_seed():
    points, _ = blobs(4, n=2000)
    a = silhouette_hint(points, ks=range(2, 6), sample=200, seed=1)
    b = silhouette_hint(points, ks=range(2, 6), sample=200, seed=1)
    c = silhouette_hint(points, ks=range(2, 6), sample=200, seed=2)
    assert a == b and a != c


def test_progress_is_reported_per_k():
    points, _ = blobs(3, n=100)
    calls = []
    silhouette_hint(points, ks=[4, 2, 3], progress=lambda *a: calls.append(a))
    assert [c[1:] for c in calls] == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert calls[0][0] == "silhouette for k=2"


def test_identical_embeddings_score_nan_and_have_no_best_k():
    with pytest.warns(Warning):  # scikit-learn: fewer distinct points than k
        scores = silhouette_hint(np.ones((20, 4), np.float16), ks=[2, 3])
    assert all(np.isnan(s) for s in scores.values())
    with pytest.raises(ValueError, match="no finite silhouette score"):
        best_k(scores)


def test_best_k_takes_the_highest_score_and_the_smaller_k_on_a_tie():
    assert best_k({2: 0.1, 3: 0.4, 4: 0.4, 5: float("nan"), 6: 0.2}) == 3
    assert best_k({7: 0.5}) == 7
    with pytest.raises(ValueError, match=r"scores=\{\} hold no finite"):
        best_k({})


@pytest.mark.parametrize("ks", [[], [1, 2], [2, 2.5], range(0, 3)])
def test_bad_ks_are_refused(ks):
    with pytest.raises(ValueError, match=r"ks=.* must hold whole numbers of clusters"):
        silhouette_hint(np.ones((50, 4)), ks=ks)


def test_too_few_nuclei_or_too_small_a_sample_is_refused():
    points, _ = blobs(3, n=12)
    with pytest.raises(ValueError, match="k up to 12 needs at least 13 nuclei; there"):
        silhouette_hint(points)
    with pytest.raises(ValueError, match="needs at least 6 nuclei; sample is 5"):
        silhouette_hint(points, ks=range(2, 6), sample=5)
    with pytest.raises(ValueError, match="sample=0 must be a whole number"):
        silhouette_hint(points, ks=[2], sample=0)
    with pytest.raises(ValueError, match="n_pcs=0 must be a whole number"):
        silhouette_hint(points, ks=[2], n_pcs=0)
    with pytest.raises(ValueError, match=r"shape \(12,\); expected"):
        silhouette_hint(points[:, 0], ks=[2])
