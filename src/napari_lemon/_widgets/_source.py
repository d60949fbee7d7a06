"""What the analysis panel analyses: the slide behind an image layer, and a region.

A layer opened by the napari-lemon reader names its file in its metadata and is
analysed from that file. Any other 2-D RGB layer is written once to a temporary
tiled TIFF with its pixel size, and that file is analysed: the pipeline always reads
a file through :func:`napari_lemon.slide.open_slide`.

Regions are level-0 ``(x, y, width, height)`` of the layer's finest level, which are
the level-0 pixels of the slide file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._reader import MPP_KEY, SLIDE_PATH_KEY

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Shapes

Region = tuple[int, int, int, int]
TIFF_TILE = 256
SNAP_PX = 1e-3  # float32 shapes and micron round trips are off by ~1e-5 px


def layer_mpp(layer: Image) -> float | None:
    """Microns per pixel of the layer's finest level, when the layer knows it.

    From ``metadata["mpp"]`` (set by the reader), else from a layer scale given in
    units of length (e.g. micrometre); None for a layer in pixels.
    """
    mpp = layer.metadata.get(MPP_KEY)
    if mpp is not None:
        return float(mpp)

    # a physical scale: convert its unit to microns
    unit = layer.units[-1]
    if unit.dimensionality != {"[length]": 1}:
        return None
    return float(layer.scale[-1] * (1 * unit).to("micrometer").magnitude)


def image_layers(viewer: napari.viewer.Viewer) -> list[tuple[str, Image]]:
    """``(name, layer)`` of the 2-D RGB images a panel may analyse or import onto.

    LEMON's own raster of dots and outlines (:mod:`._nuclei_display`) is an RGB
    image too; it is left out.
    """
    from napari.layers import Image

    from ._results import OUTLINES_OF_KEY

    return [
        (layer.name, layer)
        for layer in viewer.layers
        if isinstance(layer, Image)
        and layer.rgb
        and layer.ndim == 2
        and OUTLINES_OF_KEY not in layer.metadata
    ]


def level0_shape(layer: Image) -> tuple[int, int]:
    """``(rows, cols)`` of the layer's finest level."""
    data = layer.data[0] if layer.multiscale else layer.data
    return int(data.shape[0]), int(data.shape[1])


def slide_path_of(layer: Image) -> Path | None:
    """The slide file a reader layer came from, or None for other layers."""
    path = layer.metadata.get(SLIDE_PATH_KEY)
    return Path(path) if path else None


def write_layer_tiff(data: Any, mpp: float, path: str | Path) -> Path:
    """Write a 2-D RGB(A) layer array to a tiled TIFF that records ``mpp``.

    Parameters
    ----------
    data : array-like of shape (rows, cols, 3 or 4), uint8
        The layer's pixels (an alpha channel is dropped).
    mpp : float
        Microns per pixel, stored as the TIFF resolution in pixels per centimetre.
    path : str or Path
        The ``.tif`` file to write.
    """
    import tifffile

    pixels = np.asarray(data)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint8:
        raise ValueError(
            f"layer data of shape {pixels.shape} and dtype {pixels.dtype} is not an "
            "RGB image: choose a 2-D RGB uint8 image layer"
        )
    per_cm = 1e4 / mpp
    tifffile.imwrite(
        path,
        pixels[..., :3],
        photometric="rgb",
        tile=(TIFF_TILE, TIFF_TILE),
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
    )
    return Path(path)


def clip_region(corners_rc: np.ndarray, shape: tuple[int, int]) -> Region:
    """The integer box around ``(row, col)`` points, clipped to an image of ``shape``.

    Parameters
    ----------
    corners_rc : ndarray of shape (n, 2), float
        Points in level-0 ``(row, col)``.
    shape : (int, int)
        Level-0 ``(rows, cols)`` of the image.

    Returns
    -------
    (x, y, width, height)
        Level-0 pixels.
    """
    # round outwards, but not past an integer missed by float error (e.g. 999.99999)
    low = np.floor(corners_rc.min(axis=0) + SNAP_PX).astype(int)
    high = np.ceil(corners_rc.max(axis=0) - SNAP_PX).astype(int)
    row0, col0 = max(low[0], 0), max(low[1], 0)
    row1, col1 = min(high[0], shape[0]), min(high[1], shape[1])
    if row1 <= row0 or col1 <= col0:
        raise ValueError(
            f"the region rows {low[0]}..{high[0]}, columns {low[1]}..{high[1]} lies "
            f"outside the image of {shape[0]} x {shape[1]} px: draw or view a part "
            "of the image, or choose 'whole image'"
        )
    return int(col0), int(row0), int(col1 - col0), int(row1 - row0)


def view_region(
    layer: Image,
    center: Sequence[float],
    zoom: float,
    canvas_size: Sequence[int],
) -> Region:
    """The part of ``layer`` the 2-D canvas shows.

    Parameters
    ----------
    layer : Image
    center : sequence of float
        Camera centre in world coordinates; the last two are ``(y, x)``.
    zoom : float
        Canvas pixels per world unit.
    canvas_size : (int, int)
        Canvas ``(height, width)`` in screen pixels.
    """
    half = np.asarray(canvas_size[-2:], dtype=float) / (2 * zoom)
    middle = np.asarray(center[-2:], dtype=float)
    corners = [
        middle + half * np.array(s) for s in ((-1, -1), (-1, 1), (1, -1), (1, 1))
    ]
    data = np.array([layer.world_to_data(c)[-2:] for c in corners])
    return clip_region(data, level0_shape(layer))


def last_rectangle(shapes_layers: Sequence[Shapes]) -> tuple[Shapes, int] | None:
    """The most recent rectangle: last one in the topmost Shapes layer holding one."""
    for shapes in reversed(list(shapes_layers)):
        indices = [i for i, t in enumerate(shapes.shape_type) if t == "rectangle"]
        if indices:
            return shapes, indices[-1]
    return None


def rectangle_region(layer: Image, shapes: Shapes, index: int) -> Region:
    """The level-0 region of ``layer`` under rectangle ``index`` of ``shapes``."""
    vertices = np.asarray(shapes.data[index], dtype=float)
    world = [shapes.data_to_world(v) for v in vertices]
    data = np.array([layer.world_to_data(w)[-2:] for w in world])
    return clip_region(data, level0_shape(layer))
