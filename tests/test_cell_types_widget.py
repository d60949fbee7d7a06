"""The "LEMON cell types" panel in a real napari viewer: brush, probe, save, apply.

The nuclei are synthetic: a slide of 2,000 x 1,000 level-0 px at 0.5 um/px whose
left half holds nuclei of one kind and right half of another, their embeddings
two Gaussian blobs, so a probe trained on a few brushed nuclei of each half
types every nucleus by the half it lies in. The brush is driven by mouse events
sent to napari's canvas, the path a real drag takes.

Needs a display: pytest-xvfb starts one when Xvfb is installed (see .ci/run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from needs_display import require_display

require_display()

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_lemon._widgets import CellTypesWidget  # noqa: E402
from napari_lemon._widgets import cell_types_widget as ctw  # noqa: E402
from napari_lemon._widgets._jump import jump_to  # noqa: E402
from napari_lemon._widgets._nuclei_display import (  # noqa: E402
    confidence_alpha,
    recolour,
)
from napari_lemon._widgets._results import STORE_PATH_KEY, add_nuclei  # noqa: E402
from napari_lemon._widgets._thumbnail_grid import ThumbnailGrid  # noqa: E402
from napari_lemon.annotations import Annotations, annotations_path  # noqa: E402
from napari_lemon.store import build_results, read_results, write_results  # noqa: E402

MPP = 0.5
WIDTH, HEIGHT = 2000.0, 1000.0
DIM = 384
ENCODER = {"name": "test-encoder", "sha256": "ab" * 32, "mpp": 0.25, "crop_size": 40}
PROBE_TIMEOUT_MS = 30_000
TUMOUR, STROMA = "#e69f00", "#56b4e9"


# ------------------------------------------------------------------ fixtures
def synthetic_results(n: int = 600, seed: int = 0, encoder: dict | None = None):
    """Results whose nuclei's embeddings say which half of the slide they lie in."""
    rng = np.random.default_rng(seed)
    xy = np.column_stack(
        [rng.uniform(20, WIDTH - 20, n), rng.uniform(20, HEIGHT - 20, n)]
    )
    right = xy[:, 0] > WIDTH / 2
    centres = np.random.default_rng(99).normal(0, 1, (2, DIM))  # the same kinds
    embeddings = centres[right.astype(int)] + rng.normal(0, 0.8, (n, DIM))
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(n, dtype=np.int64) * 7 + 1000 * seed,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "area_um2": np.full(n, 30.0),
            "segmenter": "classical",
            "tile_id": np.zeros(n, np.int64),
        }
    )
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * 5
    outlines = [xy[i] + corners for i in range(n)]
    provenance = {
        "source": {"name": f"synthetic-{seed}.tif"},
        "mpp": MPP,
        "encoder": dict(encoder or ENCODER),
    }
    adata = build_results(obs, embeddings.astype(np.float16), outlines, provenance)
    return adata, right


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def open_results(viewer, path: Path, name: str | None = None):
    """A nuclei layer of saved results, as LEMON nuclei > Load results makes it."""
    adata = read_results(path)
    layer = add_nuclei(viewer, adata, None, MPP, name=name or f"{path.name} nuclei")
    layer.metadata[STORE_PATH_KEY] = path
    return layer


@pytest.fixture
def store(tmp_path):
    adata, right = synthetic_results()
    path = write_results(adata, tmp_path / "slide.lemon.h5ad")
    return path, right


@pytest.fixture
def panel(viewer, qtbot):
    panel = CellTypesWidget(viewer)
    qtbot.addWidget(panel)
    yield panel
    panel.close_panel()
    qtbot.waitUntil(lambda: panel.runner.idle, timeout=PROBE_TIMEOUT_MS)


@pytest.fixture
def loaded(viewer, panel, store):
    """The panel on the synthetic results, with two cell types."""
    path, right = store
    layer = open_results(viewer, path)
    viewer.reset_view()
    assert panel.layer is layer
    panel.types.add_type("tumour", TUMOUR)
    panel.types.add_type("stroma", STROMA)
    return panel, layer, right


