"""Read Aperio ImageScope XML annotations: one polygon per ``Region``.

Used for MoNuSeg ground truth and to import outlines drawn in ImageScope.
Vertices are pixels with ``X`` = column and ``Y`` = row.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ImageScopeAnnotations:
    """Outlines read from one XML file.

    Attributes
    ----------
    polygons : list of ndarray of shape (k, 2), float64
        Vertices ``(x, y)`` in pixels, k >= 3.
    mpp : float or None
        ``MicronsPerPixel`` of the root element, when recorded.
    skipped : int
        Regions with fewer than three vertices, left out.
    """

    polygons: list[np.ndarray]
    mpp: float | None
    skipped: int


def read_imagescope_xml(path: str | Path) -> ImageScopeAnnotations:
    """Parse an ImageScope XML file into polygons.

    Regions with fewer than three vertices cannot outline a nucleus: they are
    skipped, counted and reported with a warning.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable ImageScope XML file: {err}"
        ) from err

    polygons, skipped = [], 0
    for region in root.iter("Region"):
        vertices = [
            (float(v.get("X", "nan")), float(v.get("Y", "nan")))
            for v in region.iter("Vertex")
        ]
        points = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
        if len(points) < 3 or not np.isfinite(points).all():
            skipped += 1
            continue
        polygons.append(points)

    if skipped:
        warnings.warn(
            f"{path.name}: skipped {skipped} regions with fewer than 3 vertices",
            stacklevel=2,
        )
    mpp = root.get("MicronsPerPixel")
    return ImageScopeAnnotations(polygons, float(mpp) if mpp else None, skipped)


def polygon_centroids(polygons: list[np.ndarray]) -> np.ndarray:
    """Area centroids ``(x, y)`` of simple polygons (shoelace formula).

    Returns
    -------
    ndarray of shape (n, 2), float64
    """
    out = np.empty((len(polygons), 2))
    for i, pts in enumerate(polygons):
        x, y = pts[:, 0], pts[:, 1]
        xn, yn = np.roll(x, -1), np.roll(y, -1)
        cross = x * yn - xn * y
        area = cross.sum() / 2
        if abs(area) < 1e-9:  # degenerate: mean of the vertices
            out[i] = pts.mean(axis=0)
        else:
            out[i] = (
                ((x + xn) * cross).sum() / (6 * area),
                ((y + yn) * cross).sum() / (6 * area),
            )
    return out


def rasterise(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance labels of outlines.

    Parameters
    ----------
    polygons : list of ndarray of shape (n_vertices, 2)
        Outlines as ``(x, y)`` pixel vertices.
    shape : (rows, cols)

    Returns
    -------
    ndarray of shape ``shape``, int32
        Outline ``i`` (0-based) is label ``i + 1``; later outlines are drawn over
        earlier ones where they overlap.
    """
    from skimage.draw import polygon

    labels = np.zeros(shape, dtype=np.int32)
    for index, points in enumerate(polygons, start=1):
        rows, cols = polygon(points[:, 1], points[:, 0], shape)
        labels[rows, cols] = index
    return labels
