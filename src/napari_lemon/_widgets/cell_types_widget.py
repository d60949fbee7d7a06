"""The "LEMON cell types" panel: brush a few nuclei per type, a probe types them all.

The user names cell types (:mod:`._types_list`), turns the brush on and drags
over nuclei of the active type on the slide (:mod:`._brush`; a click labels one
nucleus). Each labelling action is saved at once beside the results store
(:class:`napari_lemon.annotations.Annotations`) and retrains the linear probe in
a worker (:mod:`._probe_job`): its cross-validated accuracy and confusion matrix
show in the panel (:mod:`._probe_report`) and every nucleus is recoloured by its
predicted type in the type's colour, its opacity from the probe's confidence.
"Suggest next" shows the nuclei the probe is least sure of (a diverse few),
"Find similar" the nuclei most like the chosen one, as thumbnails that centre
the view on them. A probe saves to a ``.safetensors`` file (its predictions
into the store) and applies to other results of the same encoder.

What the panel keeps per layer is in :mod:`._layer_typing`; it computes nothing
itself.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import (
    notification_manager,
    show_error,
    show_info,
    show_warning,
)
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _results
from ._brush import DEFAULT_RADIUS_UM, Brush, Stroke
from ._highlight import highlight
from ._jump import jump_to
from ._layer_thumbnails import thumbnail_source
from ._layer_typing import LABEL_COLUMN, LayerTyping, probe_columns
from ._nuclei_display import confidence_alpha, recolour
from ._probe_job import REGION_UM, ProbeOutcome, ProbeRequest, ProbeRunner
from ._probe_report import ProbeReport
from ._thumbnail_grid import ThumbnailGrid
from ._types_list import TypesList

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

logger = logging.getLogger(__name__)

PROBE_NAME = "cell_type"
LABELS, PREDICTION, CONFIDENCE = "labels", "prediction", "prediction × confidence"
STORE_POLL_MS = 1000  # how often an unsaved layer is checked for a new store
PROBE_FILTER = "LEMON probe (*.probe.safetensors *.safetensors)"
USER_ERRORS = (ValueError, OSError)
NO_LAYER = "no LEMON nuclei layer: analyse an image with LEMON nuclei first"


class CellTypesWidget(QWidget):
    """Dock panel: cell types, brush, live probe, suggestions, similar nuclei.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.state: LayerTyping | None = None
        self._applied: dict[int, str] = {}  # generation -> probe file applied
        self._jobs: dict[str, Any] = {}
        self.brush = Brush(viewer, self._on_stroke, on_off=self._on_brush_off)
        self.runner = ProbeRunner(self._probe_request, self._on_outcome, self._on_busy)
        self._make_controls()
        self._connect()
        self._store_timer = QTimer()
        self._store_timer.setInterval(STORE_POLL_MS)
        self._store_timer.timeout.connect(self._check_store)
        self._store_timer.start()
        self._refresh_layers()

    # ------------------------------------------------------------------ layout
    def _make_controls(self) -> None:
        self.layer_box = QComboBox()
        self.save_status = QLabel("")
        self.save_status.setWordWrap(True)
        self.types = TypesList(on_active=self._on_active_type)

        # labelling
        self.brush_button = QPushButton("Brush")
        self.brush_button.setCheckable(True)
        self.brush_button.setToolTip(
            "Drag over nuclei to label them with the active type; click one to "
            "label it. The view does not pan while the brush is on"
        )
        self.radius = QDoubleSpinBox()
        self.radius.setRange(1.0, 500.0)
        self.radius.setValue(DEFAULT_RADIUS_UM)
        self.radius.setSuffix(" µm")
        self.erase = QCheckBox("erase")
        self.erase.setToolTip("Brushing and clicks remove labels instead")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last labelling (Ctrl+Z on the nuclei)")
        self.last_action = QLabel("")
        tools = QHBoxLayout()
        for widget in (self.brush_button, self.radius, self.erase, self.undo_button):
            tools.addWidget(widget)

        # probe
        self.report = ProbeReport()
        self.colour_by = QComboBox()
        self.colour_by.addItems([CONFIDENCE, PREDICTION, LABELS])
        self.save_probe_button = QPushButton("Save probe…")
        self.apply_probe_button = QPushButton("Apply probe…")
        probe_buttons = QHBoxLayout()
        probe_buttons.addWidget(self.save_probe_button)
        probe_buttons.addWidget(self.apply_probe_button)

        # suggestions and similar nuclei
        self.n_suggest = QSpinBox()
        self.n_suggest.setRange(1, 96)
        self.n_suggest.setValue(12)
        self.suggest_button = QPushButton("Suggest next")
        self.suggestions = ThumbnailGrid(
            empty_text="The nuclei the probe is least sure of show here"
        )
        self.n_similar = QSpinBox()
        self.n_similar.setRange(1, 96)
        self.n_similar.setValue(12)
        self.similar_button = QPushButton("Find similar")
        self.similar_button.setToolTip(
            "The nuclei most like the selected (or last clicked) one"
        )
        self.similar = ThumbnailGrid(
            empty_text="Select or click a nucleus, then Find similar"
        )

        # assemble
        top = QFormLayout()
        top.addRow("nuclei", self.layer_box)
        labelling = _group("Labelling", tools, self.last_action)
        colour = QFormLayout()
        colour.addRow("colour by", self.colour_by)
        probe = _group("Probe", self.report, colour, probe_buttons)
        suggest = _group(
            "Suggest next", _row(QLabel("nuclei"), self.n_suggest, self.suggest_button),
            self.suggestions,
        )  # fmt: skip
        similar = _group(
            "Find similar", _row(QLabel("nuclei"), self.n_similar, self.similar_button),
            self.similar,
        )  # fmt: skip
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.save_status)
        layout.addWidget(_group("Cell types", self.types))
        for group in (labelling, probe, suggest, similar):
            layout.addWidget(group)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.layer_box.currentIndexChanged.connect(self._on_layer_chosen)
        self.brush_button.toggled.connect(self.set_brush)
        self.radius.valueChanged.connect(self._on_radius)
        self.undo_button.clicked.connect(lambda: self.undo())
        self.colour_by.currentTextChanged.connect(lambda _: self.recolour())
        self.save_probe_button.clicked.connect(lambda: self.save_probe())
        self.apply_probe_button.clicked.connect(lambda: self.apply_probe())
        self.suggest_button.clicked.connect(lambda: self.suggest_next())
        self.similar_button.clicked.connect(lambda: self.find_similar())
        self.suggestions.on_clicked(self.jump)
        self.similar.on_clicked(self.jump)
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh_layers)
        # NOTE: a layer's store is recorded just after the layer is added
        events.inserted.connect(lambda _: QTimer.singleShot(0, self._check_store))
        self._viewer.layers.selection.events.active.connect(self._follow_active)

    # ------------------------------------------------------------------ layers
    @property
    def layer(self) -> Points | None:
        """The nuclei layer the panel works on."""
        return None if self.state is None else self.state.layer

    def _refresh_layers(self, _event: Any = None) -> None:
        layers = _results.nuclei_layers(self._viewer)
        current = self.layer if self.layer in layers else None
        if current is None and layers:
            current = _results.current_nuclei_layer(self._viewer)
        blocked = self.layer_box.blockSignals(True)
        try:
            self.layer_box.clear()
            for layer in layers:
                self.layer_box.addItem(layer.name, layer)
            if current is not None:
                self.layer_box.setCurrentIndex(layers.index(current))
        finally:
            self.layer_box.blockSignals(blocked)
        self.attach(current)

    def _follow_active(self, _event: Any = None) -> None:
        active = self._viewer.layers.selection.active
        if _results.is_nuclei_layer(active) and active is not self.layer:
            index = self.layer_box.findData(active)
            if index >= 0:
                self.layer_box.setCurrentIndex(index)

    def _on_layer_chosen(self, index: int) -> None:
        self.attach(self.layer_box.itemData(index) if index >= 0 else None)

    def attach(self, layer: Points | None) -> LayerTyping | None:
        """Work on ``layer`` (a LEMON nuclei layer; None: none)."""
        if self.state is not None and layer is self.state.layer:
            return self.state
        self.runner.cancel()
        self.set_brush(False)
        self.state = None if layer is None else self._state_of(layer)
        state = self.state
        self.types.set_annotations(None if state is None else state.annotations)
        self.suggestions.clear()
        self.similar.clear()
        if state is None:
            self.report.show_waiting(NO_LAYER)
        elif state.embeddings is None:
            self.report.show_waiting(_no_embeddings(state.layer))
        elif state.probe is not None:
            self.report.show_metrics(state.metrics, self._source_text(state))
        elif state.annotations.labels():
            state.write_labels()
            self.runner.request()
        else:
            self.report.show_waiting("label nuclei of two cell types to train a probe")
        self._update_status()
        return state

    def _state_of(self, layer: Points) -> LayerTyping | None:
        state = self._states.get(layer)
        if state is not None:
            return state
        try:
            state = LayerTyping(layer)
        except (KeyError, ValueError) as err:
            show_error(f"LEMON cell types cannot use layer {layer.name!r}: {err}")
            return None
        if state.load_error:
            show_error(f"LEMON cell types: {state.load_error}")
        state.on_change(lambda: self._on_annotations_changed(state))
        layer.bind_key("Control-z", lambda _layer: self.undo(), overwrite=True)
        self._states[layer] = state
        return state

    def _check_store(self) -> None:
        """Start saving (or load the labels) once the layer's store is known."""
        state = self.state
        what = None if state is None else state.follow_store()
        if what == "saved":
            self._report_saving(state)
        elif what == "loaded":
            self.types.set_annotations(state.annotations)
            if state.annotations.labels():
                state.write_labels()
                self.runner.request()
        elif what == "conflict":
            show_warning(f"LEMON cell types: {state.load_error}")
        if what is not None:
            self._update_status()

    # ------------------------------------------------------------- labelling
    def set_brush(self, on: bool) -> None:
        """Turn the brush on or off on the current layer."""
        on = bool(on)
        state = self.state
        if on and state is None:
            show_error(f"LEMON cell types: {NO_LAYER}")
            on = False
        if on:
            self.brush.attach(state.layer, state.brush_index())
            self.brush.radius_um = float(self.radius.value())
            self.brush.colour = self._active_colour()
            self.brush.set_enabled(True)
        else:
            self.brush.set_enabled(False, quiet=True)
        blocked = self.brush_button.blockSignals(True)
        self.brush_button.setChecked(on)
        self.brush_button.blockSignals(blocked)

    def _on_brush_off(self, _on: bool) -> None:
        self.set_brush(False)

    def _on_radius(self, value: float) -> None:
        self.brush.radius_um = float(value)

    def _on_active_type(self, _name: str | None) -> None:
        self.brush.colour = self._active_colour()

    def _active_colour(self) -> str:
        name = self.types.active_type
        annotations = self.types.annotations
        return "#ffffff" if name is None else annotations.colour_of(name)

    def _on_stroke(self, stroke: Stroke) -> None:
        """Label (or, with erase, unlabel) the nuclei a stroke or click touched."""
        state = self.state
        if state is None:
            return
        if not len(stroke.rows):
            self.last_action.setText("no nucleus there" if stroke.click else "")
            return
        if stroke.click:
            state.last_row = int(stroke.rows[0])
        self.label_rows(stroke.rows, erase=self.erase.isChecked())

    def label_rows(
        self, rows: Any, name: str | None = None, erase: bool = False
    ) -> int:
        """Label nuclei by row with type ``name`` (default: the active type).

        Returns how many labels changed; with ``erase`` the labels are removed.
        """
        state = self.state
        if state is None:
            show_error(f"LEMON cell types: {NO_LAYER}")
            return 0
        ids = state.ids[np.asarray(rows, dtype=np.int64)]
        if erase:
            changed = state.annotations.unlabel(ids)
            self.last_action.setText(f"{changed:,} labels removed")
            return changed
        name = name or self.types.active_type
        if name is None:
            show_error("LEMON cell types: add a cell type first (Add…), then brush")
            return 0
        changed = state.annotations.label(ids, name)
        self.last_action.setText(f"{changed:,} nuclei labelled {name!r}")
        return changed

    def undo(self) -> bool:
        """Undo the last labelling action of the current layer."""
        state = self.state
        if state is None or not state.annotations.undo():
            self.last_action.setText("nothing to undo")
            return False
        self.last_action.setText("undone")
        return True

    def _on_annotations_changed(self, state: LayerTyping) -> None:
        """After any change of a layer's annotations: save, columns, colours, probe."""
        state.save()
        self._report_saving(state)
        if state is not self.state:
            return
        self.types.refresh()
        self.brush.colour = self._active_colour()
        self.undo_button.setEnabled(state.annotations.can_undo)
        state.write_labels()
        self.recolour()
        if state.embeddings is None:
            self.report.show_waiting(_no_embeddings(state.layer))
        else:
            self.runner.request()
        self._update_status()

    def _report_saving(self, state: LayerTyping) -> None:
        error = state.save_error
        if error is not None and error != getattr(state, "_shown_error", None):
            show_error(f"LEMON cell types: {error}")
        state._shown_error = error

    def _update_status(self) -> None:
        state = self.state
        self.save_status.setText(NO_LAYER if state is None else state.save_state())
        can_undo = state is not None and state.annotations.can_undo
        self.undo_button.setEnabled(can_undo)

    # ------------------------------------------------------------------ probe
    def _probe_request(self, generation: int) -> ProbeRequest | None:
        from napari_lemon.analysis.probe import region_groups
        from napari_lemon.store import PROVENANCE_KEY

        state = self.state
        if state is None or state.embeddings is None:
            return None
        rows, names = state.labelled()
        xy = state.centroids_xy[rows]
        groups = region_groups(xy[:, 0], xy[:, 1], REGION_UM / state.mpp)
        annotations = state.annotations
        classes = annotations.type_names()
        return ProbeRequest(
            generation, state.embeddings, rows, names, classes,
            [annotations.colour_of(c) for c in classes], groups,
            dict(state.adata.uns.get(PROVENANCE_KEY, {})), PROBE_NAME,
        )  # fmt: skip

    def _on_busy(self, busy: bool) -> None:
        if busy:
            self.report.show_training()

    def _on_outcome(self, outcome: ProbeOutcome) -> None:
        state = self.state
        if state is None:
            return
        applied = self._applied.pop(outcome.generation, None)
        if outcome.waiting is not None:
            if state.probe_source == "labels":
                state.drop_predictions()
                self.recolour()
            self.report.show_waiting(outcome.waiting)
            return
        state.write_predictions(outcome.probe, outcome.proba)
        state.metrics = outcome.metrics or outcome.probe.metrics
        state.probe_source = applied or "labels"
        self.report.show_metrics(state.metrics, self._source_text(state))
        self.recolour()

    @staticmethod
    def _source_text(state: LayerTyping) -> str:
        if state.probe_source == "labels":
            return ""
        return f"probe from {Path(state.probe_source).name}"

    @property
    def probe(self) -> Any:
        """The current layer's probe (trained here or applied), or None."""
        return None if self.state is None else self.state.probe

    def recolour(self) -> None:
        """Colour the nuclei as "colour by" says: labels, prediction, confidence."""
        state = self.state
        if state is None:
            return
        layer, mode, colours = (
            state.layer,
            self.colour_by.currentText(),
            state.colours(),
        )
        name, proba_name = probe_columns(
            PROBE_NAME if state.probe is None else state.probe.name
        )
        if mode != LABELS and state.probe is not None and name in layer.features:
            classes = list(state.probe.classes)
            palette = {c: colours[c] for c in classes}
            alpha = None
            if mode == CONFIDENCE:
                confidence = layer.features[proba_name].to_numpy(np.float32)
                alpha = confidence_alpha(confidence, len(classes))
            recolour(layer, name, palette, alpha)
        elif LABEL_COLUMN in layer.features and state.annotations.types:
            names = state.annotations.type_names()
            recolour(layer, LABEL_COLUMN, {n: colours[n] for n in names})

    def save_probe(self, path: str | Path | None = None) -> Path | None:
        """Save the probe; its predictions (and the labels) go into the store.

        Parameters
        ----------
        path : str or Path, optional
            The ``.safetensors`` file; None asks, starting at
            ``<store>.<name>.probe.safetensors`` beside the store.
        """
        from napari_lemon.store_columns import write_analysis

        state = self.state
        if state is None or state.probe is None:
            show_error(
                "LEMON cell types: no probe to save yet; label nuclei of two types"
            )
            return None
        store = _results.store_path_of(state.layer)
        if path is None:
            path = self._ask_path(self.default_probe_path(), save=True)
            if not path:
                return None
        try:
            saved = state.probe.save(path)
            if store is not None:
                write_analysis(store, **state.prediction_columns())
        except USER_ERRORS as err:
            show_error(f"LEMON cell types: could not save the probe: {err}")
            return None
        if store is None:
            show_warning(
                f"LEMON: probe saved to {saved}; the predictions are not in a results "
                "store yet: save the results with LEMON nuclei > Save results…"
            )
        else:
            show_info(
                f"LEMON: probe saved to {saved}; predictions written to {store.name}"
            )
        return Path(saved)

    def default_probe_path(self) -> Path | None:
        """``<store stem>.<probe name>.probe.safetensors`` beside the store."""
        state = self.state
        store = None if state is None else _results.store_path_of(state.layer)
        if store is None:
            return None
        name = PROBE_NAME if state.probe is None else state.probe.name
        return store.with_name(f"{store.stem}.{name}.probe.safetensors")

    def apply_probe(self, path: str | Path | None = None) -> bool:
        """Predict the current layer's nuclei with a saved probe.

        A probe of another encoder, crop scale or embedding length is refused
        with an error notification, and nothing changes.
        """
        from napari_lemon.analysis.probe import LinearProbe
        from napari_lemon.store import PROVENANCE_KEY

        state = self.state
        if state is None:
            show_error(f"LEMON cell types: {NO_LAYER}")
            return False
        if state.embeddings is None:
            show_error(f"LEMON cell types: {_no_embeddings(state.layer)}")
            return False
        if path is None:
            path = self._ask_path(None, save=False)
            if not path:
                return False
        store = _results.store_path_of(state.layer)
        where = store.name if store is not None else f"layer {state.layer.name!r}"
        try:
            probe = LinearProbe.load(path)
            probe.check_compatible(
                dict(state.adata.uns.get(PROVENANCE_KEY, {})), where,
                embed_dim=state.embeddings.shape[1],
            )  # fmt: skip
        except USER_ERRORS as err:
            show_error(f"LEMON cell types: cannot apply {Path(path).name}: {err}")
            return False
        generation = self.runner.predict(probe, state.embeddings)
        self._applied[generation] = str(path)
        return True

    def _ask_path(self, start: Path | None, save: bool) -> str:
        from qtpy.QtWidgets import QFileDialog

        start_text = str(start) if start is not None else str(Path.home())
        if save:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save LEMON probe", start_text, PROBE_FILTER
            )
        else:
            path, _ = QFileDialog.getOpenFileName(
                self, "Apply a LEMON probe", start_text, PROBE_FILTER
            )
        return path

    # ------------------------------------------------- suggestions, similar
    def suggest_next(self) -> Any:
        """Show the nuclei worth labelling next as thumbnails.

        With a probe: the least sure unlabelled nuclei, a diverse few; before
        one: diverse nuclei to start with.
        """
        from napari_lemon.analysis.suggest import suggest_next

        state = self.state
        if state is None:
            show_error(f"LEMON cell types: {NO_LAYER}")
            return None
        if state.embeddings is None:
            show_error(f"LEMON cell types: {_no_embeddings(state.layer)}")
            return None
        proba, embeddings = state.proba, state.embeddings
        labelled, n = state.labelled_mask(), int(self.n_suggest.value())

        def pick() -> np.ndarray:
            return suggest_next(proba, embeddings, labelled, n=n)

        return self._thumbnails_job("suggest", pick, self.suggestions, self._caption)

    def find_similar(self, row: int | None = None) -> Any:
        """Ring and list the nuclei most like ``row`` (default: the chosen one)."""
        from napari_lemon.analysis.neighbours import nearest_neighbours

        state = self.state
        if state is None:
            show_error(f"LEMON cell types: {NO_LAYER}")
            return None
        if state.embeddings is None:
            show_error(f"LEMON cell types: {_no_embeddings(state.layer)}")
            return None
        row = self.chosen_row() if row is None else int(row)
        if row is None:
            show_error(
                "LEMON cell types: Find similar needs a nucleus: click one with the "
                "brush, select one, or click a thumbnail"
            )
            return None
        embeddings, k = state.embeddings, int(self.n_similar.value())
        similarity: dict[int, float] = {}

        def pick() -> np.ndarray:
            rows, sims = nearest_neighbours(embeddings, row, k=k)
            similarity.update(zip(rows.tolist(), sims.tolist(), strict=True))
            return rows

        def caption(r: int) -> str:
            return f"{similarity.get(r, 0.0):.2f}\n{self._caption(r)}"

        def show(rows: np.ndarray) -> None:
            highlight(self._viewer, state.layer, rows)
            state.layer.selected_data = set(rows.tolist())

        return self._thumbnails_job("similar", pick, self.similar, caption, show)

    def chosen_row(self) -> int | None:
        """The nucleus last clicked or jumped to, else the first selected one."""
        state = self.state
        if state is None:
            return None
        selected = state.layer.selected_data
        if state.last_row is not None and (not selected or state.last_row in selected):
            return state.last_row
        return min(selected) if selected else None

    def jump(self, row: int) -> None:
        """Centre the view on nucleus ``row``, select it and ring it."""
        state = self.state
        if state is None:
            return
        jump_to(self._viewer, state.layer, row, select=True)
        state.last_row = int(row)
        highlight(self._viewer, state.layer, [int(row)])

    def _caption(self, row: int) -> str:
        state = self.state
        if state is None or state.probe is None:
            return ""
        k = int(state.proba[row].argmax())
        return f"{state.probe.classes[k]} {state.proba[row, k]:.2f}"

    def _thumbnails_job(
        self,
        what: str,
        pick: Callable[[], np.ndarray],
        grid: ThumbnailGrid,
        caption: Callable[[int], str],
        then: Callable[[np.ndarray], Any] | None = None,
    ) -> Any:
        """Pick rows and read their thumbnails in a worker; show them in ``grid``."""
        if self._jobs.get(what) is not None:
            return None
        state = self.state
        source = thumbnail_source(self._viewer, state.layer)
        centroids = state.centroids_xy

        def job() -> tuple[np.ndarray, np.ndarray]:
            rows = np.asarray(pick(), dtype=np.int64)
            return rows, source.read(centroids[rows])

        def done(result: tuple[np.ndarray, np.ndarray]) -> None:
            rows, images = result
            if state is not self.state:
                return
            grid.set_items(images, [caption(int(r)) for r in rows], rows.tolist())
            if then is not None:
                then(rows)
            if not source.found:
                show_warning(
                    "LEMON cell types: no slide file or image under the nuclei, so "
                    "the thumbnails are blank; open the slide the nuclei came from"
                )

        worker = thread_worker(job, ignore_errors=True)()
        worker.returned.connect(done)
        worker.errored.connect(lambda err: _report(f"LEMON cell types: {what}", err))
        worker.finished.connect(lambda: self._jobs.pop(what, None))
        self._jobs[what] = worker
        worker.start()
        return worker

    # ------------------------------------------------------------------ close
    def close_panel(self) -> None:
        """Stop timers and the brush (the panel is going away)."""
        self._store_timer.stop()
        self.runner.cancel()
        self.set_brush(False)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.close_panel()
        super().closeEvent(event)


def _no_embeddings(layer: Any) -> str:
    from napari_lemon.store import EMBEDDING_KEY

    return (
        f"layer {layer.name!r} has no embeddings (obsm[{EMBEDDING_KEY!r}]), which "
        "the probe reads: analyse the image with LEMON nuclei, or load results "
        "saved with their embeddings"
    )


def _report(what: str, err: Exception) -> None:
    logger.debug("%s failed", what, exc_info=err)
    if isinstance(err, USER_ERRORS):
        show_error(f"{what} failed: {err}")
    else:
        notification_manager.receive_error(type(err), err, err.__traceback__)


def _group(title: str, *parts: Any) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    for part in parts:
        if isinstance(part, QWidget):
            layout.addWidget(part)
        else:
            layout.addLayout(part)
    return box


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
