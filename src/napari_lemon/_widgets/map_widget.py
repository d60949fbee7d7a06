"""The "LEMON morphology map" panel: all nuclei on a 2-D map of their embeddings.

The map (:func:`napari_lemon.analysis.morphology_map.embed_2d`, UMAP of a sample
of nuclei) is computed in a worker and drawn in a matplotlib canvas
(:mod:`._map_canvas`), each nucleus in the colour it has on the slide (the
nuclei layer's face colours, so clusters, probe predictions and labels all
show). With "thumbnails" ticked, a grid of nucleus pictures is drawn over the
map, one representative nucleus per occupied cell (the paper's Figure 4); they
are read from the slide file, or from the image layer for results without one.

The map and the slide share napari's selection (the nuclei layer's
``selected_data``): a lasso on the map selects and rings those nuclei on the
slide; nuclei selected on the slide (napari's select tool, a legend entry, "find
similar") are ringed on the map. A click on a dot or thumbnail centres the slide
on that nucleus.

The coordinates go into ``adata.obsm["X_umap"]`` (NaN for nuclei not mapped,
the scanpy name) and into the results store when the layer has one, so the map
is shown again without recomputing when the results are reopened
(:mod:`._map_jobs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QTimer

from .._reader import MPP_KEY, SLIDE_PATH_KEY
from . import _results
from ._highlight import highlight, selected_rows
from ._map_canvas import MapCanvas
from ._map_jobs import (
    DEFAULT_SAMPLE,
    MAP_KEY,
    THUMBNAIL_MPP,
    image_of,
    map_job,
    stored_map,
    thumbnail_job,
)
from ._nuclei_display import COLOUR_KEY
from ._panel_job import PanelJob
from .clusters_widget import embeddings_of

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

    from napari_lemon.analysis.morphology_map import MorphologyMap

POLL_MS = 400
WHAT = "LEMON map"


# ------------------------------------------------------------------ panel
class MorphologyMapWidget(Container):
    """Dock panel: the morphology map of a nuclei layer, with thumbnails and lasso.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Whose nuclei layers are mapped.

    Attributes
    ----------
    map : MorphologyMap or None
        The map shown: ``rows`` of the nuclei layer and their ``xy``.
    canvas : MapCanvas
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = _results.unwrapped(viewer)  # see unwrapped()
        self.job = PanelJob(WHAT, self._set_running)
        self.map: MorphologyMap | None = None
        self._shown: Points | None = None  # the layer whose selection is followed
        self._position = np.empty(0, np.int64)  # layer row -> map index, -1
        self._record: Any = None
        self._make_controls()
        self._connect()
        self._on_layer(self._layer.value)

    # ---------------------------------------------------------------- layout
    def _make_controls(self) -> None:
        self._layer = ComboBox(label="nuclei", choices=self._nuclei_layers)
        self._sample = SpinBox(
            label="sample",
            min=100,
            max=1_000_000,
            step=1000,
            value=_default_sample(),
            tooltip="Nuclei drawn at random for the map (all when fewer)",
        )
        self._compute = PushButton(text="Compute map")
        self._thumbnails = CheckBox(text="thumbnails", value=False)
        self._grid = SpinBox(
            label="thumbnail grid",
            min=3,
            max=30,
            value=10,
            tooltip="Cells per side of the grid; one thumbnail per occupied cell",
        )
        self._status = Label(value="")
        self.extend(
            [self._layer, self._sample, self._compute, self._thumbnails]
            + [self._grid, self._status]
        )
        theme = _theme_colours(self._viewer)
        self.canvas = MapCanvas(self._on_lasso, self._on_click, *theme)
        self.native.layout().addWidget(self.canvas)

    def _connect(self) -> None:
        self._layer.changed.connect(self._on_layer)
        self._compute.changed.connect(self.compute)
        self._thumbnails.changed.connect(self._on_thumbnails)
        self._grid.changed.connect(lambda: self._on_thumbnails(self._thumbnails.value))
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._layer.reset_choices)
        self._viewer.layers.selection.events.active.connect(self._follow_active)

        # recolours keep face-colour events quiet (see _legend): look for them
        self._timer = QTimer(self.native)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._check_colours)
        self._timer.start()
        # a closed panel stops following the layer's selection
        self.native.destroyed.connect(lambda *_: self._follow_selection_of(None))

    def _nuclei_layers(self, _widget: Any = None) -> list[tuple[str, Points]]:
        return [(layer.name, layer) for layer in _results.nuclei_layers(self._viewer)]

    def _follow_active(self, _event: Any = None) -> None:
        active = self._viewer.layers.selection.active
        if _results.is_nuclei_layer(active) and self._layer.value is not active:
            self._layer.value = active

    def _set_running(self, running: bool) -> None:
        self._compute.enabled = not running
        if running:
            self._status.value = "running…"

    @property
    def worker(self) -> Any:
        """The running worker, or None."""
        return self.job.worker

    @property
    def layer(self) -> Points | None:
        """The chosen nuclei layer."""
        return self._layer.value

    # ------------------------------------------------------- layer and map
    def _follow_selection_of(self, layer: Points | None) -> None:
        if self._shown is not None:
            self._shown.selected_data.events.items_changed.disconnect(
                self._on_selection
            )
        self._shown = layer
        if layer is not None:
            layer.selected_data.events.items_changed.connect(self._on_selection)

    def _on_layer(self, layer: Points | None) -> None:
        self._follow_selection_of(layer)
        self._status.value = ""  # it spoke of the layer before
        adata = None if layer is None else layer.metadata[_results.ADATA_KEY]
        self.show_map(None if adata is None else stored_map(adata))

    def show_map(self, found: MorphologyMap | None) -> None:
        """Draw ``found`` (a map of the chosen layer), or say why there is none."""
        self.map, layer = found, self.layer
        if layer is None or found is None:
            self._position = np.empty(0, np.int64)
            hint = "No nuclei layer" if layer is None else "Compute the map"
            self.canvas.show_message(hint)
            return
        self._position = np.full(len(layer.data), -1, np.int64)
        self._position[found.rows] = np.arange(len(found.rows))
        self._record = layer.metadata.get(COLOUR_KEY)
        title = f"{found.method.upper()} of {len(found.rows):,} of {len(layer.data):,}"
        self.canvas.set_map(found.xy, self._colours(), f"{title} nuclei")
        self._on_selection()
        if self._thumbnails.value:
            self._on_thumbnails(True)

    def _colours(self) -> np.ndarray:
        colours = np.asarray(self.layer.face_color, dtype=np.float32)
        return colours[self.map.rows]

    def _check_colours(self) -> None:
        layer = self.layer
        if layer is None or self.map is None:
            return
        if layer.metadata.get(COLOUR_KEY) is not self._record:
            self._record = layer.metadata.get(COLOUR_KEY)
            self.canvas.set_colours(self._colours())

    def compute(self) -> Any:
        """Compute the map of the chosen layer in a worker (None after an error)."""
        layer = self.layer
        if layer is None:
            show_error(
                f"{WHAT}: no nuclei layer; run the LEMON analysis or load results first"
            )
            return None
        try:
            embeddings = embeddings_of(layer)
        except ValueError as err:
            show_error(f"{WHAT}: {err}")
            return None
        return self.job.start(
            map_job,
            embeddings,
            _results.store_path_of(layer),
            sample=int(self._sample.value),
            report=self.job.report,
            on_result=lambda result: self._on_mapped(layer, *result),
            on_error=lambda _err: setattr(self._status, "value", "failed"),
        )

    def _on_mapped(
        self, layer: Points, found: Any, coordinates: np.ndarray, problem: str | None
    ) -> None:
        if layer not in self._viewer.layers:
            return
        layer.metadata[_results.ADATA_KEY].obsm[MAP_KEY] = coordinates
        self._status.value = f"{len(found.rows):,} nuclei mapped"
        if problem is not None:
            show_warning(
                f"{WHAT}: the map is shown but could not be saved into "
                f"{_results.store_path_of(layer)}: {problem}"
            )
        if layer is self.layer:
            self.show_map(found)

    # -------------------------------------------------------------- selection
    def _on_selection(self, _event: Any = None) -> None:
        """Ring on the map the nuclei selected on the slide."""
        layer = self.layer
        if layer is None or self.map is None:
            return
        rows = selected_rows(layer)
        rows = rows[rows < len(self._position)]
        indices = self._position[rows]
        indices = indices[indices >= 0]
        self.canvas.set_marks(indices)
        if len(rows):
            self._status.value = f"{len(rows):,} selected, {len(indices):,} on the map"

    def _select(self, rows: np.ndarray) -> None:
        layer = self.layer
        layer.selected_data = set(np.asarray(rows).tolist())
        highlight(self._viewer, layer, rows)

    def _on_lasso(self, indices: np.ndarray) -> None:
        if self.map is not None and self.layer is not None:
            self._select(self.map.rows[indices])

    def _on_click(self, index: int) -> None:
        if self.map is None or self.layer is None:
            return
        row = int(self.map.rows[index])
        self._select(np.array([row]))
        from ._jump import jump_to

        jump_to(self._viewer, self.layer, row)

    # ------------------------------------------------------------- thumbnails
    def _on_thumbnails(self, on: bool) -> Any:
        if not on or self.map is None:
            self.canvas.set_thumbnails(np.empty((0, 1, 1, 3), np.uint8), [], [])
            return None
        layer = self.layer
        slide = layer.metadata.get(SLIDE_PATH_KEY)
        image = None if slide else image_of(self._viewer, layer)
        if slide is None and image is None:
            show_error(
                f"{WHAT}: thumbnails need the slide file or the image of "
                f"{layer.name!r}; open the slide the results came from"
            )
            return None
        pixels = (
            None
            if image is None
            else (image.data[0] if image.multiscale else image.data)
        )
        centroids = layer.features[["x", "y"]].to_numpy(dtype=np.float64)
        found = self.map
        return self.job.start(
            thumbnail_job,
            found.xy,
            centroids[found.rows],
            int(self._grid.value),
            None if slide is None else Path(slide),
            pixels,
            float(layer.metadata.get(MPP_KEY) or THUMBNAIL_MPP),
            on_result=lambda result: self._on_thumbnails_read(found, *result),
        )

    def _on_thumbnails_read(
        self, found: Any, indices: np.ndarray, boxes: np.ndarray, images: np.ndarray
    ) -> None:
        if found is not self.map or not self._thumbnails.value:
            return  # another map, or unticked meanwhile
        self.canvas.set_thumbnails(images, boxes, indices)
        self._status.value = f"{len(indices)} thumbnails"


def _default_sample() -> int:
    """The map's default sample size, as its core function sets it."""
    import inspect

    from napari_lemon.analysis import morphology_map

    default = inspect.signature(morphology_map.embed_2d).parameters["sample"].default
    return int(default) if isinstance(default, int) else DEFAULT_SAMPLE


def _theme_colours(viewer: napari.viewer.Viewer) -> tuple[str, str]:
    """Background and text colours of the viewer's theme."""
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(viewer.theme)
        return theme.canvas.as_hex(), theme.text.as_hex()
    except (KeyError, AttributeError, ValueError):
        return "#262930", "#f0f1f2"
