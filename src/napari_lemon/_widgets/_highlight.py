"""Rings over chosen nuclei: the selection, a legend entry, a lasso on the map.

Which nuclei are selected is napari's own ``selected_data`` of the nuclei layer,
so napari's select tool, other plugins and every LEMON panel agree on it. But a
nuclei layer with more than a few thousand nuclei in view is hidden and drawn as
dots (:mod:`._nuclei_display`), and napari draws a selection only on a visible
layer, only in points mode. :func:`highlight` therefore draws the chosen nuclei
as a small Points layer of rings of its own: transparent faces, a coloured
border, the nuclei layer's transform, and a minimum size on screen
(:data:`MIN_RING_PX`) so that a ring stays visible when the slide is zoomed out
to a few pixels per nucleus.

One ring layer per name: calling :func:`highlight` again with the same name
replaces its rings (one ``data`` assignment), :func:`clear_highlight` removes it.
The ring layer never becomes the active layer (panels follow the active nuclei
layer) and goes when its nuclei layer goes.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

DEFAULT_NAME = "LEMON selection"
DEFAULT_COLOUR = "#ffff00"
HIGHLIGHT_KEY = (
    "lemon_highlight"  # metadata: the name asked for (layers may be renamed)
)
MIN_RING_PX = 8  # smallest ring on screen, whatever the zoom
RING_SCALE = 1.6  # ring diameter over nucleus diameter
MAX_RINGS = 20_000
# NOTE: a software renderer draws ~100,000 markers a second; a larger choice is
# drawn as an even subsample of MAX_RINGS (recorded in the layer's metadata)

_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # rings -> nuclei


def selected_rows(layer: Points) -> np.ndarray:
    """The rows of ``layer.selected_data``, sorted, as int64."""
    return np.array(sorted(layer.selected_data), dtype=np.int64)


def _checked_rows(rows: Iterable[int] | np.ndarray, n: int, where: str) -> np.ndarray:
    """``rows`` as sorted unique int64 row numbers in ``0 .. n - 1``."""
    if isinstance(rows, set | frozenset):
        rows = sorted(rows)
    array = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows)
    if array.size == 0:
        return np.empty(0, np.int64)
    if array.dtype == bool:
        if array.shape != (n,):
            raise ValueError(
                f"rows is a mask of shape {array.shape} for {where!r}; a mask needs "
                f"one value per nucleus, shape ({n},)"
            )
        return np.flatnonzero(array).astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"rows of dtype {array.dtype} for {where!r}: give row numbers (ints) "
            "or a boolean mask"
        )
    array = np.unique(array.astype(np.int64).ravel())
    if array[0] < 0 or array[-1] >= n:
        bad = array[(array < 0) | (array >= n)][:5].tolist()
        raise ValueError(
            f"rows {bad} are outside layer {where!r}, which has {n} nuclei "
            f"(rows 0 to {n - 1})"
        )
    return array


def find_highlight(viewer: napari.viewer.Viewer, name: str = DEFAULT_NAME) -> Any:
    """The ring layer called ``name``, or None."""
    for layer in viewer.layers:
        if layer.metadata.get(HIGHLIGHT_KEY) == name:
            return layer
    return None


def highlight(
    viewer: napari.viewer.Viewer,
    nuclei_layer: Points,
    rows: Iterable[int] | np.ndarray,
    name: str = DEFAULT_NAME,
    colour: str = DEFAULT_COLOUR,
    max_rings: int = MAX_RINGS,
) -> Points:
    """Draw rings over the nuclei ``rows`` of ``nuclei_layer``.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    nuclei_layer : Points
        A nuclei layer; the rings take its transform.
    rows : iterable of int, ndarray of int or bool
        Row numbers of the nuclei (``layer.selected_data`` works as is), or a
        mask with one value per nucleus. None or empty: no rings (the layer
        stays, empty).
    name : str
        The ring layer's name; one layer per name, replaced on each call.
    colour : str
        Ring colour, anything napari reads as a colour.
    max_rings : int
        More rows than this are drawn as an even subsample of this many.

    Returns
    -------
    Points
        The ring layer. ``metadata["lemon_rows"]`` holds all ``rows`` and
        ``metadata["lemon_shown"]`` how many of them have a ring.

    Raises
    ------
    ValueError
        Rows outside the layer, or a mask of the wrong length.
    """
    n = len(nuclei_layer.data)
    rows = _checked_rows([] if rows is None else rows, n, nuclei_layer.name)
    if max_rings < 1:
        raise ValueError(f"max_rings={max_rings!r} must be at least 1")

    # an even subsample when the choice is too large to draw
    shown = rows
    if len(rows) > max_rings:
        shown = rows[np.linspace(0, len(rows) - 1, max_rings).astype(np.int64)]

    # rings a little larger than their nuclei
    data = np.asarray(nuclei_layer.data)[shown]
    sizes = np.asarray(nuclei_layer.size, dtype=np.float64)
    sizes = sizes[shown] if sizes.ndim and len(sizes) == n else np.full(len(shown), 10)
    sizes = np.maximum(sizes, 1e-6) * RING_SCALE

    layer = find_highlight(viewer, name)
    if layer is None:
        layer = _add_ring_layer(viewer, nuclei_layer, name, colour)
    else:
        _place_like(layer, nuclei_layer)
    _OWNERS[layer] = nuclei_layer
    layer.metadata.update({"lemon_rows": rows, "lemon_shown": len(shown)})
    layer.data = data
    layer.size = sizes
    layer.border_color = colour
    layer.current_border_color = colour
    layer.refresh()
    return layer


def _add_ring_layer(
    viewer: napari.viewer.Viewer, nuclei_layer: Points, name: str, colour: str
) -> Points:
    """A new, empty ring layer over ``nuclei_layer``; the active layer unchanged."""
    active = viewer.layers.selection.active
    selection = set(viewer.layers.selection)
    layer = viewer.add_points(
        np.empty((0, 2)),
        name=name,
        face_color="transparent",
        border_color=colour,
        border_width=0.18,
        border_width_is_relative=True,
        canvas_size_limits=(MIN_RING_PX, 10_000),
        opacity=1.0,
        blending="translucent_no_depth",
        scale=tuple(nuclei_layer.scale),
        translate=tuple(nuclei_layer.translate),
        affine=nuclei_layer.affine.affine_matrix,
        units=tuple(str(u) for u in nuclei_layer.units),
        metadata={HIGHLIGHT_KEY: name},
    )

    # panels follow the active nuclei layer: give it back
    viewer.layers.selection.clear()
    viewer.layers.selection.update(selection)
    viewer.layers.selection.active = active

    # the rings go with the nuclei they are drawn over
    def on_removed(event: Any) -> None:
        if event.value is layer:
            viewer.layers.events.removed.disconnect(on_removed)
        elif event.value is _OWNERS.get(layer) and layer in viewer.layers:
            viewer.layers.remove(layer)

    viewer.layers.events.removed.connect(on_removed)
    return layer


def _place_like(layer: Points, nuclei_layer: Points) -> None:
    """Give ``layer`` the transform of ``nuclei_layer`` (it may have moved)."""
    if not np.array_equal(
        layer.affine.affine_matrix, nuclei_layer.affine.affine_matrix
    ):
        layer.affine = nuclei_layer.affine.affine_matrix
    if tuple(layer.scale) != tuple(nuclei_layer.scale):
        layer.scale = tuple(nuclei_layer.scale)
    if tuple(layer.translate) != tuple(nuclei_layer.translate):
        layer.translate = tuple(nuclei_layer.translate)


def clear_highlight(viewer: napari.viewer.Viewer, name: str = DEFAULT_NAME) -> bool:
    """Remove the ring layer called ``name``; False when there was none."""
    layer = find_highlight(viewer, name)
    if layer is None:
        return False
    viewer.layers.remove(layer)
    return True
