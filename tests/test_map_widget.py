"""The "LEMON morphology map" panel in a real napari viewer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from needs_display import require_display

require_display()

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_lemon._widgets import _gl_safety  # noqa: E402, F401
from napari_lemon._widgets import _map_jobs as mj  # noqa: E402
from napari_lemon._widgets import map_widget as mw  # noqa: E402
from napari_lemon._widgets._highlight import find_highlight  # noqa: E402
from napari_lemon._widgets._nuclei_display import recolour  # noqa: E402
from napari_lemon._widgets._results import STORE_PATH_KEY, add_nuclei  # noqa: E402
from napari_lemon.store import build_results, read_results, write_results  # noqa: E402

TIMEOUT_MS = 120_000
SIZES = (120, 80, 50)


def blob_results(sizes=SIZES, dim=16, seed=0):
    """Results whose embeddings form well-separated groups; a map beside them."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(0, 6, (len(sizes), dim))
    embeddings = centres[truth] + rng.normal(0, 0.5, (len(truth), dim))
    n = len(truth)
    xy = rng.uniform(30, 970, (n, 2))
    obs = pd.DataFrame(
        {"nucleus_id": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "area_um2": 12.0}
        | {"segmenter": "test", "tile_id": 0}
    )
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 4
    adata = build_results(obs, embeddings, [p + corners for p in xy], {"mpp": 0.5})
    adata.obs["kind"] = pd.Categorical(np.where(truth == 0, "tumour", "stroma"))
    return adata, truth


def group_map(truth, seed=0):
    """A 2-D map with each group in its own corner: (n, 2) float32."""
    rng = np.random.default_rng(seed)
    corners = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float)
    return (corners[truth] + rng.uniform(-1, 1, (len(truth), 2))).astype(np.float32)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def add_blobs(viewer, store=None, mapped=None):
    """The blob nuclei on an image with a bright nucleus-sized dot at each."""
    adata, truth = blob_results()
    picture = np.full((1000, 1000, 3), 230, np.uint8)
    for x, y in adata.obs[["x", "y"]].to_numpy().astype(int):
        picture[y - 3 : y + 4, x - 3 : x + 4] = (80, 20, 120)
    if mapped is not None:
        coordinates = np.full((len(truth), 2), np.nan, np.float32)
        coordinates[mapped] = group_map(truth)[mapped]
        adata.obsm[mj.MAP_KEY] = coordinates
    image = viewer.add_image(picture, rgb=True, scale=(0.5, 0.5), name="he")
    layer = add_nuclei(viewer, adata, image, 0.5, outlines=False)
    if store is not None:
        layer.metadata[STORE_PATH_KEY] = write_results(adata, store)
    return layer, truth


@pytest.fixture
def panel(viewer, qtbot):
    widget = mw.MorphologyMapWidget(viewer)
    viewer.window.add_dock_widget(widget)
    yield widget
    if widget.worker is not None:
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def wait(panel, qtbot):
    qtbot.waitUntil(lambda: panel.worker is None, timeout=TIMEOUT_MS)


def messages_since(start):
    return [str(n.message) for n in notification_manager.records[start:]]


def test_the_plugin_menu_opens_the_panel(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-lemon", "LEMON morphology map"
    )

    assert isinstance(widget, mw.MorphologyMapWidget)


@pytest.mark.slow
def test_the_map_is_computed_kept_in_obsm_and_the_store_and_reopened(
    viewer, panel, qtbot, tmp_path
):
    layer, truth = add_blobs(viewer, store=tmp_path / "r.h5ad")
    panel._layer.value = layer
    panel._sample.value = 200  # fewer than the 250 nuclei: some are not mapped

    assert panel.compute() is not None
    wait(panel, qtbot)

    # 200 rows mapped, the others NaN, in the layer's results and its store
    assert len(panel.map.rows) == 200 and len(panel.canvas.xy) == 200
    coordinates = layer.metadata["lemon_adata"].obsm[mj.MAP_KEY]
    assert np.isfinite(coordinates).all(axis=1).sum() == 200
    saved = read_results(tmp_path / "r.h5ad").obsm[mj.MAP_KEY]
    np.testing.assert_array_equal(saved, coordinates)

    # the groups stay apart on the map: each point's nearest is of its group
    xy, groups = panel.map.xy, truth[panel.map.rows]
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    assert (groups[distance.argmin(axis=1)] == groups).mean() > 0.95

    # reopened: shown at once from the store
    again = add_nuclei(viewer, read_results(tmp_path / "r.h5ad"), None, 0.5)
    panel._layer.value = again
    np.testing.assert_array_equal(panel.map.rows, np.sort(panel.map.rows))
    assert len(panel.map.rows) == 200 and panel.worker is None


