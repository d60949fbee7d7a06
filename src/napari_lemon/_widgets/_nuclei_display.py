"""A million nuclei in the viewer: one points layer, outlines of the nuclei in view.

Design
------
- **Points, at every zoom.** All nuclei are one Points layer whose ``features``
  table is the ``obs`` table (other plugins read it). Its data are the centroids;
  nothing here ever replaces or copies them.
- **Recolouring is a mapping.** :func:`recolour` maps a features column through a
  palette (categories) or a colormap (numbers) to one RGBA per nucleus in one
  numpy take, and hands napari that array. NOTE: napari's own colour cycle on a
  features column maps value by value in Python (2 s per 1,000,000 nuclei, 10 s
  when the column is new to the cycle), so the mapping is done here; the column
  and palette are kept in ``metadata["lemon_colour"]``. The face-colour event of
  the layer is held back while the colours are set, so the canvas uploads the
  points once instead of twice.
- **Outlines only when zoomed in.** After the camera stops moving (debounced,
  :data:`REFRESH_MS`) the nuclei in the field of view are found with a strip
  index on the centroids (:class:`._view_index.CentroidIndex`). When at most
  :data:`MAX_VIEW_OUTLINES` are in view, their outlines are drawn one screen pixel
  wide into an RGBA picture of the canvas' size, shown as an Image layer over the
  points; otherwise that layer is hidden. Outline colours are the points'
  colours, row for row, so they follow every recolouring.
- **Why a raster for the outlines.** Measured with 5,000 outlines of 16 vertices
  under Xvfb + Mesa: a Shapes layer takes 2.3 s (polygons) or 3.9 s (paths) to
  add and 1.7-2.3 s to replace its data; replacing the data of an RGBA Image layer
  of 1000 x 1000 takes 0.02 s plus 0.05 s to draw, and drawing the picture takes
  ~0.01 s in numpy. Outlines are display only: the polygons stay in the results.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._view_index import CentroidIndex, rasterise_outlines

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Points

logger = logging.getLogger(__name__)

MAX_VIEW_OUTLINES = 5_000
REFRESH_MS = 150
COLOUR_KEY = "lemon_colour"
MISSING_RGBA = (0.6, 0.6, 0.6, 0.5)  # nuclei with no value in the column
MIN_STEP_PX = 0.25  # finest outline raster: 4 pixels per level-0 pixel

_DISPLAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------ colours
def is_categorical(column: pd.Series) -> bool:
    """Whether a column is coloured by category (else by a colormap)."""
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype):
        return True
    return not pd.api.types.is_numeric_dtype(dtype)


def category_palette(categories: Sequence, palette: Any = None) -> np.ndarray:
    """One RGBA per category, float32 ``(len(categories), 4)`` in 0..1.

    Parameters
    ----------
    categories : sequence
        The categories, in order.
    palette : None, dict or array-like, optional
        None: :func:`napari_lemon.overlay.cluster_palette`; a dict from category
        to colour (anything napari reads as a colour); or an array of shape
        (k, 3 or 4), uint8 (0..255) or float (0..1), used in order (``k`` must be
        at least the number of categories).
    """
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_lemon.overlay import cluster_palette

    k = len(categories)
    if palette is None:
        rgb = cluster_palette(k).astype(np.float32) / 255.0
        return np.column_stack([rgb, np.ones(k, np.float32)])
    if isinstance(palette, dict):
        missing = [c for c in categories if c not in palette]
        if missing:
            raise ValueError(
                f"palette has no colour for categories {missing[:5]!r}; give one "
                "for each of " + repr(list(categories)[:20])
            )
        return transform_color([palette[c] for c in categories]).astype(np.float32)
    table = np.asarray(palette)
    if table.ndim != 2 or table.shape[1] not in (3, 4) or len(table) < k:
        raise ValueError(
            f"palette of shape {table.shape} does not colour {k} categories: give "
            "an array of shape (k, 3 or 4) with k >= the number of categories"
        )
    table = table[:k].astype(np.float32) / (255.0 if table.dtype == np.uint8 else 1)
    return transform_color(table).astype(np.float32)


def column_colours(column: pd.Series, palette: Any = None) -> np.ndarray:
    """The RGBA of each nucleus for a features column.

    Categories (categorical, text, bool) go through :func:`category_palette`;
    numbers through a napari colormap (``palette`` its name, default "viridis")
    between the column's minimum and maximum. Missing values are grey.

    Returns
    -------
    ndarray of shape (len(column), 4), float32
    """
    from napari.utils.colormaps import ensure_colormap

    if is_categorical(column):
        labels = pd.Categorical(column)
        table = category_palette(list(labels.categories), palette)
        table = np.vstack([table, np.asarray(MISSING_RGBA, np.float32)])
        return table[labels.codes]  # code -1 (missing) picks the last row

    # numbers through a colormap
    values = column.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0, 1)
    scaled = (values - low) / (high - low if high > low else 1.0)
    colours = ensure_colormap(palette or "viridis").map(np.nan_to_num(scaled))
    colours[~finite] = MISSING_RGBA
    return colours.astype(np.float32)


def recolour(layer: Points, column: str, palette: Any = None) -> None:
    """Colour the nuclei of ``layer`` by a features column; the data stay as they are.

    Parameters
    ----------
    layer : Points
        A nuclei layer (its ``features`` hold ``column``).
    column : str
        A features column: ``cluster``, ``probe_<name>`` (categories) or any
        numeric column such as ``probe_<name>_proba`` or ``area_um2``.
    palette : optional
        See :func:`column_colours`.
    """
    if column not in layer.features:
        raise ValueError(
            f"column={column!r} is not a feature of layer {layer.name!r}; choose "
            f"one of {list(layer.features.columns)}"
        )
    colours = column_colours(layer.features[column], palette)

    # NOTE: both face_color events redraw the points; one is enough
    with layer.events.face_color.blocker():
        layer.face_color = colours
    layer.metadata[COLOUR_KEY] = {"column": column, "palette": palette}
    display = _DISPLAYS.get(layer)
    if display is not None:
        display.refresh()


# ----------------------------------------------------------------- outlines
class NucleiDisplay:
    """Keeps the outlines of the nuclei in view, for one nuclei layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    points : Points
        The nuclei layer; its features hold ``x``, ``y`` (level-0 px).
    offsets, xy : ndarray
        Packed outlines (``uns["outlines"]``): nucleus ``i`` owns
        ``xy[offsets[i]:offsets[i + 1]]``, ``(x, y)`` level-0 px.
    max_outlines : int
        Outlines are drawn when at most this many nuclei are in view.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        points: Points,
        offsets: np.ndarray,
        xy: np.ndarray,
        max_outlines: int = MAX_VIEW_OUTLINES,
    ) -> None:
        from qtpy.QtCore import QTimer

        self._viewer, self.points = viewer, points
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._xy = np.asarray(xy, dtype=np.float32)
        self.max_outlines = int(max_outlines)
        self.index = CentroidIndex(points.features[["x", "y"]].to_numpy())
        self.rows = np.empty(0, np.int64)  # nuclei whose outlines are drawn
        self.layer = self._add_outline_layer()

        # debounced refresh after camera moves
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)
        self._camera.events.connect(self._schedule)
        points.events.visible.connect(self._schedule)
        viewer.layers.events.removed.connect(self._on_removed)
        _DISPLAYS[points] = self
        self.refresh()

    @property
    def _camera(self) -> Any:
        return getattr(self._viewer, "scene", self._viewer).camera

    def _add_outline_layer(self) -> Image:
        points = self.points
        return self._viewer.add_image(
            np.zeros((1, 1, 4), np.uint8),
            rgb=True,
            name=f"{points.name} outlines",
            visible=False,
            scale=tuple(points.scale),
            translate=tuple(points.translate),
            affine=points.affine.affine_matrix,
            units=tuple(str(u) for u in points.units),
            metadata={"lemon_outlines_of": points.name},
        )

    def _schedule(self, _event: Any = None) -> None:
        self._timer.start()

    def _on_removed(self, event: Any) -> None:
        if event.value is self.points:
            self.close()
            if self.layer in self._viewer.layers:
                self._viewer.layers.remove(self.layer)

    def close(self) -> None:
        """Stop following the camera."""
        self._timer.stop()
        self._camera.events.disconnect(self._schedule)
        self.points.events.visible.disconnect(self._schedule)
        self._viewer.layers.events.removed.disconnect(self._on_removed)
        _DISPLAYS.pop(self.points, None)

    # ------------------------------------------------------------ the view
    def view_box(self) -> tuple[tuple[float, float, float, float], float]:
        """The level-0 ``(x, y, width, height)`` in view; level-0 px per screen px."""
        camera = self._camera
        rows, cols = self._viewer.canvas.size
        half = np.array([rows, cols], dtype=float) / (2 * camera.zoom)
        middle = np.asarray(camera.center[-2:], dtype=float)
        corners = [middle + half * np.array(s) for s in ((-1, -1), (1, 1))]
        (r0, c0), (r1, c1) = (self.points.world_to_data(c)[-2:] for c in corners)
        y0, y1 = sorted((r0, r1))
        x0, x1 = sorted((c0, c1))
        step = max((x1 - x0) / max(cols, 1), MIN_STEP_PX)
        return (x0, y0, x1 - x0, y1 - y0), step

    def refresh(self) -> None:
        """Draw the outlines of the nuclei in view, or hide them when too many."""
        if not self.points.visible or self._viewer.dims.ndisplay != 2:
            self._hide()
            return
        box, step = self.view_box()
        rows = self.index.query(box, limit=self.max_outlines)
        if rows is None or len(rows) == 0:
            self._hide()
            return

        # a picture of the view, one screen pixel per raster pixel
        x0, y0, width, height = box
        shape = (int(np.ceil(height / step)) + 1, int(np.ceil(width / step)) + 1)
        colours = np.rint(np.asarray(self.points.face_color)[rows] * 255)
        colours[:, 3] = 255
        picture = rasterise_outlines(
            self._offsets, self._xy, rows, colours.astype(np.uint8), (x0, y0),
            step, shape,
        )  # fmt: skip

        # placed so that raster pixel (r, c) is centred on level-0 (x0 + c*s, y0 + r*s)
        scale = np.asarray(self.points.scale[-2:], dtype=float)
        translate = np.asarray(self.points.translate[-2:], dtype=float)
        self.layer.data = picture
        self.layer.scale = tuple(scale * step)
        self.layer.translate = tuple(translate + np.array([y0, x0]) * scale)
        self.layer.visible = True
        self.rows = rows

    def _hide(self) -> None:
        self.rows = np.empty(0, np.int64)
        if self.layer.visible:
            self.layer.visible = False


def display_of(layer: Points) -> NucleiDisplay | None:
    """The outline display that follows ``layer``, if any."""
    return _DISPLAYS.get(layer)
