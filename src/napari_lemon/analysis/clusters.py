"""Unsupervised grouping of nuclei by their embeddings.

Each clusterer takes ``embeddings`` of shape (n_nuclei, dim) and returns one
integer label per nucleus, ``0 .. n_clusters - 1``. ``CLUSTERERS`` names them for
the command line and the plugin's dropdown.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..wording import counted

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
    embeddings = _checked(embeddings)
    _check_n_clusters(n_clusters)

    # nothing, or not enough, to cluster
    n = len(embeddings)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    n_clusters = _fit_k(n_clusters, n)

    # fit
    logger.debug("k-means of %d nuclei into %d clusters", n, n_clusters)
    kmeans = KMeans(n_clusters=int(n_clusters), random_state=seed, n_init="auto")
    return kmeans.fit_predict(embeddings).astype(np.int64)


def _checked(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` as float32, refused unless of shape (n_nuclei, dim)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings have shape {embeddings.shape}; expected (n_nuclei, dim)"
        )
    return embeddings


def _check_n_clusters(n_clusters: int) -> None:
    if int(n_clusters) != n_clusters or n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r} must be a whole number >= 1")


def _fit_k(n_clusters: int, n: int) -> int:
    """``n_clusters``, lowered with a warning when there are fewer nuclei."""
    if n < n_clusters:
        warnings.warn(
            f"n_clusters={n_clusters} but only {counted(n, 'nucleus', 'nuclei')}; "
            f"using {counted(n, 'cluster')}",
            stacklevel=3,
        )
        return n
    return int(n_clusters)


# rows drawn from the whole slide to place the first centres; mini-batch size
STREAM_SAMPLE = 20000
STREAM_BATCH = 4096


def cluster_kmeans_stream(
    chunks: Callable[[], Iterable[np.ndarray]],
    n_clusters: int = 8,
    seed: int = 0,
    n_obs: int | None = None,
    n_passes: int = 3,
) -> np.ndarray:
    """Group nuclei with k-means over embeddings that arrive in chunks.

    Memory is bounded by a chunk and a sample of ``STREAM_SAMPLE`` rows, not by
    the number of nuclei: k-means++ on a sample drawn evenly from all chunks
    places the first centres (tiles come in spatial order, so the first chunk
    alone may miss whole tissue types), scikit-learn's ``MiniBatchKMeans``
    refines them with ``partial_fit`` over every chunk for ``n_passes`` passes,
    and a last pass predicts the labels.

    Parameters
    ----------
    chunks : callable returning an iterable of ndarray of shape (m, dim), float
        Called once per pass; must yield the same rows in the same order each
        time (``IncrementalStore.iter_embeddings`` does).
    n_clusters : int
        Number of clusters; lowered to ``n_nuclei`` with a warning when there are
        fewer nuclei.
    seed : int
        The same chunks and seed give the same labels.
    n_obs : int or None
        Number of rows, when known; otherwise counted with one more pass.
    n_passes : int
        Passes of ``partial_fit`` over all chunks.

    Returns
    -------
    ndarray of shape (n_nuclei,), int64
        Cluster of each nucleus, from 0 to ``n_clusters - 1``.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    # check the request; count the rows
    _check_n_clusters(n_clusters)
    if int(n_passes) != n_passes or n_passes < 1:
        raise ValueError(f"n_passes={n_passes!r} must be a whole number >= 1")
    n = sum(len(c) for c in _chunks_of(chunks)) if n_obs is None else int(n_obs)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    n_clusters = _fit_k(n_clusters, n)

    # first centres from an even sample of the whole slide
    rng = np.random.default_rng(seed)
    sample = _even_sample(chunks, n, STREAM_SAMPLE, rng)
    init = KMeans(n_clusters=n_clusters, random_state=seed, n_init="auto").fit(sample)
    kmeans = MiniBatchKMeans(
        n_clusters=n_clusters, init=init.cluster_centers_, n_init=1, random_state=seed
    )
    kmeans.partial_fit(sample)  # the first step needs >= n_clusters rows
    del sample

    # refine over every chunk, in mini-batches
    logger.debug("streaming k-means of %d nuclei into %d clusters", n, n_clusters)
    for _ in range(int(n_passes)):
        for chunk in _chunks_of(chunks):
            for start in range(0, len(chunk), STREAM_BATCH):
                kmeans.partial_fit(chunk[start : start + STREAM_BATCH])

    # label
    labels = [kmeans.predict(c) for c in _chunks_of(chunks) if len(c)]
    labels = np.concatenate(labels).astype(np.int64)
    _check_rows(len(labels), n)
    return labels


def _check_rows(seen: int, n_obs: int) -> None:
    """Refuse chunks that do not yield ``n_obs`` rows."""
    if seen != n_obs:
        raise ValueError(
            f"chunks gave {seen} rows but n_obs={n_obs}; give the number of rows "
            "the chunks yield, or n_obs=None to count them"
        )


