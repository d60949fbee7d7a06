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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import (
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
    QVBoxLayout,
    QWidget,
)

from ..wording import counted
from . import _results
from ._brush import DEFAULT_RADIUS_UM, Brush, Stroke
from ._layer_typing import (
    CONFIDENCE,
    LABELS,
    NO_LAYER,
    PREDICTION,
    LayerTyping,
    no_embeddings,
)
from ._nucleus_finder import NucleusFinder
from ._probe_files import (
    ask_probe_path,
    default_probe_path,
    load_probe_for,
    results_folder,
    save_probe,
)
from ._probe_job import ProbeOutcome, ProbeRequest, ProbeRunner
from ._probe_report import ProbeReport
from ._types_list import TypesList

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

logger = logging.getLogger(__name__)

PROBE_NAME = "cell_type"
MIN_RADIUS_UM, MAX_RADIUS_UM = 1.0, 500.0
STORE_POLL_MS = 1000  # how often an unsaved layer is checked for a new store
USER_ERRORS = (ValueError, OSError)


class CellTypesWidget(QWidget):
    """Dock panel: cell types, brush, live probe, suggestions, similar nuclei.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = _results.unwrapped(viewer)  # see unwrapped()
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.state: LayerTyping | None = None
        self._applied: dict[int, str] = {}  # generation -> probe file applied
        self.last_outcome: ProbeOutcome | None = None  # with its timings
        self.brush = Brush(self._viewer, self._on_stroke, on_off=self._on_brush_off)
        self.runner = ProbeRunner(
            self._probe_request, self._on_outcome, self._on_busy, self._on_metrics,
            parent=self,
        )  # fmt: skip
        self._make_controls()
        self._connect()
        self._store_timer = QTimer(self)
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
            "Drag over nuclei to label every nucleus the brush circle passes over "
            "with the active type. A click labels one nucleus: the one nearest to "
            "it within the brush radius. The view does not pan while the brush is on"
        )
        self.radius = QDoubleSpinBox()
        self.radius.setRange(MIN_RADIUS_UM, MAX_RADIUS_UM)
        self.radius.setValue(DEFAULT_RADIUS_UM)
        self.radius.setSuffix(" µm")
        self.radius.setToolTip(
            f"Brush radius, {MIN_RADIUS_UM:g} to {MAX_RADIUS_UM:g} µm (the largest "
            "this box takes): a drag labels the nuclei within it of the path, a "
            "click the nearest nucleus within it"
        )
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
        self.finder = NucleusFinder(self._viewer, lambda: self.state)

        # assemble
        top = QFormLayout()
        top.addRow("nuclei", self.layer_box)
        labelling = _group("Labelling", tools, self.last_action)
        colour = QFormLayout()
        colour.addRow("colour by", self.colour_by)
        probe = _group("Probe", self.report, colour, probe_buttons)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.save_status)
        layout.addWidget(_group("Cell types", self.types))
        for group in (labelling, probe, self.finder):
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
        self._show_types(state)
        self.finder.clear()
        if state is None:
            self.report.show_waiting(NO_LAYER)
        elif state.embeddings is None:
            self.report.show_waiting(no_embeddings(state.layer))
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
        self._warn_loaded(state)
        state.on_change(lambda: self._on_annotations_changed(state))
        layer.bind_key("Control-z", lambda _layer: self.undo(), overwrite=True)
        self._states[layer] = state
        return state

    def _show_types(self, state: LayerTyping | None) -> None:
        """The types of ``state``, counting the labels of its layer's nuclei."""
        if state is None:
            self.types.set_annotations(None)
        else:
            self.types.set_annotations(state.annotations, state.counts)

    @staticmethod
    def _warn_loaded(state: LayerTyping) -> None:
        """What the annotations warned about on loading, as a notification."""
        if state.load_warning:
            show_warning(f"LEMON cell types: {state.load_warning}")

    def _check_store(self) -> None:
        """Start saving (or load the labels) once the layer's store is known."""
        state = self.state
        what = None if state is None else state.follow_store()
        if what == "saved":
            self._report_saving(state)
        elif what == "loaded":
            self._show_types(state)
            self._warn_loaded(state)
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
            self.last_action.setText(f"{counted(changed, 'label')} removed")
            return changed
        name = name or self.types.active_type
        if name is None:
            show_error("LEMON cell types: add a cell type first (Add…), then brush")
            return 0
        changed = state.annotations.label(ids, name)
        labelled = counted(changed, "nucleus", "nuclei")
        self.last_action.setText(f"{labelled} labelled {name!r}")
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
        mode = self.colour_by.currentText()
        if state.probe is None or mode == LABELS or state.colours() != state.shown:
            self.recolour()  # else the prediction colours wait for the new probe
        if state.embeddings is None:
            self.report.show_waiting(no_embeddings(state.layer))
        else:
            self.runner.request()
        self._update_status()

    def _report_saving(self, state: LayerTyping) -> None:
        """A failed save as an error notification, once per new reason."""
        error = state.save_error
        if error is not None and error != state.shown_error:
            show_error(f"LEMON cell types: {error}")
        state.shown_error = error

    def _update_status(self) -> None:
        state = self.state
        self.save_status.setText(NO_LAYER if state is None else status_text(state))
        can_undo = state is not None and state.annotations.can_undo
        self.undo_button.setEnabled(can_undo)

    # ------------------------------------------------------------------ probe
    def _probe_request(self, generation: int) -> ProbeRequest | None:
        state = self.state
        return None if state is None else state.probe_request(generation, PROBE_NAME)

    def _on_busy(self, busy: bool) -> None:
        if busy:
            self.report.show_training()

    def _on_outcome(self, outcome: ProbeOutcome) -> None:
        self.last_outcome = outcome
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
        state.probe_source = applied or "labels"
        if applied is None:  # the accuracy follows from the cross-validation
            self.report.show_measuring(outcome.probe.n_labels)
        else:
            state.metrics = outcome.probe.metrics
            self.report.show_metrics(state.metrics, self._source_text(state))
        self.recolour()

    def _on_metrics(self, generation: int, metrics: Any, seconds: float) -> None:
        """The cross-validation of the probe just trained: show it, keep it."""
        state = self.state
        if state is None or state.probe is None or state.probe_source != "labels":
            return
        state.metrics = metrics
        state.probe.metrics.update(metrics.to_dict())  # saved with the probe
        self.report.show_metrics(metrics)

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
        if self.state is not None:
            self.state.recolour(self.colour_by.currentText())

    def save_probe(self, path: str | Path | None = None) -> Path | None:
        """Save the probe; its predictions (and the labels) go into the store.

        Parameters
        ----------
        path : str or Path, optional
            The ``.safetensors`` file; None asks, starting at
            :meth:`default_probe_path`.
        """
        state = self.state
        if state is None:
            show_error(f"LEMON cell types: {NO_LAYER}")
            return None
        if state.probe is None:
            show_error("LEMON cell types: no probe yet; label nuclei of two types")
            return None
        path = path or ask_probe_path(self, self.default_probe_path(), save=True)
        if not path:
            return None
        try:
            saved, store = save_probe(state, path)
        except USER_ERRORS as err:
            show_error(f"LEMON cell types: could not save the probe: {err}")
            return None
        if store is None:
            show_warning(
                f"LEMON: probe saved to {saved}; the predictions are not in a results "
                "store yet: save the results with LEMON nuclei > Save results…"
            )
        else:
            show_info(f"LEMON: probe saved to {saved}; predictions in {store.name}")
        return saved

    def default_probe_path(self) -> Path | None:
        """``<store stem>.<probe name>.probe.safetensors`` beside the store."""
        state = self.state
        if state is None:
            return None
        return default_probe_path(state, getattr(state.probe, "name", PROBE_NAME))

    def apply_probe(self, path: str | Path | None = None) -> bool:
        """Predict the current layer's nuclei with a saved probe.

        A probe of another encoder, crop scale or embedding length is refused
        with an error notification, and nothing changes.
        """
        state = self.state
        if state is None or state.embeddings is None:
            why = NO_LAYER if state is None else no_embeddings(state.layer)
            show_error(f"LEMON cell types: {why}")
            return False
        path = path or ask_probe_path(self, results_folder(state), save=False)
        if not path:
            return False
        try:
            probe = load_probe_for(state, path)
        except USER_ERRORS as err:
            show_error(f"LEMON cell types: cannot apply {Path(path).name}: {err}")
            return False
        generation = self.runner.predict(probe, state.embeddings)
        self._applied[generation] = str(path)
        return True

    # ------------------------------------------------------------------ close
    def close_panel(self) -> None:
        """Stop timers and the brush (the panel is going away)."""
        self._store_timer.stop()
        self.runner.cancel()
        self.set_brush(False)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.close_panel()
        super().closeEvent(event)


def status_text(state: LayerTyping) -> str:
    """Where the labels are kept, and what the loaded ones warned about."""
    lines = [state.save_state()]
    if state.load_warning:
        lines.append(state.load_warning)
    elsewhere = state.n_elsewhere()
    if elsewhere:
        lines.append(
            f"{elsewhere:,} labels are of nuclei not in layer {state.layer.name!r} "
            "(labels of other results?): they are not counted and do not train "
            "the probe"
        )
    return "\n".join(lines)


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