def assert_rgb(colours: np.ndarray, hex_colour: str) -> None:
    """Every row of ``colours`` (RGBA, 0..1) has the RGB of ``hex_colour``."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    assert len(colours) > 0
    np.testing.assert_allclose(
        colours[:, :3], np.broadcast_to(rgb, (len(colours), 3)), atol=1e-6
    )


def new_messages(start: int) -> list[str]:
    return [str(n.message) for n in notification_manager.records[start:]]


def wait_for_probe(qtbot, panel):
    qtbot.waitUntil(
        lambda: panel.probe is not None and panel.runner.idle,
        timeout=PROBE_TIMEOUT_MS,
    )


# ------------------------------------------------------------ mouse on canvas
def canvas_pos(viewer, layer, xy) -> tuple[int, int]:
    """Canvas pixel ``(x, y)`` of level-0 ``(x, y)`` on ``layer``."""
    world = layer.data_to_world(np.array([xy[1], xy[0]], dtype=float))
    view = viewer.window._qt_viewer.canvas.view
    mapped = (view.transform * view.scene.transform).map([world[1], world[0]])
    return int(round(mapped[0])), int(round(mapped[1]))


def drag(viewer, qtbot, layer, path_xy, button: int = 1) -> None:
    """Press, move along and release at level-0 points, as a mouse would."""
    from vispy.app.canvas import MouseEvent

    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    points = [canvas_pos(viewer, layer, xy) for xy in path_xy]
    canvas.events.mouse_press(pos=points[0], modifiers=(), button=button)
    press = MouseEvent(pos=points[0], modifiers=(), button=button, type="mouse_press")
    for point in points[1:]:
        canvas.events.mouse_move(
            pos=point, modifiers=(), button=button, press_event=press
        )
        qtbot.wait(8)  # napari throttles mouse moves (5 ms)
    canvas.events.mouse_release(pos=points[-1], modifiers=(), button=button)


def click(viewer, qtbot, layer, xy) -> None:
    drag(viewer, qtbot, layer, [xy])


def line(start, end, n=12):
    t = np.linspace(0, 1, n)[:, None]
    return np.asarray(start) + t * (np.asarray(end) - np.asarray(start))


# ------------------------------------------------------------ the main path
def test_brush_two_types_train_recolour_save_reload_and_apply(
    viewer, qtbot, loaded, tmp_path
):
    panel, layer, right = loaded
    centre = viewer.scene.camera.center
    panel.radius.setValue(30.0)  # um: 60 px either side of the stroke
    panel.set_brush(True)
    assert viewer.scene.camera.mouse_pan is False

    # a stroke over each half, each with its own type
    panel.types.set_active("tumour")
    drag(viewer, qtbot, layer, line((150, 200), (850, 800)))
    panel.types.set_active("stroma")
    drag(viewer, qtbot, layer, line((1150, 800), (1850, 200)))
    labels = panel.state.annotations.labels()
    assert viewer.scene.camera.center == centre  # brushing did not pan
    counts = panel.state.annotations.counts()
    assert counts["tumour"] >= 10 and counts["stroma"] >= 10
    rows = panel.state.rows_of(list(labels))
    types = np.array([labels[i] for i in panel.state.ids[rows]])
    assert (types[right[rows]] == "stroma").all() and (~right[rows]).any()
    assert (types[~right[rows]] == "tumour").all()
    assert panel.types.row_texts() == [
        ("tumour", f"{counts['tumour']:,}"),
        ("stroma", f"{counts['stroma']:,}"),
    ]

    # the probe trains and types every nucleus by its half
    wait_for_probe(qtbot, panel)
    predicted = layer.features["probe_cell_type"].to_numpy()
    assert (predicted == np.where(right, "stroma", "tumour")).mean() > 0.97
    status, message = panel.report.status.text(), panel.report.message.text()
    assert "balanced accuracy" in status and "folds" in status
    assert "folds" not in message  # said once
    assert np.asarray(panel.report.table()).sum() == sum(counts.values())
    confidence = layer.features["probe_cell_type_proba"].to_numpy()
    assert confidence.dtype == np.float32 and (confidence >= 0.5).all()

    # recoloured in the type colours, opacity from the confidence
    colours = np.asarray(layer.face_color)
    is_stroma = predicted == "stroma"
    assert_rgb(colours[~is_stroma], TUMOUR)
    assert_rgb(colours[is_stroma], STROMA)
    np.testing.assert_allclose(colours[:, 3], confidence_alpha(confidence, 2))

    # save: annotations (on every change), probe file, columns in the store
    store = layer.metadata[STORE_PATH_KEY]
    assert annotations_path(store).exists()
    saved = panel.save_probe(panel.default_probe_path())
    assert saved == store.with_name("slide.lemon.cell_type.probe.safetensors")
    assert saved.exists()
    from napari_lemon.analysis.probe import LinearProbe

    kept = LinearProbe.load(saved).metrics
    assert kept["balanced_accuracy"] == panel.state.metrics.balanced_accuracy
    on_disk = read_results(store)
    np.testing.assert_array_equal(on_disk.obs["probe_cell_type"].to_numpy(), predicted)
    assert on_disk.obsm["probe_cell_type"].shape == (len(predicted), 2)
    assert list(on_disk.uns["probe_cell_type_colors"]) == [TUMOUR, STROMA]
    assert on_disk.obs["label"].notna().sum() == sum(counts.values())

    # reloading the store restores the types and labels
    panel.set_brush(False)
    again = open_results(viewer, store, name="reloaded")
    assert panel.layer is again
    qtbot.waitUntil(lambda: panel.state.annotations.labels() == labels, timeout=5000)
    assert panel.types.row_texts()[0] == ("tumour", f"{counts['tumour']:,}")
    wait_for_probe(qtbot, panel)  # retrained from the restored labels

    # the saved probe applied to other results of the same encoder
    other, other_right = synthetic_results(n=300, seed=1)
    other_path = write_results(other, tmp_path / "other.lemon.h5ad")
    target = open_results(viewer, other_path, name="other")
    assert panel.layer is target and panel.probe is None
    assert panel.apply_probe(saved)
    wait_for_probe(qtbot, panel)
    index, _ = LinearProbe.load(saved).predict(other.obsm["X_lemon"])
    got = target.features["probe_cell_type"].to_numpy()
    np.testing.assert_array_equal(got, np.array(["tumour", "stroma"])[index])
    assert (got == np.where(other_right, "stroma", "tumour")).mean() > 0.95
    assert "other.lemon.h5ad" not in panel.report.status.text()
    assert "probe from slide.lemon.cell_type.probe" in panel.report.status.text()


# ------------------------------------------------------------ labelling
def test_click_labels_the_nearest_nucleus_and_undo_restores(viewer, qtbot, loaded):
    panel, layer, _ = loaded
    panel.types.set_active("tumour")
    panel.set_brush(True)
    xy = panel.state.centroids_xy[5]

    click(viewer, qtbot, layer, xy + 1.5)  # within a few um of nucleus 5
    assert panel.state.annotations.labels() == {int(panel.state.ids[5]): "tumour"}
    assert panel.state.last_row == 5
    assert layer.features["label"][5] == "tumour"
    assert panel.last_action.text() == "1 nucleus labelled 'tumour'"

    click(viewer, qtbot, layer, (1000.0, -500.0))  # off the slide: nothing
    assert "no nucleus there" in panel.last_action.text()

    assert panel.undo()
    assert panel.state.annotations.labels() == {}
    assert pd.isna(layer.features["label"][5])
    assert not panel.undo()
    assert panel.last_action.text() == "nothing to undo"


def test_a_click_reaches_as_far_as_the_brush_radius(viewer, qtbot, loaded):
    panel, layer, _ = loaded
    panel.types.set_active("tumour")
    panel.set_brush(True)
    xy = panel.state.centroids_xy
    gaps = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    np.fill_diagonal(gaps, np.inf)
    lonely = int(gaps.min(axis=1).argmax())  # its neighbours lie > 80 px away
    assert gaps[lonely].min() > 80
    near = xy[lonely] + (26.0, 0.0)  # 13 um away at 0.5 um/px

    # a 10 um brush does not reach it; a 30 um brush labels that one nucleus
    click(viewer, qtbot, layer, near)
    assert panel.last_action.text() == "no nucleus there"
    panel.radius.setValue(30.0)
    click(viewer, qtbot, layer, near)

    assert panel.state.annotations.labels() == {int(panel.state.ids[lonely]): "tumour"}
    assert "within the brush radius" in panel.brush_button.toolTip()
    assert panel.radius.maximum() == ctw.MAX_RADIUS_UM
    assert f"to {ctw.MAX_RADIUS_UM:g} µm" in panel.radius.toolTip()


def test_the_types_table_shows_four_rows_at_least(loaded):
    panel, _, _ = loaded
    table = panel.types.table
    row_px = table.verticalHeader().defaultSectionSize()

    assert table.minimumHeight() >= 4 * row_px + table.horizontalHeader().height()


@pytest.mark.parametrize("panel_first", [True, False])
def test_annotations_of_other_results_are_said_and_not_counted(
    viewer, qtbot, store, panel_first
):
    from napari_lemon.annotations import results_identity

    # labels beside the store, made on other results (other nucleus ids)
    path, _ = store
    other, _ = synthetic_results(n=300, seed=1)
    beside = Annotations(annotations_path(path), results_identity(other))
    beside.add_type("tumour", TUMOUR)
    beside.label(other.obs["nucleus_id"].to_numpy()[:5], "tumour")
    start = len(notification_manager.records)

    panel = CellTypesWidget(viewer) if panel_first else None
    open_results(viewer, path)
    panel = panel or CellTypesWidget(viewer)
    qtbot.addWidget(panel)
    qtbot.waitUntil(lambda: panel.state.load_warning is not None, timeout=5000)

    warned = [m for m in new_messages(start) if "may belong to other results" in m]
    assert len(warned) == 1 and "n_obs 300 here, 600 in the results" in warned[0]
    status = panel.save_status.text()
    assert "may belong to other results" in status
    assert "5 labels are of nuclei not in layer" in status
    assert panel.types.row_texts() == [("tumour", "0")]
    qtbot.waitUntil(lambda: panel.runner.idle, timeout=PROBE_TIMEOUT_MS)
    assert panel.probe is None  # the labels of other nuclei train nothing
    panel.close_panel()


def test_ctrl_z_on_the_nuclei_layer_undoes(loaded):
    from napari.utils.key_bindings import coerce_keybinding

    panel, layer, _ = loaded
    panel.label_rows([1, 2, 3], "stroma")

    layer.keymap[coerce_keybinding("Control-z")](layer)

    assert panel.state.annotations.labels() == {}


def test_erase_unlabels_what_the_stroke_touches(viewer, qtbot, loaded):
    panel, layer, _ = loaded
    panel.label_rows(np.arange(len(layer.data)), "tumour")
    panel.set_brush(True)
    panel.erase.setChecked(True)

    drag(viewer, qtbot, layer, line((100, 500), (1900, 500)))

    remaining = panel.state.annotations.counts()["tumour"]
    assert 0 < remaining < len(layer.data)
    assert "labels removed" in panel.last_action.text()


def test_brush_turns_off_when_another_layer_is_chosen(viewer, loaded):
    panel, layer, _ = loaded
    panel.set_brush(True)
    assert panel.brush.enabled and layer.mouse_drag_callbacks[-1] == panel.brush._drag
    image = viewer.add_image(np.zeros((10, 10)))

    viewer.layers.selection.active = image
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()

    assert not panel.brush.enabled
    assert not panel.brush_button.isChecked()
    assert panel.brush._drag not in layer.mouse_drag_callbacks
    assert "LEMON brush" not in [lay.name for lay in viewer.layers]


def test_brush_labels_zoomed_out_where_the_nuclei_are_drawn_as_dots(
    viewer, qtbot, panel
):
    from napari_lemon._widgets._nuclei_display import display_of

    adata, _ = synthetic_results(n=8000)
    layer = add_nuclei(viewer, adata, None, MPP, name="many")
    viewer.reset_view()
    display_of(layer).refresh()
    assert display_of(layer).mode == "dots" and not layer.visible
    panel.types.add_type("tumour")
    panel.radius.setValue(20.0)
    panel.set_brush(True)

    drag(viewer, qtbot, layer, line((200, 500), (1800, 500)))

    rows = panel.state.rows_of(list(panel.state.annotations.labels()))
    assert len(rows) > 100
    distance = np.abs(panel.state.centroids_xy[rows, 1] - 500)
    assert distance.max() <= 20.0 / MPP + 3  # within the radius (and a pixel)


def test_the_panel_opens_from_the_plugins_menu(viewer, store):
    layer = open_results(viewer, store[0])

    _, panel = viewer.window.add_plugin_dock_widget("napari-lemon", "LEMON cell types")

    assert isinstance(panel, CellTypesWidget)
    assert panel.layer is layer
    assert panel.layer_box.currentText() == layer.name
    panel.close_panel()


def test_from_the_plugins_menu_the_brush_stays_on_and_the_panel_follows(
    viewer, qtbot, tmp_path, store
):
    # a panel opened from the menu gets napari's proxy of the viewer
    layer = open_results(viewer, store[0])
    _, panel = viewer.window.add_plugin_dock_widget("napari-lemon", "LEMON cell types")
    right = store[1]
    try:
        panel.types.add_type("tumour", TUMOUR)
        panel.types.add_type("stroma", STROMA)
        panel.label_rows(np.flatnonzero(~right)[:10], "tumour")
        panel.label_rows(np.flatnonzero(right)[:10], "stroma")
        wait_for_probe(qtbot, panel)
        panel.set_brush(True)

        # suggestions ring nuclei in a layer of their own; a click jumps there
        panel.finder.suggest_next()
        qtbot.waitUntil(lambda: len(panel.finder.suggestions.rows) > 2, timeout=20_000)
        qtbot.wait(50)
        assert panel.brush.enabled
        panel.finder.suggestions.click(1)
        qtbot.wait(50)
        assert panel.brush.enabled
        assert viewer.layers.selection.active is layer

        # choosing another nuclei layer in the layer list moves the panel to it
        other, _ = synthetic_results(n=50, seed=3)
        other_layer = open_results(
            viewer, write_results(other, tmp_path / "other.h5ad"), name="other"
        )
        viewer.layers.selection.active = layer
        assert panel.layer is layer
        viewer.layers.selection.active = other_layer
        assert panel.layer is other_layer
        assert panel.layer_box.currentText() == "other"
    finally:
        panel.close_panel()
        qtbot.waitUntil(lambda: panel.runner.idle, timeout=PROBE_TIMEOUT_MS)


def test_labels_of_one_type_make_the_probe_wait_and_say_why(qtbot, loaded):
    panel, layer, _ = loaded
    panel.label_rows(np.arange(12), "tumour")

    qtbot.waitUntil(
        lambda: "'tumour' has 12" in panel.report.message.text(),
        timeout=PROBE_TIMEOUT_MS,
    )

    assert "no other type has any" in panel.report.message.text()
    assert panel.report.status.text() == "the probe waits for labels"
    assert panel.probe is None


def test_a_type_left_without_nuclei_after_undo_withdraws_the_probe(qtbot, loaded):
    panel, layer, right = loaded
    panel.label_rows(np.flatnonzero(~right)[:15], "tumour")
    panel.label_rows(np.flatnonzero(right)[:15], "stroma")
    wait_for_probe(qtbot, panel)
    assert "probe_cell_type" in layer.features

    panel.undo()  # stroma has no nuclei again
    qtbot.waitUntil(lambda: panel.probe is None, timeout=PROBE_TIMEOUT_MS)

    assert panel.state.annotations.counts() == {"tumour": 15, "stroma": 0}
    assert "'tumour' has 15" in panel.report.message.text()
    assert "probe_cell_type" not in layer.features
    assert_rgb(np.asarray(layer.face_color)[np.flatnonzero(~right)[:15]], TUMOUR)


class Gate:
    """Embeddings whose reads wait until the test opens the gate."""

    def __init__(self, array: np.ndarray) -> None:
        import threading

        self.array, self.shape, self.opened = array, array.shape, threading.Event()

    def __getitem__(self, key):
        assert self.opened.wait(20), "the gate was never opened"
        return self.array[key]


def test_stale_probes_are_dropped_when_labels_change_during_training(qtbot):
    from napari_lemon._widgets._probe_job import ProbeRequest, ProbeRunner

    adata, right = synthetic_results(n=200)
    gate = Gate(np.asarray(adata.obsm["X_lemon"]))
    outcomes, measured = [], []

    def make_request(generation):  # one more label per generation
        rows = np.concatenate([np.flatnonzero(~right)[:5], np.flatnonzero(right)])
        rows = np.sort(rows[: 10 + generation])
        labels = np.where(right[rows], "stroma", "tumour").astype(object)
        return ProbeRequest(
            generation, gate, rows, labels, ["tumour", "stroma"],
            [TUMOUR, STROMA], None, {},
        )  # fmt: skip

    runner = ProbeRunner(
        make_request, outcomes.append, on_metrics=lambda *m: measured.append(m),
        debounce_ms=0,
    )  # fmt: skip
    runner.request()
    qtbot.waitUntil(lambda: runner.worker is not None, timeout=5000)
    runner.request()  # labels changed while the first one trains
    gate.opened.set()
    qtbot.waitUntil(lambda: runner.idle, timeout=PROBE_TIMEOUT_MS)

    assert runner.dropped == 1
    assert [o.generation for o in outcomes] == [2]
    assert sum(outcomes[0].probe.n_labels.values()) == 12
    assert [m[0] for m in measured] == [2]  # the latest probe is measured


# ------------------------------------------------------------ types
def test_types_rename_recolour_delete_and_their_colours_everywhere(qtbot, loaded):
    panel, layer, right = loaded
    panel.label_rows(np.flatnonzero(~right)[:10], "tumour")
    panel.label_rows(np.flatnonzero(right)[:10], "stroma")
    wait_for_probe(qtbot, panel)

    assert panel.types.recolour_type("stroma", "#123456")
    stroma = layer.features["probe_cell_type"].to_numpy() == "stroma"
    assert_rgb(np.asarray(layer.face_color)[stroma], "#123456")  # at once
    assert panel.types.rename_type("tumour", "epithelium")
    wait_for_probe(qtbot, panel)
    assert panel.types.row_texts() == [("epithelium", "10"), ("stroma", "10")]
    assert panel.probe.classes == ["epithelium", "stroma"]
    assert panel.probe.colours[1] == "#123456"
    stroma = layer.features["probe_cell_type"].to_numpy() == "stroma"
    assert_rgb(np.asarray(layer.face_color)[stroma], "#123456")
    assert layer.metadata["lemon_colour"]["palette"]["stroma"] == "#123456"
    saved = json.loads(annotations_path(layer.metadata[STORE_PATH_KEY]).read_text())
    assert [t["name"] for t in saved["types"]] == ["epithelium", "stroma"]

    panel.types.set_active("stroma")
    assert panel.types.delete_type("stroma") == 10
    assert panel.types.row_texts() == [("epithelium", "10")]
    assert panel.types.active_type == "epithelium"
    panel.undo()  # the deletion is undoable
    assert panel.types.row_texts() == [("epithelium", "10"), ("stroma", "10")]


def test_bad_type_names_and_colours_are_refused_with_a_message(loaded):
    panel, _, _ = loaded
    start = len(notification_manager.records)

    assert panel.types.add_type("Tumour") is None  # taken, whatever the case
    assert not panel.types.rename_type("stroma", " ")
    assert not panel.types.recolour_type("stroma", "blue")

    messages = " ".join(new_messages(start))
    assert "is taken" in messages and "is empty" in messages
    assert "is not a hex colour" in messages
    assert panel.types.row_texts() == [("tumour", "0"), ("stroma", "0")]


def test_colour_by_labels_shows_labels_in_type_colours(qtbot, loaded):
    panel, layer, right = loaded
    panel.label_rows(np.flatnonzero(~right)[:10], "tumour")
    panel.label_rows(np.flatnonzero(right)[:10], "stroma")
    wait_for_probe(qtbot, panel)

    panel.colour_by.setCurrentText(ctw.LABELS)

    colours = np.asarray(layer.face_color)
    assert_rgb(colours[np.flatnonzero(right)[:10]], STROMA)
    assert colours[np.flatnonzero(right)[50], 3] < 1  # unlabelled: grey
    panel.colour_by.setCurrentText(ctw.PREDICTION)
    assert (np.asarray(layer.face_color)[:, 3] == 1).all()


# ------------------------------------------------------------ saving
def test_unsaved_results_keep_labels_in_memory_until_saved(
    viewer, qtbot, panel, tmp_path
):
    adata, right = synthetic_results()
    layer = add_nuclei(viewer, adata, None, MPP, name="fresh")
    assert "not saved yet" in panel.save_status.text()
    panel.types.add_type("tumour")
    panel.label_rows([0, 1], "tumour")
    assert not list(tmp_path.iterdir())

    saved = write_results(adata, tmp_path / "fresh.h5ad")  # LEMON nuclei > Save
    layer.metadata[STORE_PATH_KEY] = saved
    qtbot.waitUntil(lambda: annotations_path(saved).exists(), timeout=5000)

    again = Annotations.load(annotations_path(saved))
    assert again.counts() == {"tumour": 2}
    assert "saved to fresh.annotations.json" in panel.save_status.text()


def test_a_read_only_results_folder_keeps_labels_in_memory_with_an_error(
    viewer, qtbot, panel, tmp_path
):
    adata, _ = synthetic_results(n=50)
    folder = tmp_path / "results"
    folder.mkdir()
    path = write_results(adata, folder / "slide.h5ad")
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            # root writes to read-only folders: block the file being written
            target = annotations_path(path)
            (folder / f".{target.name}.{os.getpid()}.tmp").mkdir()
        layer = open_results(viewer, path)
        qtbot.waitUntil(lambda: panel.state.path is not None, timeout=5000)
        start = len(notification_manager.records)
        panel.types.add_type("tumour")
        panel.label_rows([0, 1, 2], "tumour")
    finally:
        folder.chmod(0o755)

    messages = new_messages(start)
    assert len(messages) == 1  # said once, not on every change
    assert "could not save annotations" in messages[0]
    assert "kept in memory" in messages[0]
    assert "kept in memory only" in panel.save_status.text()
    assert not annotations_path(path).exists()
    assert panel.state.annotations.counts() == {"tumour": 3}
    assert layer.features["label"].notna().sum() == 3


# ------------------------------------------------------------ probes
def test_a_probe_of_another_encoder_is_refused_and_nothing_changes(
    viewer, qtbot, loaded, tmp_path
):
    panel, layer, right = loaded
    panel.label_rows(np.flatnonzero(~right)[:10], "tumour")
    panel.label_rows(np.flatnonzero(right)[:10], "stroma")
    wait_for_probe(qtbot, panel)
    saved = panel.save_probe(tmp_path / "mine.probe.safetensors")

    other_encoder = {**ENCODER, "name": "another", "sha256": "cd" * 32}
    other, _ = synthetic_results(n=100, seed=2, encoder=other_encoder)
    target = open_results(viewer, write_results(other, tmp_path / "o.h5ad"))
    before = target.features.copy()
    start = len(notification_manager.records)

    assert not panel.apply_probe(saved)

    [message] = new_messages(start)
    assert "cannot apply mine.probe.safetensors" in message
    assert "encoder 'another'" in message
    pd.testing.assert_frame_equal(target.features, before)
    assert panel.probe is None


def test_a_file_that_is_not_a_probe_is_refused(loaded, tmp_path):
    panel, _, _ = loaded
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello")
    start = len(notification_manager.records)

    assert not panel.apply_probe(bad)

    assert "cannot apply notes.safetensors" in new_messages(start)[0]


def test_save_probe_without_a_nuclei_layer_says_so(panel):
    start = len(notification_manager.records)

    assert panel.save_probe() is None

    [message] = new_messages(start)
    assert "no LEMON nuclei layer" in message and "two types" not in message


def test_apply_probe_asks_beside_the_results_store(loaded, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    panel, layer, _ = loaded
    asked = []

    def dialog(parent, title, start, filters):
        asked.append(start)
        return "", ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", dialog)

    assert panel.apply_probe() is False
    assert asked == [str(layer.metadata[STORE_PATH_KEY].parent)]


def test_save_probe_before_there_is_one_says_what_to_do(loaded):
    panel, _, _ = loaded
    start = len(notification_manager.records)

    assert panel.save_probe() is None

    assert "label nuclei of two types" in new_messages(start)[0]


# ------------------------------------------------------------ errors
def test_no_nuclei_layer_is_said_and_actions_refuse(viewer, panel):
    start = len(notification_manager.records)

    panel.set_brush(True)
    panel.finder.find_similar()

    assert not panel.brush.enabled and not panel.brush_button.isChecked()
    assert all("no LEMON nuclei layer" in m for m in new_messages(start))
    assert len(new_messages(start)) == 2
    assert "no LEMON nuclei layer" in panel.report.message.text()


def test_a_layer_without_embeddings_is_said(viewer, panel):
    adata, _ = synthetic_results(n=50)
    del adata.obsm["X_lemon"]
    add_nuclei(viewer, adata, None, MPP, name="bare")
    start = len(notification_manager.records)

    assert "has no embeddings" in panel.report.message.text()
    panel.types.add_type("tumour")
    panel.label_rows([0], "tumour")  # labelling still works
    panel.finder.suggest_next()

    assert "has no embeddings (obsm['X_lemon'])" in new_messages(start)[0]
    assert panel.state.annotations.counts() == {"tumour": 1}


def test_brushing_without_a_type_asks_for_one(viewer, qtbot, panel, store):
    layer = open_results(viewer, store[0])
    panel.set_brush(True)
    start = len(notification_manager.records)

    click(viewer, qtbot, layer, panel.state.centroids_xy[0])

    assert "add a cell type first" in new_messages(start)[0]


# ------------------------------------------------------------ suggest, similar
def add_image_under(viewer, seed: int = 0):
    """An RGB image under the nuclei (no file): thumbnails come from it."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (int(HEIGHT), int(WIDTH), 3), dtype=np.uint8)
    return viewer.add_image(pixels, rgb=True, scale=(MPP, MPP), units=("um", "um"))


