"""Which nuclei to label next: those the probe is least sure of, not all alike.

Margin sampling with a diversity step (in the spirit of "cluster-margin"
active learning, Citovsky et al., NeurIPS 2021): the unlabelled nuclei with the
smallest margin between the two most probable classes form a pool of
``n * pool_factor``; k-means on their (L2-normalised) embeddings splits the
pool into ``n`` groups and the least sure nucleus of each group is suggested.
Ten near-identical nuclei from one ambiguous patch teach the probe little more
than one; one from each of ten ambiguous kinds teaches it more.

Without a probe yet (``proba=None``) every nucleus is equally unsure and the
suggestions are simply diverse: one per k-means group of a random pool.
"""

from __future__ import annotations

import warnings

import numpy as np


def suggest_next(
    proba: np.ndarray | None,
    embeddings,
    labelled: np.ndarray,
    n: int = 12,
    pool_factor: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """Rows of unlabelled nuclei worth labelling next.

    Parameters
    ----------
    proba : ndarray of shape (n_nuclei, k), float, or None
        Class probabilities from the probe; None before there is one.
    embeddings : array-like of shape (n_nuclei, d), float16 or float32
        Only the rows of the pool are read.
    labelled : ndarray of shape (n_nuclei,), bool
        Nuclei that already have a label; never suggested.
    n : int
        Suggestions wanted (fewer when fewer nuclei are unlabelled).
    pool_factor : int
        The pool holds ``n * pool_factor`` of the least sure nuclei.
    seed : int
        Breaks ties and seeds k-means: the same inputs give the same rows.

    Returns
    -------
    ndarray of shape (<= n,), int64
        Row indices, least sure first.
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    # check the request
    labelled = np.asarray(labelled, dtype=bool).reshape(-1)
    n_nuclei = len(labelled)
    shape = getattr(embeddings, "shape", None) or np.shape(embeddings)
    if len(shape) != 2 or shape[0] != n_nuclei:
        raise ValueError(
            f"embeddings have shape {tuple(shape)} for {n_nuclei} nuclei in "
            "labelled; give one (d,) embedding per nucleus"
        )
    for name, value in (("n", n), ("pool_factor", pool_factor)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r} must be a whole number >= 1")
    uncertainty = _uncertainty(proba, n_nuclei)

    # the least sure unlabelled nuclei, ties in random order
    rng = np.random.default_rng(seed)
    candidates = rng.permutation(np.flatnonzero(~labelled))
    order = np.argsort(-uncertainty[candidates], kind="stable")
    pool = candidates[order[: int(n) * int(pool_factor)]]
    if len(pool) <= n:
        return pool.astype(np.int64)

    # one per k-means group of the pool's embeddings (cosine geometry)
    rows = np.sort(pool)  # sorted for arrays that read faster that way
    vectors = np.asarray(embeddings[rows], dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    with warnings.catch_warnings():  # fewer distinct embeddings than n: topped up
        warnings.simplefilter("ignore", ConvergenceWarning)
        groups = KMeans(int(n), n_init=1, random_state=seed).fit_predict(vectors)
    chosen = [_least_sure(rows[groups == g], uncertainty) for g in np.unique(groups)]
    chosen += [r for r in pool if r not in set(chosen)][: int(n) - len(chosen)]

    # least sure first
    chosen = np.asarray(chosen, dtype=np.int64)
    return chosen[np.argsort(-uncertainty[chosen], kind="stable")]


def _uncertainty(proba: np.ndarray | None, n_nuclei: int) -> np.ndarray:
    """One minus the margin between the two most probable classes, per row."""
    if proba is None:
        return np.zeros(n_nuclei, dtype=np.float32)
    proba = np.asarray(proba, dtype=np.float32)
    if proba.ndim != 2 or len(proba) != n_nuclei or proba.shape[1] < 2:
        raise ValueError(
            f"proba has shape {proba.shape}; expected ({n_nuclei}, k >= 2) class "
            "probabilities, or None before there is a probe"
        )
    top_two = np.partition(proba, -2, axis=1)[:, -2:]
    return 1.0 - (top_two[:, 1] - top_two[:, 0])


def _least_sure(rows: np.ndarray, uncertainty: np.ndarray) -> int:
    return int(rows[np.argmax(uncertainty[rows])])
