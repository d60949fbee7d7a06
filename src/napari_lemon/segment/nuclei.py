"""Segmented nuclei: a label image and one row of measurements per nucleus.

Every segmenter returns a :class:`Nuclei`. Measurements come from the label image
with whole-image numpy operations (``np.bincount``). Outlines are star-convex
polygons: rays cast from each centroid stop at the nucleus edge, for all nuclei at
once (the representation of StarDist: Schmidt et al., MICCAI 2018). A nucleus whose
centroid falls outside it (a crescent) is traced with marching squares instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours

N_RAYS = 32  # vertices per outline
CHUNK = 512  # nuclei whose rays are cast at once: bounds memory to ~30 MB


@dataclass
class Nuclei:
    """Nuclei found in one image.

    Attributes
    ----------
    labels : ndarray of shape (rows, cols), int32
        Instance labels at the input image's resolution; 0 is background.
    label_ids : ndarray of shape (n,), int32
        Label value of each nucleus.
    centroids_xy : ndarray of shape (n, 2), float64
        Centres of mass ``(x, y)`` = ``(col, row)`` in input pixels.
    area_um2 : ndarray of shape (n,), float64
        Areas in square microns.
    outlines : list of ndarray of shape (k, 2), float64
        One polygon per nucleus, vertices ``(x, y)`` in input pixels, k >= 3.
    """

    labels: np.ndarray
    label_ids: np.ndarray
    centroids_xy: np.ndarray
    area_um2: np.ndarray
    outlines: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.label_ids)

    def __repr__(self) -> str:
        rows, cols = self.labels.shape
        return f"Nuclei(n={len(self)}, image={cols}x{rows} px)"

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Nuclei:
        """No nuclei in an image of ``shape`` (rows, cols, ...)."""
        return cls(
            labels=np.zeros(shape[:2], dtype=np.int32),
            label_ids=np.empty(0, dtype=np.int32),
            centroids_xy=np.empty((0, 2), dtype=np.float64),
            area_um2=np.empty(0, dtype=np.float64),
            outlines=[],
        )


MPP_RANGE = (0.05, 2.0)  # scales at which nuclei (5-15 um) can be segmented


def check_mpp(mpp: float) -> float:
    """``mpp`` if it is a plausible pixel size for segmenting nuclei, else an
    error that says what to check (a wrong mpp would resample the image by
    the same wrong factor: far too large, or to a few pixels)."""
    if not isinstance(mpp, (int, float)) or not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(
            f"mpp={mpp!r} must be a positive number of microns per pixel "
            "(e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    low, high = MPP_RANGE
    if not low <= mpp <= high:
        raise ValueError(
            f"mpp={mpp:g} is outside {low:g}-{high:g} um/px, the scales at which "
            "nuclei can be segmented; check the pixel size (0.25 for 40x, 0.5 for "
            "20x, 1 for 10x)"
        )
    return float(mpp)


def label_centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels present, their centres of mass and pixel counts.

    Parameters
    ----------
    labels : ndarray of shape (rows, cols), int
        Instance labels, 0 = background.

    Returns
    -------
    label_ids : ndarray of shape (n,), int32
    centroids_xy : ndarray of shape (n, 2), float64
        ``(x, y)`` = ``(col, row)`` in pixels of ``labels``.
    counts : ndarray of shape (n,), int64
    """
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    if len(inside) == 0:
        return np.empty(0, np.int32), np.empty((0, 2)), np.empty(0, np.int64)

    # pixel counts and coordinate sums per label, over foreground pixels only
    ids = flat[inside]
    size = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=size)
    row_sum = np.bincount(ids, weights=inside // labels.shape[1], minlength=size)
    col_sum = np.bincount(ids, weights=inside % labels.shape[1], minlength=size)

    label_ids = np.flatnonzero(counts[1:]).astype(np.int32) + 1
    n = counts[label_ids]
    centroids = np.column_stack([col_sum[label_ids] / n, row_sum[label_ids] / n])
    return label_ids, centroids, n


def nuclei_from_labels(
    labels: np.ndarray,
    mpp: float,
    outlines: list[np.ndarray] | None = None,
) -> Nuclei:
    """Measure every nucleus of a label image.

    Parameters
    ----------
    labels : ndarray of shape (rows, cols), int
        Instance labels, 0 = background; need not be sequential.
    mpp : float
        Microns per pixel of ``labels``.
    outlines : list of ndarray, optional
        Polygons already traced (one per label, in increasing label order); traced
        from ``labels`` when not given.

    Returns
    -------
    Nuclei
    """
    labels = np.asarray(labels, dtype=np.int32)
    label_ids, centroids, counts = label_centroids(labels)
    if len(label_ids) == 0:
        return Nuclei.empty(labels.shape)
    if outlines is None:
        outlines = star_outlines(labels, label_ids, centroids)
    area = counts * float(mpp) ** 2
    return Nuclei(labels, label_ids, centroids, area.astype(np.float64), outlines)


def star_outlines(
    labels: np.ndarray,
    label_ids: np.ndarray,
    centroids_xy: np.ndarray,
    n_rays: int = N_RAYS,
    scale: float = 1.0,
) -> list[np.ndarray]:
    """Outline each label by ``n_rays`` rays cast from its centroid to its edge.

    Parameters
    ----------
    labels : ndarray of shape (rows, cols), int
    label_ids : ndarray of shape (n,), int
        Labels to outline, each present in ``labels``.
    centroids_xy : ndarray of shape (n, 2), float
        Their centroids ``(x, y)`` in pixels of ``labels``.
    n_rays : int
        Vertices per polygon, at equal angles.
    scale : float
        Output pixels per pixel of ``labels`` (> 1 when ``labels`` is a
        downsampled version of the image that the outlines refer to).

    Returns
    -------
    list of ndarray of shape (n_rays, 2), float64
        Vertices ``(x, y)`` in output pixels, by angle from +x towards +y
        (clockwise on screen, where y points down); ``(k, 2)``, traced, for a
        nucleus whose centroid lies outside it.
    """
    angles = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    directions = np.column_stack([np.cos(angles), np.sin(angles)])
    every_box = ndimage.find_objects(labels)
    boxes = [every_box[i - 1] for i in label_ids]
    steps = np.arange(0.5, _reach(boxes, centroids_xy) + 1.0, 0.5)

    # cast rays chunk by chunk, each in a window wide enough to hold its rays
    border = int(np.ceil(steps[-1])) + 1
    radii = np.empty((len(label_ids), n_rays))
    for start in range(0, len(label_ids), CHUNK):
        chunk = slice(start, start + CHUNK)
        window, origin = _window(labels, centroids_xy[chunk], border)
        centres = (centroids_xy[chunk] - origin).astype(np.float32)
        radii[chunk] = _cast(window, label_ids[chunk], centres, directions, steps)

    # vertices, rescaled; crescents traced by marching squares
    vertices = centroids_xy[:, None, :] + radii[..., None] * directions[None]
    outlines = list((vertices + 0.5) * scale - 0.5)
    for i in np.flatnonzero(_centroid_outside(labels, label_ids, centroids_xy)):
        outlines[i] = (_contour(labels, label_ids[i], boxes[i]) + 0.5) * scale - 0.5
    return outlines


def _window(labels, centroids_xy, border) -> tuple[np.ndarray, np.ndarray]:
    """The labels around some centroids, zero beyond the image edge.

    Returns the window and the ``(x, y)`` of its top-left pixel in ``labels``.
    """
    lo = np.floor(centroids_xy.min(axis=0)).astype(int) - border
    hi = np.ceil(centroids_xy.max(axis=0)).astype(int) + border + 1
    window = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), dtype=labels.dtype)

    # copy the part inside the image
    r0, c0 = max(lo[1], 0), max(lo[0], 0)
    r1, c1 = min(hi[1], labels.shape[0]), min(hi[0], labels.shape[1])
    window[r0 - lo[1] : r1 - lo[1], c0 - lo[0] : c1 - lo[0]] = labels[r0:r1, c0:c1]
    return window, lo