def test_suggest_next_shows_thumbnails_that_jump_to_their_nuclei(viewer, qtbot, loaded):
    panel, layer, right = loaded
    image = add_image_under(viewer)
    viewer.layers.selection.active = layer
    panel.label_rows(np.flatnonzero(~right)[:10], "tumour")
    panel.label_rows(np.flatnonzero(right)[:10], "stroma")
    wait_for_probe(qtbot, panel)
    panel.finder.n_suggest.setValue(6)

    panel.finder.suggest_next()
    qtbot.waitUntil(lambda: len(panel.finder.suggestions.rows) == 6, timeout=20_000)

    rows = panel.finder.suggestions.rows
    labelled = panel.state.labelled_mask()
    assert not labelled[rows].any()
    caption = panel.finder.suggestions.buttons[0].text()
    k = int(panel.state.proba[rows[0]].argmax())
    assert caption == f"{panel.probe.classes[k]} {panel.state.proba[rows[0], k]:.2f}"
    # the thumbnail shows the image's pixels around the nucleus
    x, y = panel.state.centroids_xy[rows[0]].round().astype(int)
    assert image.data[y - 5 : y + 5, x - 5 : x + 5].std() > 0

    panel.finder.suggestions.click(2)

    centre = np.asarray(viewer.scene.camera.center[-2:])
    np.testing.assert_allclose(centre, layer.data_to_world(layer.data[rows[2]]))
    assert layer.selected_data == {rows[2]}
    assert panel.finder.chosen_row() == rows[2]


