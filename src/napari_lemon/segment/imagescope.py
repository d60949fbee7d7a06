"""Read Aperio ImageScope XML annotations: one polygon per ``Region``.

Used for MoNuSeg ground truth and to import outlines drawn in ImageScope.
Vertices are pixels with ``X`` = column and ``Y`` = row. Each ``Annotation`` (a
layer) has a ``Name`` and a ``LineColor`` (a Windows COLORREF, ``0x00BBGGRR``);
a region's class is its ``Text`` when set, else its layer's name.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
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
        Regions with fewer than three vertices (or unreadable ones), left out.
    names : list of str
        The class of each polygon (``""`` when its region and layer are unnamed).
    colours : dict
        Class name -> ``#rrggbb``, from the layers' ``LineColor``.
    """

    polygons: list[np.ndarray]
    mpp: float | None
    skipped: int
    names: list[str] = field(default_factory=list)
    colours: dict[str, str] = field(default_factory=dict)


def read_imagescope_xml(path: str | Path, warn: bool = True) -> ImageScopeAnnotations:
    """Parse an ImageScope XML file into polygons and their classes.

    Regions with fewer than three vertices (or vertices that are not numbers)
    cannot outline a nucleus: they are skipped, counted and, with ``warn``,
    reported with a warning.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable ImageScope XML file: {err}"
        ) from err

    layer_of = {r: a for a in root.iter("Annotation") for r in a.iter("Region")}
    polygons, names, colours, skipped = [], [], {}, 0
    for region in root.iter("Region"):
        points = _vertices(region)
        if len(points) < 3 or not np.isfinite(points).all():
            skipped += 1
            continue
        layer = layer_of.get(region, ET.Element("Annotation"))
        name = (region.get("Text") or "").strip() or (layer.get("Name") or "").strip()
        polygons.append(points)
        names.append(name)
        if name and name not in colours:
            colours[name] = _colorref_hex(layer.get("LineColor"))

    if skipped and warn:
        warnings.warn(
            f"{path.name}: skipped {skipped} regions with fewer than 3 vertices",
            stacklevel=2,
        )
    colours = {k: v for k, v in colours.items() if v is not None}
    mpp = _recorded_mpp(root.get("MicronsPerPixel"), path)
    return ImageScopeAnnotations(polygons, mpp, skipped, names, colours)


def _recorded_mpp(value: str | None, path: Path) -> float | None:
    """The file's ``MicronsPerPixel``; None (with a warning) when it is no size."""
    if not value:
        return None
    try:
        mpp = float(value)
    except ValueError:
        mpp = float("nan")
    if np.isfinite(mpp) and mpp > 0:
        return mpp
    warnings.warn(
        f"{path.name}: MicronsPerPixel={value!r} is not a pixel size and is "
        "ignored; give the image's --mpp",
        stacklevel=3,
    )
    return None


def _vertices(region: ET.Element) -> np.ndarray:
    """The ``(x, y)`` vertices of a region, NaN where a value is not a number."""

    def number(text: str | None) -> float:
        try:
            return float(text)
        except (TypeError, ValueError):
            return float("nan")

    vertices = [(number(v.get("X")), number(v.get("Y"))) for v in region.iter("Vertex")]
    return np.asarray(vertices, dtype=np.float64).reshape(-1, 2)


def _colorref_hex(value: str | None) -> str | None:
    """A Windows COLORREF (``0x00BBGGRR`` as decimal text) as ``#rrggbb``."""
    try:
        colorref = int(value)
    except (TypeError, ValueError):
        return None
    red, green, blue = colorref & 255, (colorref >> 8) & 255, (colorref >> 16) & 255
    return f"#{red:02x}{green:02x}{blue:02x}"


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