def test_a_stored_map_is_shown_in_the_nuclei_colours(viewer, panel):
    layer, truth = add_blobs(viewer, mapped=np.arange(0, 250, 2))

    panel._layer.value = layer

    np.testing.assert_array_equal(panel.map.rows, np.arange(0, 250, 2))
    shown = panel.canvas._scatter.get_facecolors()
    np.testing.assert_allclose(shown, layer.face_color[panel.map.rows], atol=1e-6)


def test_another_layer_without_a_map_clears_the_title_and_status(viewer, panel):
    mapped, _ = add_blobs(viewer, mapped=np.arange(250))
    panel._layer.value = mapped
    mapped.selected_data = {0, 1, 2}
    assert panel.canvas.axes.get_title() == "UMAP of 250 of 250 nuclei"
    assert panel._status.value == "3 selected, 3 on the map"

    other, _ = add_blobs(viewer)
    panel._layer.value = other

    assert panel.map is None and panel.canvas.axes.get_title() == ""
    assert panel._status.value == ""


def test_a_recolour_elsewhere_recolours_the_map(viewer, panel, qtbot):
    layer, truth = add_blobs(viewer, mapped=np.arange(250))
    panel._layer.value = layer

    recolour(layer, "kind", {"tumour": "#ff0000", "stroma": "#0000ff"})

    def red_tumours():
        shown = panel.canvas._scatter.get_facecolors()
        return np.allclose(shown[truth == 0], [1, 0, 0, 1])

    qtbot.waitUntil(red_tumours, timeout=3000)


def test_lasso_on_the_map_selects_and_rings_those_nuclei(viewer, panel):
    layer, truth = add_blobs(viewer, mapped=np.arange(250))
    panel._layer.value = layer

    # a loop around the group in the corner (10, 0)
    loop = [(8, -2), (12, -2), (12, 2), (8, 2)]
    inside = panel.canvas.lasso_path(loop)

    rows = np.flatnonzero(truth == 1)
    np.testing.assert_array_equal(np.sort(panel.map.rows[inside]), rows)
    assert layer.selected_data == set(rows.tolist())
    assert len(find_highlight(viewer).data) == len(rows)
    # and the map marks what is selected
    np.testing.assert_array_equal(np.sort(panel.canvas.marked), rows)


def test_nuclei_selected_on_the_slide_are_marked_on_the_map(viewer, panel):
    mapped = np.arange(0, 250, 2)
    layer, _ = add_blobs(viewer, mapped=mapped)
    panel._layer.value = layer

    layer.selected_data = {4, 5, 10}  # 5 is not on the map

    positions = np.searchsorted(mapped, [4, 10])
    np.testing.assert_array_equal(np.sort(panel.canvas.marked), positions)
    assert "3 selected, 2 on the map" in panel._status.value
    layer.selected_data = set()
    assert len(panel.canvas.marked) == 0


def test_a_click_on_a_dot_selects_it_and_centres_the_slide_on_it(viewer, panel):
    layer, _ = add_blobs(viewer, mapped=np.arange(250))
    panel._layer.value = layer
    panel.canvas.canvas.draw()  # the transforms of a drawn figure

    hit = panel.canvas.lasso_path([panel.canvas.xy[17]])

    np.testing.assert_array_equal(hit, [17])
    assert layer.selected_data == {17}
    camera = getattr(viewer, "scene", viewer).camera
    centre = np.asarray(layer.data_to_world(layer.data[17]))
    np.testing.assert_allclose(camera.center[-2:], centre, atol=1e-3)