def test_suggest_before_a_probe_gives_diverse_nuclei(qtbot, loaded):
    panel, _, right = loaded

    panel.finder.suggest_next()
    qtbot.waitUntil(lambda: len(panel.finder.suggestions.rows) == 12, timeout=20_000)

    rows = np.asarray(panel.finder.suggestions.rows)
    assert right[rows].any() and (~right[rows]).any()  # both halves
    assert panel.finder.suggestions.buttons[0].text() == ""


def test_find_similar_rings_and_lists_nuclei_of_the_same_kind(viewer, qtbot, loaded):
    from napari_lemon._widgets._highlight import find_highlight

    panel, layer, right = loaded
    query = int(np.flatnonzero(right)[0])
    layer.selected_data = {query}
    panel.finder.n_similar.setValue(8)

    panel.finder.find_similar()
    qtbot.waitUntil(lambda: len(panel.finder.similar.rows) == 8, timeout=20_000)

    rows = panel.finder.similar.rows
    assert query not in rows and right[rows].all()  # the same half
    assert layer.selected_data == set(rows)
    rings = find_highlight(viewer)
    np.testing.assert_array_equal(rings.metadata["lemon_rows"], sorted(rows))
    similarity = float(panel.finder.similar.buttons[0].text().split("\n")[0])
    assert 0 < similarity <= 1

    panel.finder.similar.click(0)
    np.testing.assert_allclose(
        viewer.scene.camera.center[-2:], layer.data_to_world(layer.data[rows[0]])
    )


