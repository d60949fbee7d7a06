"""Label nuclei by brushing over them on the canvas, or by clicking one.

While the brush is on, its nuclei layer is the active layer in pan/zoom mode
with ``mouse_pan`` off (napari then does not move the camera on a drag), and a
drag callback of that layer records the stroke: the level-0 ``(x, y)`` of each
mouse position. On release the stroke goes to
:meth:`napari_lemon.analysis.brush_hits.BrushIndex.hits` (every nucleus within
the brush radius of the polyline) and the result to the brush's ``on_stroke``
callback as one :class:`Stroke`, so that one stroke is one undoable action. A
press and release that moved less than :data:`CLICK_PX` screen pixels is a
click: the nearest nucleus within the brush radius (at least ``click_um``
microns), so that a click labels one nucleus, the one the circle cursor is
over or nearest to inside it; a drag labels every nucleus the circle passes.

The brush shows itself as napari's circle cursor of its radius (scaled with the
zoom) and, while dragging, as the stroke drawn as a path as wide as the brush in
a Shapes layer of its own, there while the brush is on (updated at most every
:data:`PREVIEW_S` seconds: a Shapes update re-tessellates the path). The wheel
still zooms while brushing; choosing another layer, or another mode of the
nuclei layer, turns the brush off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._reader import MPP_KEY

if TYPE_CHECKING:
    import napari
    from napari.layers import Points, Shapes

    from napari_lemon.analysis.brush_hits import BrushIndex

CLICK_PX = 3.0  # a press that moves less than this (screen px) is a click
PREVIEW_S = 0.03
PREVIEW_NAME = "LEMON brush"
DEFAULT_RADIUS_UM = 10.0
DEFAULT_CLICK_UM = 5.0
LEFT_BUTTON = 1


@dataclass
class Stroke:
    """What one brush stroke or click touched.

    Attributes
    ----------
    rows : ndarray of shape (k,), int64
        Rows of the nuclei touched, sorted (empty: none).
    click : bool
        True for a click (at most one row), False for a stroke.
    polyline_xy : ndarray of shape (m, 2), float64
        The mouse path in level-0 ``(x, y)`` px.
    """

    rows: np.ndarray
    click: bool
    polyline_xy: np.ndarray


class Brush:
    """A brush over one nuclei layer at a time.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    on_stroke : callable
        Called with a :class:`Stroke` after each stroke or click.
    radius_um, click_um : float
        Brush radius, and how far from a nucleus a click may land at least (a
        larger brush reaches as far as its radius), in microns.
    on_off : callable, optional
        Called with False when the brush turns itself off (another layer or
        mode was chosen).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        on_stroke: Callable[[Stroke], Any],
        radius_um: float = DEFAULT_RADIUS_UM,
        click_um: float = DEFAULT_CLICK_UM,
        on_off: Callable[[bool], Any] | None = None,
    ) -> None:
        self._viewer, self._on_stroke, self._on_off = viewer, on_stroke, on_off
        self.layer: Points | None = None
        self.index: BrushIndex | None = None
        self._radius_um = self._checked_um(radius_um, "radius_um")
        self.click_um = self._checked_um(click_um, "click_um")
        self.colour = "#ffffff"
        self._enabled = False
        self._preview: Shapes | None = None

    # ------------------------------------------------------------- settings
    @staticmethod
    def _checked_um(value: float, what: str) -> float:
        if not value > 0:
            raise ValueError(f"{what}={value!r}: give a distance > 0 in microns")
        return float(value)

    @property
    def radius_um(self) -> float:
        """The brush radius in microns."""
        return self._radius_um

    @radius_um.setter
    def radius_um(self, value: float) -> None:
        self._radius_um = self._checked_um(value, "radius_um")
        if self._enabled:
            self._set_cursor()

    @property
    def enabled(self) -> bool:
        """Whether drags on the canvas brush (instead of panning)."""
        return self._enabled

    def px_per_um(self) -> float:
        """Level-0 pixels per micron of the brushed layer."""
        mpp = None if self.layer is None else self.layer.metadata.get(MPP_KEY)
        return 1.0 / float(mpp) if mpp else 1.0

    def attach(self, layer: Points | None, index: BrushIndex | None) -> None:
        """Brush ``layer`` (whose nuclei ``index`` holds) from now on."""
        was_on = self._enabled
        self.set_enabled(False, quiet=True)
        self.layer, self.index = layer, index
        if was_on and layer is not None:
            self.set_enabled(True)

    # --------------------------------------------------------------- on, off
    def set_enabled(self, on: bool, quiet: bool = False) -> None:
        """Turn the brush on (the layer becomes active, drags brush) or off."""
        if on and (self.layer is None or self.index is None):
            raise ValueError(
                "the brush has no nuclei layer: choose a LEMON nuclei layer first"
            )
        if on == self._enabled:
            return
        layer = self.layer
        if on:
            self._viewer.layers.selection.active = layer
            layer.mode = "pan_zoom"
            layer.mouse_drag_callbacks.append(self._drag)
            layer.mouse_pan = False
            self._set_cursor()
            self._preview = self._add_preview()
            layer.events.mode.connect(self._on_mode)
            self._viewer.layers.selection.events.active.connect(self._on_active)
            self._enabled = True
            return
        self._enabled = False
        self._disconnect()
        if not quiet and self._on_off is not None:
            self._on_off(False)

    def _disconnect(self) -> None:
        layer = self.layer
        if layer is not None:
            if self._drag in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._drag)
            layer.events.mode.disconnect(self._on_mode)
            if layer.mode == "pan_zoom":
                layer.mouse_pan = True
                layer.cursor = "standard"
        self._viewer.layers.selection.events.active.disconnect(self._on_active)
        preview, self._preview = self._preview, None
        if preview is not None and preview in self._viewer.layers:
            self._viewer.layers.remove(preview)

    def _on_mode(self, _event: Any = None) -> None:
        self.set_enabled(False)

    def _on_active(self, _event: Any = None) -> None:
        from qtpy.QtCore import QTimer

        # NOTE: layers added by panels (rings, previews) are active for a moment
        # and hand the selection back; look once the event loop has run
        QTimer.singleShot(0, self._check_active)

    def _check_active(self) -> None:
        active = self._viewer.layers.selection.active
        if self._enabled and active is not self.layer:
            self.set_enabled(False)

    def _set_cursor(self) -> None:
        layer = self.layer
        world_per_px = float(np.abs(np.asarray(layer.scale[-2:], float)).min())
        layer.cursor = "circle"
        layer.cursor_size = 2 * self._radius_um * self.px_per_um() * world_per_px

    # ---------------------------------------------------------------- stroke
    def xy_of(self, world_position: Any) -> np.ndarray:
        """Level-0 ``(x, y)`` px of a world position on the brushed layer."""
        row, col = np.asarray(self.layer.world_to_data(world_position))[-2:]
        return np.array([col, row], dtype=np.float64)

    def _drag(self, layer: Points, event: Any) -> Any:
        """napari drag callback: press, moves, release."""
        if event.button != LEFT_BUTTON or set(event.modifiers) - {"Shift"}:
            return
        path = [self.xy_of(event.position)]
        shown = 0.0
        yield

        while event.type == "mouse_move":
            path.append(self.xy_of(event.position))
            if time.perf_counter() - shown > PREVIEW_S:
                self._show_preview(np.asarray(path))
                shown = time.perf_counter()
            yield

        # release: a click or a stroke
        self._show_preview(np.empty((0, 2)))
        self.finish(np.asarray(path), zoom=float(event.camera_zoom))

    def finish(self, polyline_xy: np.ndarray, zoom: float | None = None) -> Stroke:
        """Turn a mouse path (level-0 ``(x, y)`` px) into a stroke or a click.

        Parameters
        ----------
        polyline_xy : ndarray of shape (m, 2)
        zoom : float, optional
            The camera zoom (screen px per world unit) to tell a click from a
            stroke; default the viewer's.
        """
        camera = getattr(self._viewer, "scene", self._viewer).camera
        zoom = float(camera.zoom if zoom is None else zoom)
        world_per_px = float(np.abs(np.asarray(self.layer.scale[-2:], float)).min())
        screen_per_px = zoom * world_per_px
        spread = np.hypot(*(polyline_xy - polyline_xy[0]).T).max()

        if spread * screen_per_px < CLICK_PX:
            reach_um = max(self.click_um, self._radius_um)
            row = self.index.nearest(polyline_xy[0], reach_um * self.px_per_um())
            rows = np.array([] if row is None else [row], dtype=np.int64)
            stroke = Stroke(rows, True, polyline_xy)
        else:
            radius_px = self._radius_um * self.px_per_um()
            stroke = Stroke(self.index.hits(polyline_xy, radius_px), False, polyline_xy)
        self._on_stroke(stroke)
        return stroke

    # --------------------------------------------------------------- preview
    def _show_preview(self, path_xy: np.ndarray) -> None:
        """Draw the stroke so far as a path as wide as the brush (none: clear)."""
        preview = self._preview
        if preview is None or preview not in self._viewer.layers:
            return
        if len(preview.data):
            preview.data = []
        if len(path_xy) > 1:
            width = 2 * self._radius_um * self.px_per_um()
            preview.add_paths(
                [path_xy[:, ::-1]], edge_width=width, edge_color=self.colour
            )

    def _add_preview(self) -> Shapes:
        """An empty Shapes layer over the nuclei; the nuclei stay the active layer."""
        layer = self.layer
        preview = self._viewer.add_shapes(
            name=PREVIEW_NAME,
            edge_color=self.colour,
            face_color="transparent",
            opacity=0.4,
            scale=tuple(layer.scale),
            translate=tuple(layer.translate),
            affine=layer.affine.affine_matrix,
            units=tuple(str(u) for u in layer.units),
            metadata={"lemon_brush_of": layer.name},
        )
        self._viewer.layers.selection.active = layer  # keep brushing the nuclei
        return preview
