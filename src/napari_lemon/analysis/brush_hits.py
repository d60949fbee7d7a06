"""Which nuclei a brush stroke or a click touches, from their centroids alone.

A stroke is a polyline of level-0 ``(x, y)`` pixels with a radius: it touches every
nucleus whose centroid lies within the radius of one of its segments (a capsule
around each segment). A click touches the nearest nucleus within a small distance.

Design: one :class:`scipy.spatial.cKDTree` over the centroids, built once per
nuclei layer (~0.5 s for 1,000,000). A stroke is sampled along its length at half
the radius; the tree returns the nuclei within ``radius + step / 2`` of a sample
(a superset of the capsules: every point of a segment is within ``step / 2`` of a
sample), and the exact point-to-segment distance keeps those truly within the
radius. A stroke over a slide of 1,000,000 nuclei takes a few milliseconds.
"""

from __future__ import annotations

import numpy as np

MAX_SAMPLES = 20_000  # samples along one stroke; longer strokes sample coarser
_CHUNK = 4096  # candidates compared with all segments at once


def _as_xy(values: np.ndarray, what: str) -> np.ndarray:
    xy = np.asarray(values, dtype=np.float64)
    if xy.ndim == 1 and xy.shape == (2,):
        xy = xy[None]
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(
            f"{what} of shape {np.shape(values)}: give level-0 (x, y) pixels as an "
            "array of shape (n, 2)"
        )
    if not np.isfinite(xy).all():
        raise ValueError(f"{what} holds values that are not finite (NaN or inf)")
    return xy


def _check_radius(radius_px: float, what: str = "radius_px") -> float:
    radius = float(radius_px)
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"{what}={radius_px!r}: give a distance >= 0 in pixels")
    return radius


def distance_to_polyline(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest segment of a polyline.

    Parameters
    ----------
    points : ndarray of shape (n, 2), float
    polyline : ndarray of shape (m, 2), float
        Its vertices in order; one vertex is a point, and the distance to it.

    Returns
    -------
    ndarray of shape (n,), float64
    """
    points = _as_xy(points, "points")
    polyline = _as_xy(polyline, "polyline")
    if len(polyline) == 1:
        return np.hypot(*(points - polyline[0]).T)

    # project every point onto every segment, clamped to its ends
    start, direction = polyline[:-1], np.diff(polyline, axis=0)  # (s, 2)
    length2 = np.einsum("ij,ij->i", direction, direction)
    best = np.full(len(points), np.inf)
    for i in range(0, len(points), _CHUNK):
        offset = points[i : i + _CHUNK, None, :] - start[None]  # (c, s, 2)
        along = np.einsum("csk,sk->cs", offset, direction)
        t = np.clip(along / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
        gap = offset - t[..., None] * direction[None]
        best[i : i + _CHUNK] = np.sqrt(np.einsum("csk,csk->cs", gap, gap).min(1))
    return best


def sample_polyline(polyline: np.ndarray, step_px: float) -> np.ndarray:
    """Points along a polyline at most ``step_px`` apart, its vertices included.

    Returns
    -------
    ndarray of shape (k, 2), float64
    """
    polyline = _as_xy(polyline, "polyline")
    if len(polyline) == 1 or step_px <= 0:
        return polyline
    lengths = np.hypot(*np.diff(polyline, axis=0).T)
    pieces = np.maximum(np.ceil(lengths / step_px).astype(np.int64), 1)
    if pieces.sum() > MAX_SAMPLES:  # a very long stroke: fewer, wider samples
        pieces = np.maximum(pieces * MAX_SAMPLES // pieces.sum(), 1)
    t = np.concatenate([np.arange(p) / p for p in pieces])
    segment = np.repeat(np.arange(len(pieces)), pieces)
    points = polyline[segment] + t[:, None] * (
        polyline[segment + 1] - polyline[segment]
    )
    return np.vstack([points, polyline[-1:]])


class BrushIndex:
    """Nuclei by centroid, for brush strokes and clicks.

    Parameters
    ----------
    centroids_xy : ndarray of shape (n_nuclei, 2), float
        Level-0 ``(x, y)`` pixels, row ``i`` for nucleus row ``i``.

    Examples
    --------
    >>> index = BrushIndex(np.array([[0.0, 0.0], [10.0, 0.0], [50.0, 50.0]]))
    >>> index.hits(np.array([[0.0, 2.0], [10.0, 2.0]]), radius_px=3).tolist()
    [0, 1]
    >>> index.nearest((49.0, 50.0), max_px=2)
    2
    """

    def __init__(self, centroids_xy: np.ndarray) -> None:
        from scipy.spatial import cKDTree

        self.centroids = _as_xy(centroids_xy, "centroids_xy")
        self._tree = cKDTree(self.centroids) if len(self.centroids) else None

    def __len__(self) -> int:
        return len(self.centroids)

    def hits(self, polyline_xy: np.ndarray, radius_px: float) -> np.ndarray:
        """Rows of the nuclei within ``radius_px`` of the stroke ``polyline_xy``.

        Parameters
        ----------
        polyline_xy : ndarray of shape (m, 2), float
            The stroke's vertices, level-0 ``(x, y)`` px; one vertex is a dab.
        radius_px : float
            The brush radius in level-0 px.

        Returns
        -------
        ndarray of shape (k,), int64
            Sorted rows.
        """
        polyline = _as_xy(polyline_xy, "polyline_xy")
        radius = _check_radius(radius_px)
        if self._tree is None or len(polyline) == 0:
            return np.empty(0, np.int64)

        # candidates near samples of the stroke, then the exact distance
        samples = sample_polyline(polyline, radius / 2)
        step = _largest_gap(samples)
        found = self._tree.query_ball_point(samples, r=radius + step / 2)
        candidates = np.unique(np.concatenate([np.asarray(f, np.int64) for f in found]))
        if len(candidates) == 0:
            return candidates
        near = distance_to_polyline(self.centroids[candidates], polyline) <= radius
        return candidates[near]

    def nearest(self, xy: tuple[float, float], max_px: float) -> int | None:
        """Row of the nucleus nearest ``xy`` if within ``max_px``, else None."""
        point = _as_xy(xy, "xy")[0]
        limit = _check_radius(max_px, "max_px")
        if self._tree is None:
            return None
        distance, row = self._tree.query(point, distance_upper_bound=limit)
        return None if not np.isfinite(distance) else int(row)


def _largest_gap(samples: np.ndarray) -> float:
    if len(samples) < 2:
        return 0.0
    return float(np.hypot(*np.diff(samples, axis=0).T).max())
