"""Centre the view on one nucleus (a thumbnail clicked, a suggestion, a neighbour).

The nucleus' centroid goes through its layer's transform (scale, translate,
affine) to world coordinates, where the camera is centred. Unless a zoom is
given, a view zoomed out so far that the nucleus is hard to see is zoomed in to a
field of :data:`FIELD_UM` microns across; a closer view keeps its zoom, so that
stepping through suggestions does not jump in and out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._reader import MPP_KEY

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

FIELD_UM = 60.0  # field of view after a jump from far out, microns across


def world_of(layer: Points, row: int) -> np.ndarray:
    """World coordinates of nucleus ``row`` of ``layer`` (the displayed axes)."""
    n = len(layer.data)
    if not 0 <= int(row) < n:
        raise ValueError(
            f"row={row!r} is outside layer {layer.name!r}, which has {n} nuclei "
            f"(rows 0 to {n - 1})"
        )
    return np.asarray(layer.data_to_world(layer.data[int(row)]), dtype=float)


def field_zoom(viewer: napari.viewer.Viewer, layer: Points, field_um: float) -> float:
    """The camera zoom at which ``field_um`` microns fill the canvas' short side."""
    mpp = float(layer.metadata.get(MPP_KEY) or 1.0)
    world_per_px = float(np.abs(np.asarray(layer.scale[-2:], dtype=float)).min())
    field_world = field_um / mpp * world_per_px
    return float(min(viewer.canvas.size)) / field_world


def jump_to(
    viewer: napari.viewer.Viewer,
    layer: Points,
    row: int,
    zoom: float | None = None,
    select: bool = False,
) -> np.ndarray:
    """Centre the camera on nucleus ``row`` of ``layer``.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    layer : Points
        A nuclei layer.
    row : int
        The nucleus' row in the layer (and its features table).
    zoom : float, optional
        The camera zoom to set; None zooms in only when the view is coarser than
        a field of :data:`FIELD_UM` microns.
    select : bool
        Also make the nucleus the layer's selection (``selected_data``).

    Returns
    -------
    ndarray of shape (ndim,), float
        The world position the view is centred on.
    """
    centre = world_of(layer, row)
    camera = getattr(viewer, "scene", viewer).camera
    displayed = list(viewer.dims.displayed)
    camera.center = tuple(centre[displayed])
    if zoom is not None:
        if not zoom > 0:
            raise ValueError(f"zoom={zoom!r}: give a camera zoom > 0, or None")
        camera.zoom = float(zoom)
    else:
        camera.zoom = max(float(camera.zoom), field_zoom(viewer, layer, FIELD_UM))
    if select:
        layer.selected_data = {int(row)}
    return centre
