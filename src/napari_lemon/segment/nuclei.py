"""Segmented nuclei: a label image and one row of measurements per nucleus.

Every segmenter returns a :class:`Nuclei`. Measurements come from the label image
with whole-image numpy operations (``np.bincount``); only the outlines are traced
nucleus by nucleus, on the small bounding box of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours


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
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    if len(inside) == 0:
        return Nuclei.empty(labels.shape)

    # pixel counts and coordinate sums per label, over foreground pixels only
    ids = flat[inside]
    size = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=size)
    row_sum = np.bincount(ids, weights=inside // labels.shape[1], minlength=size)
    col_sum = np.bincount(ids, weights=inside % labels.shape[1], minlength=size)

    # one row per label present
    label_ids = np.flatnonzero(counts).astype(np.int32)
    label_ids = label_ids[label_ids > 0]
    n = counts[label_ids]
    centroids = np.column_stack([col_sum[label_ids] / n, row_sum[label_ids] / n])
    if outlines is None:
        outlines = trace_outlines(labels, label_ids)
    return Nuclei(labels, label_ids, centroids, n * float(mpp) ** 2, outlines)


def trace_outlines(
    labels: np.ndarray,
    label_ids: np.ndarray,
    scale: float = 1.0,
    tolerance: float = 0.5,
) -> list[np.ndarray]:
    """Outline each label as a polygon, simplified to ``tolerance`` pixels.

    Parameters
    ----------
    labels : ndarray of shape (rows, cols), int
    label_ids : ndarray of shape (n,), int
        Labels to trace, each present in ``labels``.
    scale : float
        Pixels of the output per pixel of ``labels`` (> 1 when ``labels`` is a
        downsampled version of the image that the outlines refer to).
    tolerance : float
        Largest distance, in pixels of ``labels``, that simplification may move
        the outline (Douglas-Peucker).

    Returns
    -------
    list of ndarray of shape (k, 2), float64
        Vertices ``(x, y)``, not repeating the first vertex at the end, k >= 3.
    """
    boxes = ndimage.find_objects(labels)
    outlines = []
    for label in label_ids:
        rows, cols = boxes[label - 1]
        crop = np.pad(labels[rows, cols] == label, 1)
        contour = max(find_contours(crop, 0.5), key=len)
        contour = approximate_polygon(contour, tolerance)[:-1]
        if len(contour) < 3:  # a sliver: keep the unsimplified contour
            contour = max(find_contours(crop, 0.5), key=len)[:-1]

        # (row, col) in the padded crop -> (x, y) in output pixels
        y = (contour[:, 0] + rows.start - 1 + 0.5) * scale - 0.5
        x = (contour[:, 1] + cols.start - 1 + 0.5) * scale - 0.5
        outlines.append(np.column_stack([x, y]))
    return outlines