def test_find_similar_without_a_nucleus_says_how_to_choose_one(loaded):
    panel, _, _ = loaded
    start = len(notification_manager.records)

    assert panel.finder.find_similar() is None

    assert "Find similar needs a nucleus" in new_messages(start)[0]


# ------------------------------------------------------------ parts
def test_thumbnail_grid_shows_captions_and_names_the_clicked_row(qtbot):
    grid = ThumbnailGrid(columns=3, empty_text="nothing yet")
    qtbot.addWidget(grid)
    clicked = []
    grid.on_clicked(clicked.append)
    images = np.zeros((5, 16, 16, 3), np.uint8)

    grid.set_items(images, [f"c{i}" for i in range(5)], [10, 11, 12, 13, 14])
    grid.click(4)

    assert clicked == [14]
    assert [b.text() for b in grid.buttons] == ["c0", "c1", "c2", "c3", "c4"]
    grid.clear("gone")
    assert grid.rows == [] and grid.buttons == []
    with pytest.raises(ValueError, match="one caption and one row per image"):
        grid.set_items(images, ["a"], [1])
    with pytest.raises(ValueError, match=r"images of shape \(2, 4, 4\)"):
        grid.set_items(np.zeros((2, 4, 4)), ["a", "b"], [1, 2])


def test_jump_zooms_in_from_far_out_and_keeps_a_closer_zoom(viewer):
    adata, _ = synthetic_results(n=20)
    layer = add_nuclei(viewer, adata, None, MPP)
    viewer.reset_view()
    camera = viewer.scene.camera
    far = camera.zoom

    jump_to(viewer, layer, 3)
    near = camera.zoom
    assert near > far
    camera.zoom = near * 4
    jump_to(viewer, layer, 4)
    assert camera.zoom == pytest.approx(near * 4)
    jump_to(viewer, layer, 5, zoom=2.0)
    assert camera.zoom == 2.0
    with pytest.raises(ValueError, match="row=20 is outside layer"):
        jump_to(viewer, layer, 20)