def test_thumbnails_cover_the_map_and_show_the_nuclei(viewer, panel, qtbot):
    layer, truth = add_blobs(viewer, mapped=np.arange(250))
    panel._layer.value = layer
    panel._grid.value = 4

    panel._thumbnails.value = True
    wait(panel, qtbot)

    # one per occupied cell of a 4 x 4 grid over four corner groups
    canvas = panel.canvas
    assert canvas.has_thumbnails and len(canvas.thumbnail_rows) >= len(SIZES)
    pictures = np.stack([image.get_array() for image in canvas._thumbnails])
    assert pictures.shape[1:] == (mj.THUMBNAIL_PX, mj.THUMBNAIL_PX, 3)
    middle = pictures[:, 20:28, 20:28].reshape(len(pictures), -1, 3).mean(axis=1)
    np.testing.assert_allclose(middle, [[80, 20, 120]] * len(pictures), atol=30)

    panel._thumbnails.value = False
    assert not canvas.has_thumbnails


def test_errors_are_notifications(viewer, panel, qtbot):
    start = len(notification_manager.records)
    assert panel.compute() is None
    assert "no nuclei layer" in messages_since(start)[-1]

    layer, _ = add_blobs(viewer, mapped=np.arange(250))
    panel._layer.value = layer
    viewer.layers.remove("he")
    layer.metadata["lemon_slide_path"] = None
    assert panel._on_thumbnails(True) is None
    assert "thumbnails need the slide file" in messages_since(start)[-1]

    panel._sample.value = 100
    small, _ = add_blobs(viewer)
    small.metadata["lemon_adata"] = small.metadata["lemon_adata"][:10].copy()
    panel._layer.value = small
    panel.compute()  # too few to map: the worker says
    qtbot.waitUntil(lambda: panel.worker is None, timeout=TIMEOUT_MS)
    assert "map needs at least 16 nuclei" in messages_since(start)[-1]
    assert panel._status.value == "failed"

    panel._layer.value = layer
    del layer.metadata["lemon_adata"].obsm["X_lemon"]
    assert panel.compute() is None
    assert "has no embeddings" in messages_since(start)[-1]


@pytest.mark.realdata
def test_thumbnails_of_a_slide_file_show_the_mapped_nuclei(
    viewer, panel, qtbot, shared_data
):
    from napari_lemon.slide import open_slide
    from napari_lemon.thumbnails import nucleus_thumbnails

    slide_path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    [image] = viewer.open(slide_path, plugin="napari-lemon")
    adata, truth = blob_results()
    rng = np.random.default_rng(1)
    adata.obs["x"] = rng.uniform(100, 2100, adata.n_obs)
    adata.obs["y"] = rng.uniform(100, 2800, adata.n_obs)
    adata.obsm[mj.MAP_KEY] = group_map(truth)
    layer = add_nuclei(viewer, adata, image, 0.499, outlines=False)
    panel._layer.value = layer
    panel._grid.value = 4

    panel._thumbnails.value = True
    wait(panel, qtbot)

    # the pictures drawn are those of the nuclei they stand for
    rows = panel.map.rows[panel.canvas.thumbnail_rows]
    with open_slide(slide_path) as slide:
        expected = nucleus_thumbnails(
            slide, adata.obs[["x", "y"]].to_numpy()[rows], size=mj.THUMBNAIL_PX
        )
    drawn = np.stack([image.get_array() for image in panel.canvas._thumbnails])
    np.testing.assert_array_equal(drawn, expected)
    assert drawn.std() > 10  # tissue, not a blank


def test_a_closed_panel_stops_following_the_selection(viewer, qtbot):
    layer, _ = add_blobs(viewer, mapped=np.arange(250))
    widget = mw.MorphologyMapWidget(viewer)
    widget._layer.value = layer
    followers = len(layer.selected_data.events.items_changed)

    widget.native.deleteLater()
    qtbot.waitUntil(lambda: widget._shown is None, timeout=2000)

    assert len(layer.selected_data.events.items_changed) == followers - 1
    layer.selected_data = {1, 2}  # nothing left to draw on: no error
