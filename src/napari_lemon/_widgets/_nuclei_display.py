"""A million nuclei in the viewer: dots when zoomed out, points and outlines in.

Design
------
- **One points layer, drawn only when few nuclei are in view.** All nuclei are
  one Points layer whose ``features`` table is the ``obs`` table (other plugins
  read it). Its data are the centroids; nothing here ever replaces or copies
  them. Under a software renderer (Mesa llvmpipe, as on servers and CI) a frame
  of 1,000,000 point markers takes 7-30 s, so the layer is drawn only when at
  most :data:`MAX_VIEW_OUTLINES` nuclei are in view.
- **A raster of the view.** After the camera stops moving (debounced,
  :data:`REFRESH_MS`) the nuclei in the field of view are found with a strip
  index on the centroids (:class:`._view_index.CentroidIndex`) and drawn into an
  RGBA picture of the canvas' size, one screen pixel per raster pixel, shown as
  one Image layer: with more than :data:`MAX_VIEW_OUTLINES` in view, each nucleus
  is a filled dot of its point's size (at least one pixel), in its point's colour
  and the layer's opacity, and the points layer is hidden; with fewer, their
  outlines one pixel wide over the points. Drawing the view takes ~0.1 s in
  numpy for 1,000,000 nuclei and the frame one texture.
- **Hidden with ``visible``.** Zoomed out the points layer is set invisible:
  ``data``, ``features``, ``selected_data`` and ``face_color`` stay as they are
  for other plugins, napari skips the layer in every frame and in its refreshes.
  NOTE: napari 0.9.2 ignores ``shown`` for 2D points (the slice returns every
  index), so a mask cannot hide them; it would also be another plugin's filter.
  The layer list shows the points hidden then; the raster layer stands for them
  (its eye hides the dots). Hiding the points yourself hides the raster too.
- **Recolouring is a mapping.** :func:`recolour` maps a features column through a
  palette (categories) or a colormap (numbers) to one RGBA per nucleus in one
  numpy take, and hands napari that array. NOTE: napari's own colour cycle on a
  features column maps value by value in Python (2 s per 1,000,000 nuclei, 10 s
  when the column is new to the cycle), so the mapping is done here; the column
  and palette are kept in ``metadata["lemon_colour"]``. An optional opacity per
  nucleus (a probe's confidence) multiplies the colours' alpha. Only one of the layer's
  two face-colour events is let through, so a shown layer uploads its points
  once; a hidden layer uploads nothing (napari would still send every point to
  the canvas, 0.5 s per 1,000,000) and is re-sent whole when shown again. The
  raster is redrawn from the new colours.
- **Why a raster.** Measured with 5,000 outlines of 16 vertices under Xvfb +
  Mesa: a Shapes layer takes 2.3 s (polygons) or 3.9 s (paths) to add and
  1.7-2.3 s to replace its data; replacing the data of an RGBA Image layer of
  1000 x 1000 takes 0.02 s plus 0.05 s to draw. Dots and outlines are display
  only: the polygons stay in the results.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._results import OUTLINES_OF_KEY, unwrapped
from ._view_index import CentroidIndex, rasterise_dots, rasterise_outlines

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Points

logger = logging.getLogger(__name__)

MAX_VIEW_OUTLINES = 5_000
REFRESH_MS = 150
COLOUR_KEY = "lemon_colour"
MISSING_RGBA = (0.6, 0.6, 0.6, 0.5)  # nuclei with no value in the column
MIN_STEP_PX = 0.25  # finest outline raster: 4 pixels per level-0 pixel
MIN_CONFIDENCE_ALPHA = 0.2  # opacity of a nucleus whose prediction is a guess

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


def confidence_alpha(
    confidence: np.ndarray, n_classes: int, floor: float = MIN_CONFIDENCE_ALPHA
) -> np.ndarray:
    """Opacity from a classifier's confidence: ``floor`` at chance, 1 when sure.

    Parameters
    ----------
    confidence : ndarray of shape (n,), float
        The largest class probability of each nucleus, ``1 / n_classes`` .. 1.
    n_classes : int
        Classes the probabilities are over (chance is ``1 / n_classes``).
    floor : float
        Opacity of a nucleus at chance level, so that none vanishes.

    Returns
    -------
    ndarray of shape (n,), float32 in ``floor`` .. 1
    """
    if n_classes < 1:
        raise ValueError(f"n_classes={n_classes!r}: give at least 1")
    chance = 1.0 / n_classes
    confidence = np.asarray(confidence, dtype=np.float32)
    sure = (confidence - chance) / max(1.0 - chance, 1e-6)
    return (floor + (1.0 - floor) * np.clip(np.nan_to_num(sure), 0, 1)).astype(
        np.float32
    )


def recolour(
    layer: Points, column: str, palette: Any = None, alpha: Any = None
) -> None:
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
    alpha : str or array-like, optional
        Opacity of each nucleus, 0..1, multiplying its colour's: a numeric
        features column or an array of shape (n_nuclei,) (e.g. a probe's
        confidence through :func:`confidence_alpha`). None: opaque colours.
    """
    if column not in layer.features:
        raise ValueError(
            f"column={column!r} is not a feature of layer {layer.name!r}; choose "
            f"one of {list(layer.features.columns)}"
        )
    colours = column_colours(layer.features[column], palette)
    if alpha is not None:
        colours[:, 3] *= _alpha_values(layer, alpha)
    _set_face_colours(layer, colours)
    layer.metadata[COLOUR_KEY] = {
        "column": column,
        "palette": palette,
        "alpha": alpha if isinstance(alpha, str) or alpha is None else "values",
    }
    display = _DISPLAYS.get(layer)
    if display is not None:
        display.refresh()