def test_recolour_alpha_multiplies_the_colours_opacity(viewer):
    adata, right = synthetic_results(n=20)
    layer = add_nuclei(viewer, adata, None, MPP, outlines=False)
    layer.features["half"] = pd.Categorical(np.where(right, "r", "l"))
    alpha = np.linspace(0, 1, 20)

    recolour(layer, "half", {"r": "#ff0000", "l": "#0000ff"}, alpha=alpha)

    np.testing.assert_allclose(np.asarray(layer.face_color)[:, 3], alpha, atol=1e-6)
    assert layer.metadata["lemon_colour"]["alpha"] == "values"
    with pytest.raises(ValueError, match=r"alpha of shape \(3,\)"):
        recolour(layer, "half", alpha=np.ones(3))
    with pytest.raises(ValueError, match="alpha='nope' is not a feature"):
        recolour(layer, "half", alpha="nope")


def test_confidence_alpha_is_the_floor_at_chance_and_one_when_sure():
    alpha = confidence_alpha(np.array([1 / 3, 2 / 3, 1.0, np.nan]), 3, floor=0.2)

    np.testing.assert_allclose(alpha, [0.2, 0.6, 1.0, 0.2], atol=1e-6)
    with pytest.raises(ValueError, match="n_classes=0"):
        confidence_alpha(np.ones(2), 0)