def _cast(padded, label_ids, centres, directions, steps) -> np.ndarray:
    """Distance along each ray to the label's edge, (n, n_rays) float64.

    ``padded`` has a background border wider than the longest ray around every
    centre; ``centres`` are float32 ``(x, y)`` in its pixels.
    """
    # (n, n_rays, n_steps) samples at the nearest pixel
    reach = (directions[:, None, :] * steps[None, :, None]).astype(np.float32)
    cols = np.rint(centres[:, 0, None, None] + reach[None, ..., 0]).astype(np.intp)
    rows = np.rint(centres[:, 1, None, None] + reach[None, ..., 1]).astype(np.intp)
    inside = padded.ravel()[rows * padded.shape[1] + cols] == label_ids[:, None, None]

    # the edge lies half-way between the last sample inside and the first outside
    first_out = np.where(inside.all(axis=2), len(steps), np.argmin(inside, axis=2))
    radii = np.concatenate([[0.0], steps, [steps[-1] + 0.5]])
    return (radii[first_out] + radii[first_out + 1]) / 2


def _reach(boxes: list[tuple[slice, slice]], centroids_xy: np.ndarray) -> float:
    """Largest distance from a centroid to a corner of its bounding box."""
    corners = np.array(
        [(rows.start, rows.stop, cols.start, cols.stop) for rows, cols in boxes],
        dtype=np.float64,
    )
    x, y = centroids_xy[:, 0], centroids_xy[:, 1]
    dy = np.maximum(y - corners[:, 0], corners[:, 1] - y)
    dx = np.maximum(x - corners[:, 2], corners[:, 3] - x)
    return float(np.hypot(dx, dy).max())


def _centroid_outside(labels, label_ids, centroids_xy) -> np.ndarray:
    """Whether each centroid's nearest pixel belongs to another label (bool, (n,))."""
    cols = np.rint(centroids_xy[:, 0]).astype(np.intp)
    rows = np.rint(centroids_xy[:, 1]).astype(np.intp)
    return labels[rows, cols] != label_ids


def _contour(labels: np.ndarray, label: int, box: tuple[slice, slice]) -> np.ndarray:
    """The longest marching-squares contour of one label, ``(k, 2)`` ``(x, y)``."""
    rows, cols = box
    crop = np.pad(labels[rows, cols] == label, 1)
    contour = max(find_contours(crop, 0.5), key=len)[:-1]
    return contour[:, ::-1] + (cols.start - 1, rows.start - 1)
