"""The "LEMON clusters" panel and its legend, in a real napari viewer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from needs_display import require_display

require_display()

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_lemon._widgets import _gl_safety  # noqa: E402, F401
from napari_lemon._widgets import clusters_widget as cw  # noqa: E402
from napari_lemon._widgets._highlight import find_highlight  # noqa: E402
from napari_lemon._widgets._legend import MISSING_NAME, legend_entries  # noqa: E402
from napari_lemon._widgets._nuclei_display import recolour  # noqa: E402
from napari_lemon._widgets._results import STORE_PATH_KEY, add_nuclei  # noqa: E402
from napari_lemon.store import build_results, read_results, write_results  # noqa: E402

TIMEOUT_MS = 60_000
SIZES = (150, 100, 60, 40)  # nuclei per true group


def blob_results(sizes=SIZES, dim=16, seed=0):
    """Results whose embeddings form ``len(sizes)`` well-separated groups."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(0, 6, (len(sizes), dim))
    embeddings = centres[truth] + rng.normal(0, 0.5, (len(truth), dim))
    n = len(truth)
    xy = rng.uniform(10, 990, (n, 2))
    obs = pd.DataFrame(
        {"nucleus_id": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "area_um2": 12.0}
        | {"segmenter": "test", "tile_id": 0}
    )
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 4
    adata = build_results(obs, embeddings, [p + corners for p in xy], {"mpp": 0.5})
    return adata, truth


def same_partition(a, b):
    """Whether two labelings group the rows alike (up to renaming)."""
    pairs = set(zip(np.asarray(a).tolist(), np.asarray(b).tolist(), strict=True))
    return len(pairs) == len(set(a)) == len(set(b))


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def add_blobs(viewer, sizes=SIZES, store=None):
    adata, truth = blob_results(sizes)
    image = viewer.add_image(
        np.zeros((1000, 1000, 3), np.uint8), rgb=True, scale=(0.5, 0.5), name="he"
    )
    layer = add_nuclei(viewer, adata, image, 0.5, outlines=False)
    if store is not None:
        layer.metadata[STORE_PATH_KEY] = write_results(adata, store)
    return layer, truth


@pytest.fixture
def panel(viewer, qtbot):
    widget = cw.ClustersWidget(viewer)
    viewer.window.add_dock_widget(widget)
    yield widget
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def wait(panel, qtbot):
    qtbot.waitUntil(lambda: panel.worker is None, timeout=TIMEOUT_MS)


def messages_since(start):
    return [str(n.message) for n in notification_manager.records[start:]]


