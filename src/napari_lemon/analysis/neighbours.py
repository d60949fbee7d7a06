"""The nuclei whose embeddings are most like one nucleus's ("more like this").

Exact cosine similarity by brute force: the embeddings are read ``chunk`` rows at
a time, converted to float32 chunk by chunk (a float16 store of a million nuclei
is never copied whole), and dotted with the query. The conversion is the slow
part (numpy casts float16 at about 0.8 billion values a second), so a few threads
share it, each converting a cache-sized block at a time. One similarity per
nucleus is kept (4 bytes a row) and the best ``k`` are found with
``numpy.argpartition``.
At a million 384-d float16 embeddings this takes well under a second on two CPU
cores (see ``benchmarks/explore_speed.py``), so no approximate index is needed.

``embeddings`` may be any array-like of shape (n_nuclei, dim) that can be sliced
by rows: a numpy array, or a zarr or h5py array read lazily.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

CHUNK = 65536  # rows read at once (a lazy array's read size)
PART = 8192  # rows one thread scores
BLOCK = 1024  # rows converted to float32 at once: 1.5 MB at 384-d, stays in cache
WORKERS = min(4, os.cpu_count() or 1)


def nearest_neighbours(
    embeddings, row: int, k: int = 24, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nuclei most similar to nucleus ``row``, most similar first.

    Parameters
    ----------
    embeddings : array-like of shape (n_nuclei, dim), float16 or float32
        One embedding per nucleus; sliced ``chunk`` rows at a time.
    row : int
        Index of the query nucleus; it is never among the results.
    k : int
        Number of neighbours; lowered to ``n_nuclei - 1`` when there are fewer
        other nuclei.
    chunk : int
        Rows converted to float32 at once (bounds the memory used).

    Returns
    -------
    rows : ndarray of shape (k,), int64
        Row indices, most similar first (ties in row order).
    similarity : ndarray of shape (k,), float32
        Cosine similarity of each to the query, in -1..1; 0 for an all-zero
        embedding.

    Examples
    --------
    >>> points = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    >>> rows, similarity = nearest_neighbours(points, 0, k=2)
    >>> rows.tolist()
    [1, 2]
    """
    # check the request
    n, dim = _shape_of(embeddings)
    row = _check_row(row, n)
    if int(k) != k or k < 1:
        raise ValueError(f"k={k!r} must be a whole number >= 1 of neighbours")
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk={chunk!r} must be a whole number >= 1 of rows")
    k = min(int(k), n - 1)

    # the query, unit length
    query = np.asarray(embeddings[row : row + 1], dtype=np.float32).reshape(dim)
    norm = float(np.linalg.norm(query))
    if not norm > 0:
        raise ValueError(
            f"row={row}: the nucleus's embedding is all zeros (or not finite), so "
            "it is like no other; pick another nucleus"
        )
    query /= norm

    # cosine similarity of every row, chunk by chunk
    similarity = np.empty(n, dtype=np.float32)
    with ThreadPoolExecutor(WORKERS) as pool:
        for start in range(0, n, int(chunk)):
            rows = np.asarray(embeddings[start : start + int(chunk)])
            out = similarity[start : start + len(rows)]
            score = partial(_cosine, rows, query=query, out=out)
            list(pool.map(score, range(0, len(rows), PART)))
    similarity[row] = -np.inf

    # the best k, sorted by similarity then row
    best = np.argpartition(-similarity, k - 1)[:k]
    best = best[np.lexsort((best, -similarity[best]))]
    return best.astype(np.int64), similarity[best]


def _cosine(rows: np.ndarray, start: int, query: np.ndarray, out: np.ndarray):
    """Cosine similarity to ``query`` of ``rows[start : start + PART]``, into ``out``.

    Converts ``BLOCK`` rows at a time into one float32 buffer: numpy's casts and
    BLAS release the GIL, so the threads of a pool run at once.
    """
    buffer = np.empty((BLOCK, rows.shape[1]), dtype=np.float32)
    for first in range(start, min(start + PART, len(rows)), BLOCK):
        block = rows[first : first + BLOCK]
        converted = buffer[: len(block)]
        np.copyto(converted, block, casting="unsafe")

        dots = converted @ query
        norms = np.sqrt(np.einsum("ij,ij->i", converted, converted))
        np.divide(dots, norms, out=dots, where=norms > 0)  # a zero row stays 0
        out[first : first + len(block)] = dots


def _shape_of(embeddings) -> tuple[int, int]:
    """``(n_nuclei, dim)`` of an array-like, refused unless 2-D with >= 2 rows."""
    shape = tuple(getattr(embeddings, "shape", np.shape(embeddings)))
    if len(shape) != 2:
        raise ValueError(f"embeddings have shape {shape}; expected (n_nuclei, dim)")
    if shape[0] < 2:
        raise ValueError(
            f"embeddings have {shape[0]} rows; neighbours need at least 2 nuclei"
        )
    return int(shape[0]), int(shape[1])


def _check_row(row: int, n: int) -> int:
    if isinstance(row, bool) or int(row) != row or not 0 <= row < n:
        raise ValueError(f"row={row!r} out of range for {n} nuclei (0..{n - 1})")
    return int(row)
