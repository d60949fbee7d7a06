"""A 2-D map of nuclei by morphology, its thumbnail grid and lasso selections.

:func:`embed_2d` lays a seeded sample of nuclei out in two dimensions with
UMAP (umap-learn; McInnes, Healy & Melville 2018, arXiv:1802.03426): PCA to 50
components first (scikit-learn), then UMAP with euclidean distances and 15
neighbours, the neighbour graph :func:`.graph_clusters.cluster_leiden` clusters,
so nearby nuclei on the map tend to share a cluster. A sample (20,000 by
default) keeps the map to seconds; its ``rows`` say which nuclei it holds.

:func:`thumbnail_grid` cuts the map into square cells and picks, in every
occupied cell, the nucleus nearest the cell centre: drawn as thumbnails at their
cells, they show how morphology changes across the map (the LEMON paper's
Figure 4). :func:`rows_in_polygon` finds the points inside a lasso drawn on the
map.

The first UMAP of a process compiles umap-learn's numba code (about 10 s; 20 s
more from 4,096 nuclei, where UMAP switches to approximate neighbours).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .clusters import _checked
from .graph_clusters import _pca
from .openmp_order import torch_before_numba

logger = logging.getLogger(__name__)

METHODS = ("umap",)
N_NEIGHBORS = 15
MIN_DIST = 0.1
N_PCS = 50

Progress = Callable[[str, int, int], None]


@dataclass
class MorphologyMap:
    """Map coordinates of a sample of nuclei.

    Attributes
    ----------
    rows : ndarray of shape (m,), int64
        Rows (nuclei) of the embeddings on the map, ascending.
    xy : ndarray of shape (m, 2), float32
        Map coordinates of each, in the map's own units.
    method : str
        How the map was made (``"umap"``).
    """

    rows: np.ndarray
    xy: np.ndarray
    method: str


def embed_2d(
    embeddings,
    method: str = "umap",
    sample: int | None = 20000,
    seed: int = 0,
    progress: Progress | None = None,
) -> MorphologyMap:
    """Lay a seeded sample of nuclei out on a 2-D map of their embeddings.

    Parameters
    ----------
    embeddings : array-like of shape (n_nuclei, dim), float16 or float32
        One embedding per nucleus (numpy, or an array read lazily by rows); only
        the sample is converted to float32.
    method : {"umap"}
        The layout. t-SNE (openTSNE) is not available.
    sample : int or None
        Nuclei mapped, drawn at random; all of them when None or when there are
        fewer.
    seed : int
        Seed of the sample, PCA and UMAP: the same inputs give the same map.
    progress : callable(stage, done, total), optional
        Called before each stage (sample, PCA, layout) and at the end.

    Returns
    -------
    MorphologyMap
    """
    # check the request
    _check_method(method)
    shape = tuple(getattr(embeddings, "shape", np.shape(embeddings)))
    if len(shape) != 2:
        raise ValueError(f"embeddings have shape {shape}; expected (n_nuclei, dim)")
    n = int(shape[0])
    if sample is not None and (int(sample) != sample or sample < 1):
        raise ValueError(f"sample={sample!r} must be a whole number >= 1, or None")
    size = n if sample is None else min(n, int(sample))
    if size < N_NEIGHBORS + 1:
        raise ValueError(
            f"a {method} map needs at least {N_NEIGHBORS + 1} nuclei; "
            f"{'there are' if size == n else 'sample is'} {size}"
        )
    report = progress or (lambda stage, done, total: None)

    # a seeded sample, converted alone
    report("sample", 0, 3)
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if size == n else np.sort(rng.choice(n, size, replace=False))
    points = _checked(np.asarray(embeddings[rows]))

    # PCA, then the layout
    report("PCA", 1, 3)
    points = _pca(points, N_PCS, seed)
    report(method, 2, 3)
    xy = _umap(points, seed)
    report("done", 3, 3)
    logger.debug("%s map of %d of %d nuclei", method, size, n)
    return MorphologyMap(rows=rows.astype(np.int64), xy=xy, method=method)


def _check_method(method: str) -> None:
    if method == "tsne":
        raise ValueError(
            "method='tsne' needs openTSNE, which is not installed; use method='umap'"
        )
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")


def _umap(points: np.ndarray, seed: int) -> np.ndarray:
    """UMAP coordinates of ``points``, float32 (n, 2)."""
    torch_before_numba()
    import umap

    layout = umap.UMAP(
        n_neighbors=N_NEIGHBORS, min_dist=MIN_DIST, random_state=seed, n_components=2
    )
    with warnings.catch_warnings():
        # NOTE: a seed makes umap-learn run on one thread; it says so each time
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        return layout.fit_transform(points).astype(np.float32)


def thumbnail_grid(xy: np.ndarray, n_cells: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One representative point per occupied cell of a square grid over a map.

    The cells are squares, ``n_cells`` along the longer side of the points'
    bounding box (fewer along the shorter side, centred on it); in each cell
    holding points, the one nearest the cell centre represents it (ties: the
    lower row). Points that are not finite are ignored.

    Parameters
    ----------
    xy : ndarray of shape (n, 2), float
        Map coordinates.
    n_cells : int
        Cells along the longer side.

    Returns
    -------
    rows : ndarray of shape (m,), int64
        Row of ``xy`` representing each occupied cell, cells ordered by y, then x.
    boxes : ndarray of shape (m, 4), float64
        The cells as ``(x0, y0, x1, y1)`` in map units.

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [0.4, 0.5], [1.0, 1.0], [0.9, 0.1]])
    >>> rows, boxes = thumbnail_grid(xy, n_cells=2)
    >>> rows.tolist(), boxes[0].tolist()
    ([0, 3, 1, 2], [0.0, 0.0, 0.5, 0.5])
    """
    # check the request
    xy = _checked_xy(xy)
    if isinstance(n_cells, bool) or int(n_cells) != n_cells or n_cells < 1:
        raise ValueError(f"n_cells={n_cells!r} must be a whole number >= 1")
    finite = np.flatnonzero(np.isfinite(xy).all(axis=1))
    if len(finite) == 0:
        return np.empty(0, np.int64), np.empty((0, 4))
    points = xy[finite]

    # square cells over the bounding box, the shorter side centred
    low, high = points.min(axis=0), points.max(axis=0)
    side = float((high - low).max()) / int(n_cells) or 1.0  # all points alike
    counts = np.maximum(1, np.ceil((high - low) / side - 1e-9)).astype(np.int64)
    origin = (low + high) / 2 - counts * side / 2
    cell = np.clip(((points - origin) // side).astype(np.int64), 0, counts - 1)

    # per occupied cell, the point nearest its centre
    cell_id = cell[:, 1] * counts[0] + cell[:, 0]
    distance = ((points - origin - (cell + 0.5) * side) ** 2).sum(axis=1)
    order = np.lexsort((distance, cell_id))
    _, first = np.unique(cell_id[order], return_index=True)
    chosen = order[first]

    corners = origin + cell[chosen] * side
    boxes = np.column_stack([corners, corners + side])
    return finite[chosen].astype(np.int64), boxes


def rows_in_polygon(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Rows of the points inside a polygon (a lasso drawn on the map).

    Parameters
    ----------
    xy : ndarray of shape (n, 2), float
        Map coordinates; points that are not finite are never inside.
    polygon : ndarray of shape (k, 2), float
        Vertices in map units, k >= 3; closed implicitly; may cross itself
        (inside by the even-odd rule of matplotlib's ``Path``).

    Returns
    -------
    ndarray of shape (m,), int64
        Ascending rows.

    Examples
    --------
    >>> xy = np.array([[0.5, 0.5], [2.0, 2.0], [0.1, 0.9]])
    >>> rows_in_polygon(xy, [(0, 0), (1, 0), (1, 1), (0, 1)]).tolist()
    [0, 2]
    """
    from matplotlib.path import Path

    xy = _checked_xy(xy)
    polygon = np.asarray(polygon, dtype=np.float64)
    if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
        raise ValueError(
            f"polygon has shape {polygon.shape}; expected (k, 2) vertices, k >= 3"
        )
    if not np.isfinite(polygon).all():
        raise ValueError("polygon has vertices that are not finite numbers")
    if len(xy) == 0:
        return np.empty(0, np.int64)

    finite = np.isfinite(xy).all(axis=1)
    inside = np.zeros(len(xy), dtype=bool)
    inside[finite] = Path(polygon).contains_points(xy[finite])
    return np.flatnonzero(inside).astype(np.int64)


def _checked_xy(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.size == 0:
        return xy.reshape(0, 2)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy has shape {xy.shape}; expected (n, 2) map coordinates")
    return xy