def test_the_plugin_menu_opens_the_panel(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-lemon", "LEMON clusters")

    assert isinstance(widget, cw.ClustersWidget)


def test_kmeans_finds_the_groups_recolours_and_saves_into_the_store(
    viewer, panel, qtbot, tmp_path
):
    layer, truth = add_blobs(viewer, store=tmp_path / "r.h5ad")
    panel._layer.value = layer
    panel._k.value = len(SIZES)

    assert panel.run() is not None
    wait(panel, qtbot)

    # features (text categories), obs (ints) and the colours agree
    labels = layer.features["cluster"].to_numpy()
    assert same_partition(labels, truth)
    obs = layer.metadata["lemon_adata"].obs["cluster"]
    np.testing.assert_array_equal(obs.astype(int).astype(str), labels)
    assert layer.metadata["lemon_colour"]["column"] == "cluster"
    assert len({tuple(c) for c in np.round(layer.face_color, 4)}) == len(SIZES)

    # the store has them too
    saved = read_results(tmp_path / "r.h5ad").obs["cluster"]
    np.testing.assert_array_equal(saved.astype(int).astype(str), labels)

    # the legend counts them
    counts = sorted(e.count for e in panel.legend.entries)
    assert counts == sorted(SIZES)


@pytest.mark.slow
def test_leiden_writes_its_own_column_and_finds_the_groups(
    viewer, panel, qtbot, tmp_path
):
    layer, truth = add_blobs(viewer, store=tmp_path / "r.h5ad")
    panel._layer.value = layer
    panel._method.value = cw.LEIDEN
    panel._resolution.value = 0.5

    panel.run()
    wait(panel, qtbot)

    labels = layer.features["leiden"].to_numpy()
    assert same_partition(labels, truth)
    assert layer.metadata["lemon_colour"]["column"] == "leiden"
    # Leiden labels are numbered by size, largest first
    assert (labels[truth == 0] == "0").all()
    saved = read_results(tmp_path / "r.h5ad").obs["leiden"]
    np.testing.assert_array_equal(saved.astype(int).astype(str), labels)


@pytest.mark.slow
def test_suggest_k_scores_each_k_and_sets_the_true_k(viewer, panel, qtbot):
    layer, _ = add_blobs(viewer)
    panel._layer.value = layer

    panel.suggest_k()
    wait(panel, qtbot)

    assert set(panel.scores) == set(cw.SUGGEST_KS)
    assert panel._k.value == len(SIZES)
    assert f"k={len(SIZES)}" in panel._scores.value.split("◀")[0].splitlines()[-1]


def test_legend_click_selects_and_rings_a_category_then_clears(viewer, panel):
    layer, truth = add_blobs(viewer)
    layer.features = layer.features.assign(
        kind=pd.Categorical(np.where(truth == 0, "tumour", "stroma"))
    )
    recolour(layer, "kind")
    panel.legend.refresh()

    entries = {e.name: e for e in panel.legend.entries}
    assert {n: e.count for n, e in entries.items()} == {"stroma": 200, "tumour": 150}
    index = [e.name for e in panel.legend.entries].index("tumour")

    rows = panel.legend.click(index)
    np.testing.assert_array_equal(rows, np.flatnonzero(truth == 0))
    assert layer.selected_data == set(rows.tolist())
    assert len(find_highlight(viewer).data) == 150

    panel.legend.click(index)  # again: nothing selected
    assert layer.selected_data == set() and find_highlight(viewer) is None


def test_legend_counts_missing_values_and_names_a_numeric_column(viewer, panel):
    layer, _ = add_blobs(viewer, sizes=(3, 2))
    layer.features = layer.features.assign(
        kind=pd.Categorical(["a", "b", None, "a", None])
    )

    entries = legend_entries(layer, "kind")
    assert [(e.name, e.count) for e in entries] == [
        ("a", 2),
        ("b", 1),
        (MISSING_NAME, 2),
    ]

    recolour(layer, "area_um2")
    panel.legend.refresh()
    assert panel.legend.entries == []
    assert "a number" in panel.legend._title.text()


def test_legend_follows_a_recolour_made_elsewhere(viewer, panel, qtbot):
    layer, truth = add_blobs(viewer)
    layer.features = layer.features.assign(kind=np.where(truth < 2, "x", "y"))
    panel._layer.value = layer

    recolour(layer, "kind")

    qtbot.waitUntil(lambda: panel.legend.column == "kind", timeout=2000)
    assert [e.count for e in panel.legend.entries] == [250, 100]


def test_errors_are_notifications(viewer, panel, qtbot):
    start = len(notification_manager.records)
    assert panel.run() is None  # no layer
    assert "no nuclei layer" in messages_since(start)[-1]

    layer, _ = add_blobs(viewer, sizes=(3, 2))
    panel._layer.value = layer
    panel._k.value = 8
    assert panel.run() is None
    assert "k=8 clusters need at least 8 nuclei" in messages_since(start)[-1]
    assert "lower 'clusters (k)'" in messages_since(start)[-1]

    # too few for Suggest k or a neighbour graph: said before anything runs, in
    # words of the panel's own controls
    assert panel.suggest_k() is None
    message = messages_since(start)[-1]
    assert "Suggest k scores k = 2..12 and needs at least 13 nuclei" in message
    assert "has 5: set 'clusters (k)' yourself (at most 5)" in message
    panel._method.value = cw.LEIDEN
    assert panel.run() is None
    message = messages_since(start)[-1]
    assert "Leiden needs at least 16 nuclei" in message and "has 5" in message
    assert "choose method 'k-means' with 'clusters (k)' at most 5" in message
    assert not any("Lower" in m or "n_neighbors" in m for m in messages_since(start))
    assert "leiden" not in layer.features

    del layer.metadata["lemon_adata"].obsm["X_lemon"]
    assert panel.suggest_k() is None
    assert "has no embeddings" in messages_since(start)[-1]


def test_a_store_that_cannot_be_written_keeps_the_labels_and_warns(
    viewer, panel, qtbot, tmp_path
):
    layer, truth = add_blobs(viewer)
    layer.metadata[STORE_PATH_KEY] = tmp_path / "missing.h5ad"
    panel._layer.value = layer
    panel._k.value = len(SIZES)
    start = len(notification_manager.records)

    panel.run()
    wait(panel, qtbot)

    assert same_partition(layer.features["cluster"].to_numpy(), truth)
    assert any("could not be saved" in m for m in messages_since(start))


def test_format_scores_marks_the_best_k():
    text = cw.format_scores({2: 0.2, 3: 0.5, 4: 0.1}, best=3)

    lines = text.splitlines()
    assert len(lines) == 3 and lines[1].endswith("◀ best")
    assert "◀" not in lines[0] + lines[2]


def test_panel_jobs_report_user_warnings_only_and_run_one_at_a_time(qtbot):
    import threading
    import warnings

    from napari_lemon._widgets._panel_job import PanelJob

    release = threading.Event()

    def job():
        warnings.warn("a library's import detail", ImportWarning, stacklevel=1)
        warnings.warn("3 nuclei left out", UserWarning, stacklevel=1)
        yield "waiting", 0, 1
        release.wait(10)
        return 42

    results, running = [], []
    runner = PanelJob("LEMON test", running.append)
    start = len(notification_manager.records)
    assert runner.start(job, on_result=results.append) is not None
    assert runner.start(job, on_result=results.append) is None  # one at a time
    release.set()
    qtbot.waitUntil(lambda: runner.worker is None, timeout=TIMEOUT_MS)

    messages = messages_since(start)
    assert results == [42] and running == [True, False]
    assert any("wait for the running job" in m for m in messages)
    assert any("3 nuclei left out" in m for m in messages)
    assert not any("import detail" in m for m in messages)


@pytest.mark.parametrize("error", [ValueError, RuntimeError])
def test_panel_job_errors_become_notifications(qtbot, error):
    from napari_lemon._widgets._panel_job import JobError, PanelJob

    def job():
        yield "failing", 0, 0
        raise error("k=9 needs 9 nuclei")

    failures = []
    runner = PanelJob("LEMON test")
    start = len(notification_manager.records)
    runner.start(job, on_result=lambda _: None, on_error=failures.append)
    qtbot.waitUntil(lambda: runner.worker is None, timeout=TIMEOUT_MS)

    assert len(failures) == 1 and "k=9 needs 9 nuclei" in str(failures[0])
    # a RuntimeError reaches the panel as an error, not as superqt's warning
    assert isinstance(failures[0], ValueError if error is ValueError else JobError)
    assert any("k=9 needs 9 nuclei" in m for m in messages_since(start))