def _alpha_values(layer: Points, alpha: Any) -> np.ndarray:
    """``alpha`` (a features column or an array) as float32 (n_nuclei,) in 0..1."""
    n = len(layer.data)
    if isinstance(alpha, str):
        if alpha not in layer.features:
            raise ValueError(
                f"alpha={alpha!r} is not a feature of layer {layer.name!r}; give a "
                "numeric column or an array of one opacity per nucleus"
            )
        alpha = layer.features[alpha].to_numpy(dtype=np.float32)
    values = np.asarray(alpha, dtype=np.float32)
    if values.shape != (n,):
        raise ValueError(
            f"alpha of shape {values.shape} for layer {layer.name!r}: give one "
            f"opacity per nucleus, shape ({n},)"
        )
    return np.clip(np.nan_to_num(values, nan=1.0), 0.0, 1.0)


def _set_face_colours(layer: Points, colours: np.ndarray) -> None:
    """Set ``layer.face_color``, sending the points to the canvas at most once."""
    # NOTE: both face_color events redraw the points; one is enough
    blocked = [layer.events.face_color]
    if not layer.visible:
        # NOTE: napari re-sends a hidden layer's points when it is shown again
        blocked.append(layer._face.events.colors)
    with contextlib.ExitStack() as stack:
        for emitter in blocked:
            stack.enter_context(emitter.blocker())
        layer.face_color = colours