def _chunks_of(chunks: Callable[[], Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
    """One pass over ``chunks()`` as checked float32 arrays."""
    for chunk in chunks():
        yield _checked(chunk)


def _even_sample(chunks, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """About ``size`` rows drawn uniformly from all chunks (all rows when fewer)."""
    keep, seen, parts = min(1.0, size / n), 0, []
    for chunk in _chunks_of(chunks):
        parts.append(chunk[rng.random(len(chunk)) < keep] if keep < 1 else chunk)
        seen += len(chunk)
    _check_rows(seen, n)
    return np.concatenate(parts)


# sampled rows above which the pairwise distances are not held at once (400 MB)
PRECOMPUTED_MAX = 10000


def silhouette_hint(
    embeddings,
    ks: Iterable[int] = range(2, 13),
    sample: int = 5000,
    seed: int = 0,
    n_pcs: int | None = 50,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[int, float]:
    """Silhouette score of k-means with each ``k``: a hint for the number of clusters.

    k-means (scikit-learn, one k-means++ start) groups a seeded sample of
    ``sample`` nuclei into each ``k`` clusters, and the mean silhouette of the
    sample (scikit-learn's ``silhouette_score``, euclidean) scores the grouping:
    near 1 for tight, well-separated clusters, near 0 for overlapping ones.

    Both work in the sample's first ``n_pcs`` principal components, as the
    Leiden graph does: k-means runs about ten times faster there than in 384
    dimensions, and the distances change little while the components hold most
    of the variance. The pairwise distances are computed once and shared by
    every ``k``. Only the sample is converted to float32, so a float16 store of
    a whole slide is never copied.

    Parameters
    ----------
    embeddings : array-like of shape (n_nuclei, dim), float16 or float32
        One embedding per nucleus (numpy, or an array read lazily by rows).
    ks : iterable of int
        Numbers of clusters to score, each >= 2.
    sample : int
        Nuclei scored (all of them when there are fewer).
    seed : int
        Seed of the sample, PCA and k-means.
    n_pcs : int or None
        Principal components scored in; None, or at least ``dim``: the
        embeddings themselves.
    progress : callable(stage, done, total), optional
        Called before each ``k`` and once at the end.

    Returns
    -------
    dict of int to float
        Score per ``k`` in ascending ``k``; NaN when k-means found fewer than
        two distinct clusters (e.g. identical embeddings).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> points = np.repeat(np.eye(3) * 10, 30, axis=0) + rng.normal(size=(90, 3))
    >>> best_k(silhouette_hint(points, ks=range(2, 6)))
    3
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import pairwise_distances, silhouette_score

    # check the request
    ks = sorted({int(k) for k in _checked_ks(ks)})
    shape = tuple(getattr(embeddings, "shape", np.shape(embeddings)))
    if len(shape) != 2:
        raise ValueError(f"embeddings have shape {shape}; expected (n_nuclei, dim)")
    if int(sample) != sample or sample < 1:
        raise ValueError(f"sample={sample!r} must be a whole number >= 1 of nuclei")
    if n_pcs is not None and (int(n_pcs) != n_pcs or n_pcs < 1):
        raise ValueError(f"n_pcs={n_pcs!r} must be a whole number >= 1, or None")
    n, need = int(shape[0]), ks[-1] + 1
    if min(n, int(sample)) < need:
        raise ValueError(
            f"silhouette of k up to {ks[-1]} needs at least {need} nuclei; "
            f"{'there are' if n < need else 'sample is'} {min(n, int(sample))}. "
            "Lower the largest k or score more nuclei"
        )

    # a seeded sample, converted alone
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, int(sample)), replace=False))
    points = _checked(np.asarray(embeddings[rows]))
    if n_pcs is not None and n_pcs < min(points.shape):
        pca = PCA(int(n_pcs), svd_solver="covariance_eigh", random_state=seed)
        points = pca.fit_transform(points).astype(np.float32)
    precomputed = len(points) <= PRECOMPUTED_MAX
    distances = pairwise_distances(points) if precomputed else points
    metric = "precomputed" if precomputed else "euclidean"

    # k-means and silhouette per k
    scores: dict[int, float] = {}
    for done, k in enumerate(ks):
        if progress is not None:
            progress(f"silhouette for k={k}", done, len(ks))
        labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(points)
        distinct = len(np.unique(labels))
        scores[k] = (
            float(silhouette_score(distances, labels, metric=metric))
            if 2 <= distinct < len(points)
            else float("nan")
        )
    if progress is not None:
        progress("silhouette", len(ks), len(ks))
    logger.debug("silhouette of %d nuclei: %s", len(points), scores)
    return scores


def _checked_ks(ks: Iterable[int]) -> list[int]:
    """``ks`` as a list, refused when empty or holding anything but whole k >= 2."""
    ks = list(ks)
    bad = [k for k in ks if isinstance(k, bool) or int(k) != k or k < 2]
    if not ks or bad:
        raise ValueError(
            f"ks={ks!r} must hold whole numbers of clusters >= 2 (e.g. range(2, 13))"
        )
    return ks


def best_k(scores: dict[int, float]) -> int:
    """The ``k`` with the highest silhouette score (the smaller ``k`` on a tie).

    Parameters
    ----------
    scores : dict of int to float
        As returned by :func:`silhouette_hint`; NaN scores are ignored.

    Examples
    --------
    >>> best_k({2: 0.21, 3: 0.35, 4: 0.35, 5: float("nan")})
    3
    """
    finite = {int(k): float(v) for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        raise ValueError(
            f"scores={scores!r} hold no finite silhouette score; run "
            "silhouette_hint on nuclei with distinct embeddings"
        )
    return max(sorted(finite), key=lambda k: finite[k])


CLUSTERERS: dict[str, Callable[..., np.ndarray]] = {"kmeans": cluster_kmeans}
