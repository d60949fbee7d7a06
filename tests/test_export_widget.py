"""The "LEMON import and export" panel in a real napari viewer."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from needs_display import require_display

require_display()

import anndata  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402

from napari_lemon._widgets import _gl_safety  # noqa: E402, F401
from napari_lemon._widgets import export_widget as ew  # noqa: E402
from napari_lemon._widgets._results import (  # noqa: E402
    ANNOTATIONS_KEY,
    STORE_PATH_KEY,
    add_nuclei,
    is_nuclei_layer,
)
from napari_lemon.annotations import Annotations, annotations_path  # noqa: E402
from napari_lemon.store import build_results, set_clusters, write_results  # noqa: E402

TIMEOUT_MS = 300_000
N = 60
MONUSEG_TILE = "TCGA-2Z-A9J9-01A-01-TS1"


def small_results(n=N, seed=0):
    """Results of ``n`` square nuclei in 3 clusters, embeddings of 8 numbers."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(20, 480, (n, 2))
    obs = pd.DataFrame(
        {"nucleus_id": np.arange(n) + 100, "x": xy[:, 0], "y": xy[:, 1]}
        | {"area_um2": 12.0, "segmenter": "test", "tile_id": 0}
    )
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 4
    provenance = {"mpp": 0.5, "source": {"name": "he.tif"}}
    adata = build_results(
        obs, rng.normal(size=(n, 8)), [p + corners for p in xy], provenance
    )
    set_clusters(adata, np.arange(n) % 3)
    return adata


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def layer(viewer):
    image = viewer.add_image(
        np.zeros((500, 500, 3), np.uint8), rgb=True, scale=(0.5, 0.5), name="he"
    )
    return add_nuclei(viewer, small_results(), image, 0.5, outlines=False)


@pytest.fixture
def panel(viewer, qtbot):
    widget = ew.ExportWidget(viewer)
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
        "napari-lemon", "LEMON import and export"
    )

    assert isinstance(widget, ew.ExportWidget)


