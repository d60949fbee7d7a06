"""Unsupervised grouping of nuclei by their embeddings.

Each clusterer takes ``embeddings`` of shape (n_nuclei, dim) and returns one
integer label per nucleus, ``0 .. n_clusters - 1``. ``CLUSTERERS`` names them for
the command line and the plugin's dropdown.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)


def cluster_kmeans(
    embeddings: np.ndarray, n_clusters: int = 8, seed: int = 0
) -> np.ndarray:
    """Group nuclei with k-means (scikit-learn, k-means++ initialisation).

    Parameters
    ----------
    embeddings : ndarray of shape (n_nuclei, dim), float
        One embedding per nucleus.
    n_clusters : int
        Number of clusters; lowered to ``n_nuclei`` with a warning when there are
        fewer nuclei.
    seed : int
        Seed of the initialisation: the same inputs and seed give the same labels.

    Returns
    -------
    ndarray of shape (n_nuclei,), int64
        Cluster of each nucleus, from 0 to ``n_clusters - 1``.

    Examples
    --------
    >>> points = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> labels = cluster_kmeans(points, n_clusters=2)
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
    True
    """
    from sklearn.cluster import KMeans

    # check the request
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings have shape {embeddings.shape}; expected (n_nuclei, dim)"
        )
    if int(n_clusters) != n_clusters or n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r} must be a whole number >= 1")

    # nothing, or not enough, to cluster
    n = len(embeddings)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if n < n_clusters:
        warnings.warn(
            f"n_clusters={n_clusters} but only {n} nuclei; using {n} clusters",
            stacklevel=2,
        )
        n_clusters = n

    # fit
    logger.debug("k-means of %d nuclei into %d clusters", n, n_clusters)
    kmeans = KMeans(n_clusters=int(n_clusters), random_state=seed, n_init="auto")
    return kmeans.fit_predict(embeddings).astype(np.int64)


CLUSTERERS: dict[str, Callable[..., np.ndarray]] = {"kmeans": cluster_kmeans}