# ------------------------------------------------------------ dots, outlines
class NucleiDisplay:
    """Keeps the raster of the nuclei in view, for one nuclei layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    points : Points
        The nuclei layer; its features hold ``x``, ``y`` (level-0 px).
    offsets, xy : ndarray
        Packed outlines (``uns["outlines"]``): nucleus ``i`` owns
        ``xy[offsets[i]:offsets[i + 1]]``, ``(x, y)`` level-0 px.
    max_outlines : int
        Points and outlines are drawn when at most this many nuclei are in view,
        dots otherwise.

    Attributes
    ----------
    mode : str
        What the view shows: ``"dots"``, ``"outlines"`` or ``"points"`` (points
        alone: none in view, a 3D view, or the raster hidden by its eye).
    rows : ndarray of shape (k,), int64
        The nuclei drawn in the raster.
    layer : Image
        The raster layer.
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
        self._centroids = points.features[["x", "y"]].to_numpy(dtype=np.float64)
        self.index = CentroidIndex(self._centroids)
        self.rows = np.empty(0, np.int64)
        self.mode = "points"
        self.layer = self._add_raster_layer()

        # what the user asked for with the eyes of the two layers
        self._own_change = False
        self.points_wanted, self.raster_wanted = bool(points.visible), True

        # debounced refresh after camera moves and changes of the points
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.refresh)
        self._camera.events.connect(self._schedule)
        for name in ("size", "opacity", "face_color"):
            getattr(points.events, name).connect(self._schedule)
        points.events.visible.connect(self._on_points_visible)
        self.layer.events.visible.connect(self._on_raster_visible)
        viewer.layers.events.removed.connect(self._on_removed)
        _DISPLAYS[points] = self
        self.refresh()

    @property
    def _camera(self) -> Any:
        return getattr(self._viewer, "scene", self._viewer).camera

    def _add_raster_layer(self) -> Image:
        points = self.points
        return self._viewer.add_image(
            np.zeros((1, 1, 4), np.uint8),
            rgb=True,
            name=f"{points.name} dots & outlines",
            visible=False,
            scale=tuple(points.scale),
            translate=tuple(points.translate),
            affine=points.affine.affine_matrix,
            units=tuple(str(u) for u in points.units),
            metadata={OUTLINES_OF_KEY: points.name},
        )

    def _schedule(self, _event: Any = None) -> None:
        self._timer.start(REFRESH_MS)

    def _on_points_visible(self, _event: Any = None) -> None:
        if not self._own_change:
            self.points_wanted = bool(self.points.visible)
            self._timer.start(0)  # before the frame that would draw them all

    def _on_raster_visible(self, _event: Any = None) -> None:
        if not self._own_change:
            self.raster_wanted = bool(self.layer.visible)
            self._timer.start(0)

    def _on_removed(self, event: Any) -> None:
        if unwrapped(event.value) is unwrapped(self.points):
            self.close()
            if self.layer in self._viewer.layers:
                self._viewer.layers.remove(self.layer)

    def close(self) -> None:
        """Stop following the camera and the points."""
        self._timer.stop()
        self._camera.events.disconnect(self._schedule)
        for name in ("size", "opacity", "face_color"):
            getattr(self.points.events, name).disconnect(self._schedule)
        self.points.events.visible.disconnect(self._on_points_visible)
        self.layer.events.visible.disconnect(self._on_raster_visible)
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
        """Draw the nuclei in view: dots when many, outlines over points when few."""
        self._timer.stop()
        if not self.points_wanted or self._viewer.dims.ndisplay != 2:
            self._show("points")
            return
        box, step = self.view_box()
        rows = self.index.query(box, limit=self.max_outlines)
        if rows is not None and len(rows) == 0:
            self._show("points")
            return
        mode = "outlines" if rows is not None else "dots"
        if not self.raster_wanted and mode == "outlines":
            self._show("points")
            return
        if mode == "dots":
            rows = self.index.query(box)
        if self.raster_wanted:
            self._draw(mode, rows, box, step)
        self._show(mode)

    def _draw(self, mode: str, rows: np.ndarray, box: tuple, step: float) -> None:
        """Put the picture of ``rows`` in the raster layer."""
        x0, y0, width, height = box
        shape = (int(np.ceil(height / step)) + 1, int(np.ceil(width / step)) + 1)
        colours = np.asarray(self.points.face_color)[rows] * 255
        if mode == "dots":
            colours[:, 3] *= self.points.opacity
            xy = self._centroids[rows]
            size = np.asarray(self.points.size, dtype=np.float64)[rows]
            picture = rasterise_dots(
                xy, size, np.rint(colours).astype(np.uint8), (x0, y0), step, shape
            )
        else:
            colours[:, 3] = 255
            picture = rasterise_outlines(
                self._offsets, self._xy, rows, np.rint(colours).astype(np.uint8),
                (x0, y0), step, shape,
            )  # fmt: skip

        # placed so that raster pixel (r, c) is centred on level-0 (x0 + c*s, y0 + r*s)
        scale = np.asarray(self.points.scale[-2:], dtype=float)
        translate = np.asarray(self.points.translate[-2:], dtype=float)
        self.layer.data = picture
        self.layer.scale = tuple(scale * step)
        self.layer.translate = tuple(translate + np.array([y0, x0]) * scale)
        self.rows = rows

    def _show(self, mode: str) -> None:
        """Set both layers' visibility for ``mode``, touching only what changes."""
        self.mode = mode
        if mode == "points":
            self.rows = np.empty(0, np.int64)
        points_visible = self.points_wanted and mode != "dots"
        raster_visible = self.points_wanted and self.raster_wanted and mode != "points"
        self._own_change = True
        try:
            # NOTE: setting visible, even unchanged, re-sends every point
            if self.points.visible != points_visible:
                self.points.visible = points_visible
            if self.layer.visible != raster_visible:
                self.layer.visible = raster_visible
        finally:
            self._own_change = False


def display_of(layer: Points) -> NucleiDisplay | None:
    """The display (dots, outlines) that follows ``layer``, if any."""
    return _DISPLAYS.get(layer)