def test_geojson_export_has_one_detection_per_nucleus(
    viewer, layer, panel, qtbot, tmp_path
):
    assert panel.export(tmp_path / "nuclei.geojson") is not None
    wait(panel, qtbot)

    collection = json.loads((tmp_path / "nuclei.geojson").read_text())
    features = collection["features"]
    assert len(features) == N
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    ring = np.asarray(features[0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(ring[0], ring[-1])  # closed
    centre = layer.features.loc[0, ["x", "y"]].to_numpy(dtype=float)
    np.testing.assert_allclose(ring[:-1].mean(axis=0), centre, atol=0.01)
    assert "exported nuclei.geojson" in panel._status.value


def test_gzip_export_is_gzipped(viewer, layer, panel, qtbot, tmp_path):
    panel._gzip.value = True

    panel.export(tmp_path / "nuclei.geojson.gz")
    wait(panel, qtbot)

    with gzip.open(tmp_path / "nuclei.geojson.gz", "rt") as file:
        assert len(json.load(file)["features"]) == N

    panel.export(tmp_path / "table.csv")  # ticked: named for what it is
    wait(panel, qtbot)
    assert not (tmp_path / "table.csv").exists()
    assert len(pd.read_csv(tmp_path / "table.csv.gz")) == N


def test_h5ad_export_keeps_embeddings_clusters_and_the_labels_beside_the_store(
    viewer, layer, panel, qtbot, tmp_path
):
    store = write_results(layer.metadata["lemon_adata"], tmp_path / "r.h5ad")
    layer.metadata[STORE_PATH_KEY] = store
    annotations = Annotations(annotations_path(store))
    annotations.add_type("tumour", "#ff0000")
    annotations.label([100, 101, 105], "tumour")

    panel.export(tmp_path / "out.h5ad")
    wait(panel, qtbot)

    out = anndata.read_h5ad(tmp_path / "out.h5ad")
    assert out.obsm["X_lemon"].shape == (N, 8)
    np.testing.assert_array_equal(out.obs["cluster"].astype(int), np.arange(N) % 3)
    labelled = out.obs.loc[out.obs["label"].notna(), "nucleus_id"]
    assert sorted(labelled) == [100, 101, 105]


def test_csv_export_has_a_row_per_nucleus_with_microns(
    viewer, layer, panel, qtbot, tmp_path
):
    panel.export(tmp_path / "nuclei.csv")
    wait(panel, qtbot)

    table = pd.read_csv(tmp_path / "nuclei.csv")
    assert len(table) == N and list(table["nucleus_id"]) == list(range(100, 100 + N))
    np.testing.assert_allclose(table["x_um"], table["x"] * 0.5)
    assert "X_lemon" not in " ".join(table.columns)


def test_export_errors_are_notifications(viewer, panel, tmp_path):
    start = len(notification_manager.records)
    assert panel.export(tmp_path / "x.geojson") is None
    assert "no nuclei layer to export" in messages_since(start)[-1]

    image = viewer.add_image(np.zeros((500, 500, 3), np.uint8), rgb=True)
    add_nuclei(viewer, small_results(), image, 0.5, outlines=False)
    assert panel.export(tmp_path / "x.txt") is None
    assert "cannot tell the export format" in messages_since(start)[-1]
    assert panel.export(tmp_path / "x.xlsx", fmt="xlsx") is None
    assert "export format 'xlsx' is unknown" in messages_since(start)[-1]


def test_import_errors_are_notifications(viewer, panel, tmp_path, qtbot):
    start = len(notification_manager.records)
    assert panel.import_nuclei(tmp_path / "a.geojson") is None
    assert "open the image the nuclei were outlined on" in messages_since(start)[-1]

    viewer.add_image(np.zeros((50, 50, 3), np.uint8), rgb=True, name="plain")
    assert panel.import_nuclei(tmp_path / "missing.geojson") is None
    assert "is not a file" in messages_since(start)[-1]

    # a file of no nuclei; one without a pixel size, on an image without one
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    panel.import_nuclei(empty)
    wait(panel, qtbot)
    assert "has no nucleus outline to use" in messages_since(start)[-1]
    panel._mpp.value = 0.0
    panel.import_nuclei(qupath_geojson(tmp_path / "one.geojson", [(20, 20)], [""]))
    wait(panel, qtbot)
    assert "pixel size of the image is unknown" in messages_since(start)[-1]


def test_import_dialog_starts_beside_the_slide(viewer, panel, tmp_path, monkeypatch):
    from pathlib import Path

    from qtpy.QtWidgets import QFileDialog

    asked = []

    def dialog(parent, title, start, filters):
        asked.append(start)
        return "", ""

    monkeypatch.setattr(QFileDialog, "getOpenFileName", dialog)
    slide = tmp_path / "slides" / "he.svs"
    slide.parent.mkdir()
    pixels = np.zeros((50, 50, 3), np.uint8)
    plain = viewer.add_image(pixels, rgb=True, name="plain")
    viewer.add_image(pixels, rgb=True, name="he", metadata={"lemon_slide_path": slide})

    panel._image.value = plain
    assert panel.import_nuclei() is None
    panel._image.value = viewer.layers["he"]
    assert panel.import_nuclei() is None

    assert asked == [str(Path.home()), str(slide.parent)]


def test_skipped_objects_are_counted_in_words():
    class Imported:
        n_skipped, skipped_reasons = 3, {"not a polygon": 2, "empty": 1}

    assert (
        ew._skipped_text(Imported()) == "; 3 objects skipped (2 not a polygon, 1 empty)"
    )


@pytest.mark.slow
@pytest.mark.realdata
def test_a_monuseg_imagescope_tile_becomes_a_nuclei_layer(
    viewer, panel, qtbot, shared_data
):
    folder = shared_data / "monuseg" / "test"
    tile = folder / "images" / f"{MONUSEG_TILE}.tif"
    [image] = viewer.open(tile, plugin="napari-lemon")
    panel._image.value = image
    panel._mpp.value = 0.0  # the XML records 0.2527 um/px
    start = len(notification_manager.records)

    assert (
        panel.import_nuclei(folder / "annotations" / f"{MONUSEG_TILE}.xml") is not None
    )
    wait(panel, qtbot)

    [points] = [layer for layer in viewer.layers if is_nuclei_layer(layer)]
    adata = points.metadata["lemon_adata"]
    assert adata.n_obs > 300 and adata.obsm["X_lemon"].shape[1] == 384
    assert np.isfinite(adata.obsm["X_lemon"]).all()
    assert adata.uns["lemon"]["mpp"] == pytest.approx(0.2527, abs=1e-4)
    assert (adata.obs["segmenter"] == "imagescope-xml").all()
    # on the tile: centroids inside it, in the image's world
    assert (
        adata.obs["x"].between(0, 1000).all() and adata.obs["y"].between(0, 1000).all()
    )
    assert any(f"{adata.n_obs:,} nuclei from" in m for m in messages_since(start))


def qupath_geojson(path, centres, classes, half=6.0):
    """A QuPath-like GeoJSON of square detections, plus one line (skipped)."""
    features = []
    for (x, y), name in zip(centres, classes, strict=True):
        ring = [[x - half, y - half], [x + half, y - half], [x + half, y + half]]
        ring += [[x - half, y + half], [x - half, y - half]]
        properties = {"objectType": "detection"}
        if name:
            properties["classification"] = {"name": name, "color": [255, 0, 0]}
        geometry = {"type": "Polygon", "coordinates": [ring]}
        features.append(
            {"type": "Feature", "geometry": geometry, "properties": properties}
        )
    line = {"type": "LineString", "coordinates": [[1, 1], [5, 5]]}
    features.append({"type": "Feature", "geometry": line, "properties": {}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.mark.slow
def test_classified_imports_become_labelled_nuclei_on_an_in_memory_image(
    viewer, panel, qtbot, tmp_path
):
    rng = np.random.default_rng(0)
    picture = rng.integers(150, 255, (200, 200, 3), dtype=np.uint8)
    image = viewer.add_image(picture, rgb=True, scale=(0.5, 0.5), name="he")
    centres = [(40, 40), (80, 40), (120, 40), (40, 120), (80, 120), (150, 150)]
    classes = ["Tumor", "Tumor", "", "Tumor", "Stroma", ""]
    path = qupath_geojson(tmp_path / "cells.geojson", centres, classes)
    panel._image.value = image
    panel._mpp.value = 0.5
    start = len(notification_manager.records)

    panel.import_nuclei(path)
    wait(panel, qtbot)

    [points] = [layer for layer in viewer.layers if is_nuclei_layer(layer)]
    labels = points.features["label"]
    assert [v if isinstance(v, str) else "" for v in labels] == classes
    assert points.metadata["lemon_colour"]["column"] == "label"
    np.testing.assert_allclose(points.face_color[0], [1, 0, 0, 1])
    annotations = points.metadata[ANNOTATIONS_KEY]
    assert annotations.counts() == {"Tumor": 3, "Stroma": 1}
    # the cell types panel starts from the imported labels
    from napari_lemon._widgets.cell_types_widget import CellTypesWidget

    typing = CellTypesWidget(viewer)
    qtbot.addWidget(typing)
    state = typing.attach(points)
    assert state.annotations.counts() == {"Tumor": 3, "Stroma": 1}
    typing.close_panel()
    text = [m for m in messages_since(start) if "nuclei from cells.geojson" in m][-1]
    assert "4 labelled as 2 types" in text and "1 objects skipped" in text
    np.testing.assert_allclose(
        points.data[:, ::-1], np.asarray(centres, float), atol=0.5
    )