def test_thumbnails_come_from_the_slide_file_when_the_layer_has_one(viewer, tmp_path):
    from napari_lemon._reader import SLIDE_PATH_KEY
    from napari_lemon._widgets._layer_thumbnails import thumbnail_source
    from napari_lemon._widgets._source import write_layer_tiff
    from napari_lemon.thumbnails import thumbnails_from_image

    adata, _ = synthetic_results(n=20)
    layer = add_nuclei(viewer, adata, None, MPP, outlines=False)
    assert not thumbnail_source(viewer, layer).found  # no file, no image
    pixels = add_image_under(viewer).data
    assert thumbnail_source(viewer, layer).image is pixels
    layer.metadata[SLIDE_PATH_KEY] = str(
        write_layer_tiff(pixels, MPP, tmp_path / "slide.tif")
    )

    source = thumbnail_source(viewer, layer)
    xy = adata.obs[["x", "y"]].to_numpy()[:3]
    pictures = source.read(xy)

    assert source.slide_path == tmp_path / "slide.tif"
    np.testing.assert_array_equal(pictures, thumbnails_from_image(pixels, xy, MPP))


@pytest.mark.realdata
@pytest.mark.slow
def test_real_nuclei_labelled_by_size_type_the_others_by_size(
    viewer, qtbot, panel, shared_data
):
    """CMU-1 epidermis, classical nuclei, bundled encoder: large vs small nuclei."""
    from napari_lemon._widgets._gl_safety import block_triton_after_gl_llvm
    from napari_lemon.pipeline import analysis_steps, run_steps
    from napari_lemon.slide import open_slide

    block_triton_after_gl_llvm()
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    [image] = viewer.open(path, plugin="napari-lemon")
    with open_slide(path) as slide:
        steps = analysis_steps(
            slide, (1000, 1500, 800, 800), segmenter="classical", device="cpu"
        )
        result = run_steps(steps)
    adata = result.adata
    layer = add_nuclei(viewer, adata, image, slide.mpp)
    assert panel.layer is layer and adata.n_obs > 200

    # half of the fifth largest and smallest nuclei labelled
    area = adata.obs["area_um2"].to_numpy()
    order = np.argsort(area)
    fifth = len(order) // 5
    small, large = order[:fifth], order[-fifth:]
    panel.types.add_type("small")
    panel.types.add_type("large")
    panel.label_rows(small[::2], "small")
    panel.label_rows(large[::2], "large")
    wait_for_probe(qtbot, panel)

    # the other half typed by size, the nuclei in between ordered by it
    predicted = layer.features["probe_cell_type"].to_numpy()
    right = np.concatenate(
        [predicted[small[1::2]] == "small", predicted[large[1::2]] == "large"]
    )
    # NOTE: measured 0.76 held out (chance 0.5) with the bundled encoder
    assert right.mean() > 0.7, right.mean()
    assert panel.state.metrics.balanced_accuracy > 0.65, panel.state.metrics
    middle = order[fifth:-fifth]
    by_type = {t: area[middle][predicted[middle] == t] for t in ("small", "large")}
    assert np.median(by_type["large"]) > np.median(by_type["small"])

    # suggestions show the slide's pixels around each nucleus
    panel.finder.suggest_next()
    qtbot.waitUntil(lambda: len(panel.finder.suggestions.rows) == 12, timeout=60_000)
    icon = panel.finder.suggestions.buttons[0].icon().pixmap(48, 48).toImage()
    colours = {icon.pixel(x, y) for x in range(0, 48, 4) for y in range(0, 48, 4)}
    assert len(colours) > 20  # tissue, not a blank square
