"""The "LEMON nuclei" panel in a real napari viewer.

Needs a display: pytest-xvfb starts one when Xvfb is installed (see .ci/run).
Without one the module is skipped, unless LEMON_REQUIRE_DISPLAY=1 (set in CI)
makes that a failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from needs_display import require_display

require_display()

from napari.layers import Image, Points  # noqa: E402
from napari.utils.notifications import notification_manager  # noqa: E402

from napari_lemon._widgets import AnalysisWidget  # noqa: E402
from napari_lemon._widgets import analysis_widget as aw  # noqa: E402
from napari_lemon._widgets._nuclei_display import display_of  # noqa: E402
from napari_lemon._widgets._source import write_layer_tiff  # noqa: E402
from napari_lemon.segment import DEFAULT_SEGMENTER  # noqa: E402
from napari_lemon.slide import open_slide  # noqa: E402

CMU1 = "CMU-1-Small-Region.svs"
CMU1_MPP = 0.499
# level-0 (x, y, width, height) over epidermis: about 500 and 150 nuclei
REGION = (1000, 1500, 800, 800)
SMALL_REGION = (1100, 1600, 400, 400)
RUN_TIMEOUT_MS = 300_000


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def cmu1_layer(viewer, shared_data):
    """CMU-1 opened through the napari-lemon reader, as napari would."""
    [layer] = viewer.open(shared_data / "wsi" / CMU1, plugin="napari-lemon")
    return layer


@pytest.fixture
def widget(viewer, qtbot):
    """The panel as napari's Plugins menu opens it (with napari's viewer proxy)."""
    _, panel = viewer.window.add_plugin_dock_widget("napari-lemon", "LEMON nuclei")
    yield panel
    if panel.worker is not None:  # never leave a thread running past a test
        panel.cancel()
        qtbot.waitUntil(lambda: panel.worker is None, timeout=RUN_TIMEOUT_MS)


def draw_rectangle(viewer, region, mpp, shapes_scale=None):
    """A Shapes layer holding one rectangle over level-0 ``region``.

    With ``shapes_scale=None`` the layer's data are microns (scale 1); with the
    image's scale they are pixels, like a layer made by napari's "new shapes" button.
    """
    x, y, width, height = region
    corners_um = np.array([[y, x], [y + height, x + width]]) * mpp
    scale = (1.0, 1.0) if shapes_scale is None else shapes_scale
    return viewer.add_shapes(
        [corners_um / np.asarray(scale)],
        shape_type="rectangle",
        scale=scale,
        units=("um", "um"),
        name="region",
    )


def use_model_file(widget, path):
    widget._model.value = aw.FROM_FILE
    widget._model_file.value = path


def new_messages(start):
    return [str(n.message) for n in notification_manager.records[start:]]


def test_plugin_menu_opens_the_panel(viewer, widget):
    layer = viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True, name="rgb")

    assert isinstance(widget, AnalysisWidget)
    assert [choice.name for choice in widget._image.choices] == [layer.name]


def test_panel_lists_rgb_layers_and_prefills_mpp(viewer, widget, cmu1_layer):
    viewer.add_image(np.zeros((10, 10), np.uint8), name="grey")

    assert [choice.name for choice in widget._image.choices] == [cmu1_layer.name]
    assert widget._mpp.value == pytest.approx(CMU1_MPP, abs=1e-4)


def test_mpp_comes_from_a_physical_layer_scale(viewer, widget):
    rgb = np.zeros((20, 30, 3), np.uint8)
    viewer.add_image(rgb, rgb=True, scale=(0.25, 0.25), units=("um", "um"))

    assert widget._mpp.value == pytest.approx(0.25)


@pytest.mark.parametrize("shapes_scale", [None, (CMU1_MPP, CMU1_MPP)])
def test_rectangle_region_is_in_level0_pixels(viewer, widget, cmu1_layer, shapes_scale):
    draw_rectangle(viewer, REGION, CMU1_MPP, shapes_scale)
    widget._region.value = aw.RECTANGLE

    region = widget.region_of(cmu1_layer)

    assert region == REGION


def test_current_view_region_follows_the_camera(viewer, widget, cmu1_layer):
    camera = getattr(viewer, "scene", viewer).camera
    camera.center = (1500 * CMU1_MPP, 1000 * CMU1_MPP)
    camera.zoom = 2.0  # canvas px per micron
    widget._region.value = aw.VIEW

    x, y, width, height = widget.region_of(cmu1_layer)
    rows, cols = viewer.canvas.size

    assert (x + width / 2, y + height / 2) == pytest.approx((1000, 1500), abs=1)
    expected = (cols / 2.0 / CMU1_MPP, rows / 2.0 / CMU1_MPP)
    assert (width, height) == pytest.approx(expected, abs=1)


def test_missing_rectangle_is_reported_and_nothing_runs(viewer, widget, cmu1_layer):
    widget._region.value = aw.RECTANGLE
    start = len(notification_manager.records)

    widget.run()

    assert widget.worker is None
    assert any("no rectangle in any Shapes layer" in m for m in new_messages(start))


def test_no_mpp_shows_an_error_and_adds_no_layer(viewer, widget, shared_data):
    with pytest.warns(UserWarning, match="no pixel size"):
        viewer.open(
            shared_data / "wsi" / "tcga-cr-7395-01a-01-ts1.svs", plugin="napari-lemon"
        )
    assert widget._mpp.value == 0
    start, n_layers = len(notification_manager.records), len(viewer.layers)

    widget.run()

    assert widget.worker is None and len(viewer.layers) == n_layers
    assert any("mpp is unknown" in m for m in new_messages(start))
    assert widget._run.enabled


def test_worker_error_is_shown_and_the_panel_stays_usable(
    viewer, widget, cmu1_layer, qtbot, tmp_path
):
    bad_model = tmp_path / "broken.safetensors"
    bad_model.write_bytes(b"not a checkpoint")
    use_model_file(widget, bad_model)
    start, n_layers = len(notification_manager.records), len(viewer.layers)

    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)

    messages = new_messages(start)
    assert any("LEMON analysis failed" in m and "broken" in m for m in messages)
    assert len(viewer.layers) == n_layers
    assert widget._run.enabled and not widget._cancel.enabled


def test_missing_model_file_is_reported_and_nothing_runs(widget, cmu1_layer, tmp_path):
    use_model_file(widget, tmp_path / "nowhere.safetensors")
    start = len(notification_manager.records)

    widget.run()

    assert widget.worker is None
    assert any(
        "nowhere.safetensors" in m and "does not exist" in m
        for m in new_messages(start)
    )


def test_runtime_errors_of_the_pipeline_are_reported(
    viewer, widget, cmu1_layer, qtbot, monkeypatch
):
    import napari_lemon.pipeline

    def failing_steps(slide, **params):
        yield "read", 0, 1
        raise RuntimeError("out of memory in the encoder")

    monkeypatch.setattr(napari_lemon.pipeline, "analysis_steps", failing_steps)
    start, n_layers = len(notification_manager.records), len(viewer.layers)

    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)

    assert any("out of memory in the encoder" in m for m in new_messages(start))
    assert len(viewer.layers) == n_layers and widget._status.value == "failed"


def test_run_on_a_drawn_rectangle_adds_clustered_nuclei(
    viewer, widget, cmu1_layer, qtbot, random_encoder_path, tmp_path
):
    draw_rectangle(viewer, REGION, CMU1_MPP)
    widget._region.value = aw.RECTANGLE
    widget._clusters.value = 4
    use_model_file(widget, random_encoder_path)

    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)

    # one points layer whose features are the obs table, on the image
    [nuclei] = [layer for layer in viewer.layers if isinstance(layer, Points)]
    features = nuclei.features
    assert {"cluster", "x", "y", "area_um2"} <= set(features.columns)
    assert len(nuclei.data) == len(features) > 50
    assert widget._segmenter.value == DEFAULT_SEGMENTER
    assert (features["segmenter"] == DEFAULT_SEGMENTER).all()
    assert set(features["cluster"]) <= {"0", "1", "2", "3"}
    np.testing.assert_allclose(nuclei.data, features[["y", "x"]].to_numpy())
    np.testing.assert_allclose(nuclei.scale, cmu1_layer.scale)

    # nuclei lie inside the rectangle; one colour per cluster
    x, y, width, height = REGION
    assert features["x"].between(x - 1, x + width + 1).all()
    assert features["y"].between(y - 1, y + height + 1).all()
    colours = {tuple(c) for c in np.round(nuclei.face_color, 3)}
    assert len(colours) == features["cluster"].nunique()

    # outlines of the nuclei in view once zoomed in, and the results kept for saving
    display = display_of(nuclei)
    camera = getattr(viewer, "scene", viewer).camera
    camera.center = ((y + height / 2) * CMU1_MPP, (x + width / 2) * CMU1_MPP)
    camera.zoom = 4.0
    display.refresh()
    assert display.layer.visible and "outlines" in display.layer.name
    assert 0 < len(display.rows) < len(features)
    adata = nuclei.metadata["lemon_adata"]
    assert adata.n_obs == len(features)
    saved = widget.save_results(tmp_path / "cmu1.h5ad")
    assert saved.is_file()


def test_cancel_stops_the_worker_without_adding_layers(
    viewer, widget, cmu1_layer, qtbot, random_encoder_path
):
    from napari.utils import progress

    use_model_file(widget, random_encoder_path)
    n_layers = len(viewer.layers)
    stages, aborted = [], []

    # cancel once the first stage has reported
    widget.run()
    widget.worker.yielded.connect(lambda step: stages.append(step[0]))
    widget.worker.aborted.connect(lambda: aborted.append(True))
    qtbot.waitUntil(lambda: len(stages) > 0, timeout=RUN_TIMEOUT_MS)
    bars = [bar.desc for bar in progress._all_instances]
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)

    assert any(desc.startswith("LEMON: ") for desc in bars)
    assert aborted == [True] and "cluster" not in stages
    assert len(viewer.layers) == n_layers
    assert widget._run.enabled and widget._status.value == "cancelled"
    assert not any(bar.desc.startswith("LEMON") for bar in progress._all_instances)


def test_save_without_results_is_reported(widget):
    start = len(notification_manager.records)

    assert widget.save_results() is None

    assert any("No LEMON results" in m for m in new_messages(start))


def test_plain_layer_is_written_to_a_tiff_with_its_mpp(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (300, 200, 4), np.uint8)

    path = write_layer_tiff(pixels, 0.25, tmp_path / "layer.tif")

    with open_slide(path) as slide:
        assert slide.dimensions == (200, 300)
        assert slide.mpp == pytest.approx(0.25, rel=1e-3)
        np.testing.assert_array_equal(
            slide.read_region((0, 0), 0, (200, 300)), pixels[..., :3]
        )


def test_layer_tiff_refuses_non_rgb_data(tmp_path):
    with pytest.raises(ValueError, match="is not an RGB image"):
        write_layer_tiff(np.zeros((10, 10), np.float32), 0.25, tmp_path / "x.tif")


def test_plain_rgb_layer_runs_through_a_temporary_tiff(
    viewer, widget, qtbot, shared_data, random_encoder_path
):
    with open_slide(shared_data / "wsi" / CMU1) as slide:
        pixels = slide.read_region(SMALL_REGION[:2], 0, SMALL_REGION[2:])
    layer = viewer.add_image(pixels, rgb=True, name="crop")
    assert isinstance(layer, Image) and widget._mpp.value == 0
    widget._image.value = layer
    widget._mpp.value = CMU1_MPP
    widget._outlines.value = False
    use_model_file(widget, random_encoder_path)

    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)

    [nuclei] = [lay for lay in viewer.layers if isinstance(lay, Points)]
    assert len(nuclei.data) > 50
    assert nuclei.features["x"].between(0, SMALL_REGION[2]).all()


GUARD_SCRIPT = """
import numpy as np
import napari
from napari_lemon._widgets import AnalysisWidget

viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True)
AnalysisWidget(viewer)

import torch
from napari_lemon.encoder import EncoderCard, create_vit

print(tuple(create_vit(EncoderCard())(torch.zeros(1, 3, 40, 40)).shape))
viewer.close()
"""


def test_the_encoder_loads_after_the_canvas_without_crashing(tmp_path):
    # a fresh process: this one may have imported torch before any canvas
    import subprocess

    script = tmp_path / "guard.py"
    script.write_text(GUARD_SCRIPT)

    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1, 384)" in done.stdout


def test_sample_menu_opens_cmu1_in_microns(viewer, shared_data, monkeypatch):
    monkeypatch.setenv("LEMON_DATA_DIR", str(shared_data / "wsi"))

    [layer] = viewer.open_sample("napari-lemon", "cmu1_small_region")

    assert layer.name == CMU1 and layer.rgb
    assert tuple(layer.scale) == pytest.approx((CMU1_MPP, CMU1_MPP), abs=1e-4)


# -------------------------------------------------------------- whole slides
SYNTH_MPP, SYNTH_TILE_UM = 0.25, 64.0  # tiles of 256 level-0 px


def synthetic_slide(path, tiles=(3, 2), spacing=48, seed=0):
    """A pink pyramidal TIFF of ``tiles`` 256-px tiles, purple discs on a grid."""
    import tifffile

    width, height = 256 * tiles[0], 256 * tiles[1]
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.float32)
    image[:] = (236, 196, 220)
    rows, cols = np.mgrid[:height, :width]
    centres = [
        (x, y)
        for y in range(spacing // 2, height - 16, spacing)
        for x in range(spacing // 2, width - 16, spacing)
    ]
    for x, y in centres:
        image[(cols - x) ** 2 + (rows - y) ** 2 <= 14**2] = (78, 42, 136)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    per_cm = 1e4 / SYNTH_MPP
    options = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(
            image, resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", **options
        )
        tiff.write(image[::2, ::2], subfiletype=1, **options)
    return path, len(centres)


@pytest.fixture(scope="module")
def shallow_encoder_path(tmp_path_factory):
    """A random LEMON ViT cut to 1 block: the code path of the real one, faster."""
    import torch

    from napari_lemon.checkpoint import save_checkpoint
    from napari_lemon.encoder import EncoderCard, create_vit

    torch.manual_seed(0)
    card = EncoderCard(name="random-shallow", depth=1)
    path = tmp_path_factory.mktemp("encoder") / "shallow.safetensors"
    return save_checkpoint(create_vit(card), card, path)


@pytest.fixture
def slide_layer(viewer, tmp_path):
    path, n_discs = synthetic_slide(tmp_path / "synthetic.tif")
    [layer] = viewer.open(path, plugin="napari-lemon")
    return layer, n_discs


def whole_slide_panel(widget, encoder_path):
    widget._region.value = aw.WHOLE_SLIDE
    widget._tile_um.value = SYNTH_TILE_UM
    widget._segmenter.value = "classical"
    widget._clusters.value = 3
    use_model_file(widget, encoder_path)


def test_whole_slide_run_writes_a_store_beside_the_slide_and_shows_the_nuclei(
    viewer, widget, slide_layer, qtbot, shallow_encoder_path
):
    from napari.utils import progress

    layer, n_discs = slide_layer
    whole_slide_panel(widget, shallow_encoder_path)
    bars = []

    widget.run()
    widget.worker.yielded.connect(
        lambda step: bars.extend((b.desc, b.total) for b in progress._all_instances)
    )
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)

    slide = Path(layer.metadata["lemon_slide_path"])
    out = slide.with_name("synthetic.lemon.zarr")
    [nuclei] = [lay for lay in viewer.layers if isinstance(lay, Points)]
    assert out.is_dir()
    assert abs(len(nuclei.data) - n_discs) <= 2
    assert set(nuclei.features["cluster"]) <= {"0", "1", "2"}
    # a 3 x 2 tile grid, shown with its count
    assert any(desc.startswith("LEMON: tiles") and n == 6 for desc, n in bars)
    assert display_of(nuclei) is not None and widget._colour_by.value == "cluster"

    # running the finished store again replaces its layer (and its raster)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    [nuclei] = [lay for lay in viewer.layers if isinstance(lay, Points)]
    assert len([lay for lay in viewer.layers if "dots & outlines" in lay.name]) == 1
    assert nuclei.metadata["lemon_store_path"] == out
    assert widget._status.value.endswith("replaced the layer of synthetic.lemon.zarr")

    # the store opens again through "Load results"
    viewer.layers.remove(nuclei)
    assert not [lay for lay in viewer.layers if "dots & outlines" in lay.name]
    loader = widget.load_results(out)
    qtbot.waitUntil(lambda: widget._loader is None, timeout=RUN_TIMEOUT_MS)
    assert loader is not None
    [again] = [lay for lay in viewer.layers if isinstance(lay, Points)]
    np.testing.assert_allclose(again.scale, layer.scale)
    assert len(again.data) == len(nuclei.data)


def test_cancelled_whole_slide_run_resumes_where_it_stopped(
    viewer, widget, slide_layer, qtbot, shallow_encoder_path
):
    whole_slide_panel(widget, shallow_encoder_path)
    statuses = []

    # cancel once the first tile is stored
    def cancel_after_a_tile(step):
        if step[0] == "tiles" and step[1] >= 1:
            widget.cancel()

    widget.run()
    widget.worker.yielded.connect(cancel_after_a_tile)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    assert widget._status.value.startswith("cancelled")
    assert not [lay for lay in viewer.layers if isinstance(lay, Points)]

    # run again: it says how far the first run got, and finishes
    widget.run()
    widget.worker.yielded.connect(lambda _: statuses.append(widget._status.value))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    resumed = sorted({s for s in statuses if s.startswith("resuming")})
    assert len(resumed) == 1
    done = int(resumed[0].split()[1])
    assert 1 <= done < 6 and resumed[0].endswith("of 6 tiles done")
    assert len([lay for lay in viewer.layers if isinstance(lay, Points)]) == 1


def test_whole_slide_errors_are_shown_before_anything_runs(
    viewer, widget, slide_layer, tmp_path, monkeypatch, shallow_encoder_path
):
    from napari_lemon._widgets import _slide_job

    whole_slide_panel(widget, shallow_encoder_path)
    start = len(notification_manager.records)

    # a folder that does not exist, then one that cannot be written
    widget._folder.value = tmp_path / "nowhere"
    widget.run()
    monkeypatch.setattr(_slide_job.os, "access", lambda *args: False)
    widget._folder.value = tmp_path
    widget.run()

    # a layer that has no slide file
    monkeypatch.undo()
    plain = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="plain")
    widget._image.value = plain
    widget._mpp.value = 0.25
    widget.run()

    messages = new_messages(start)
    assert widget.worker is None
    assert any("nowhere" in m and "does not exist" in m for m in messages)
    assert any("cannot be written" in m for m in messages)
    assert any("needs a layer opened from a slide file" in m for m in messages)


def test_loading_a_file_that_is_not_results_is_reported(widget, qtbot, tmp_path):
    bad = tmp_path / "other.h5ad"
    bad.write_bytes(b"not hdf5")
    start = len(notification_manager.records)

    widget.load_results(bad)
    qtbot.waitUntil(lambda: widget._loader is None, timeout=RUN_TIMEOUT_MS)

    assert any("Could not load LEMON results" in m for m in new_messages(start))
    assert widget._status.value == "could not load other.h5ad"


# ---------------------------------------------------------- loaded results
def small_results(source: str, n: int = 30, mpp: float = SYNTH_MPP):
    """Results of ``n`` nuclei said to come from the image named ``source``."""
    import pandas as pd

    from napari_lemon.store import build_results

    rng = np.random.default_rng(0)
    xy = rng.uniform(20, 200, (n, 2))
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(n, dtype=np.int64),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "area_um2": np.full(n, 30.0),
            "segmenter": "classical",
            "tile_id": np.zeros(n, np.int64),
            "cluster": np.arange(n) % 3,
        }
    )
    square = np.array([[-2, -2], [2, -2], [2, 2], [-2, 2]], np.float32)
    provenance = {"source": {"name": source}, "mpp": mpp}
    embeddings = rng.normal(size=(n, 8)).astype(np.float32)
    return build_results(obs, embeddings, [p + square for p in xy], provenance)


def load_and_wait(widget, qtbot, path):
    widget.load_results(path)
    qtbot.waitUntil(lambda: widget._loader is None, timeout=RUN_TIMEOUT_MS)
    return [lay for lay in widget._viewer.layers if isinstance(lay, Points)]


def test_results_of_another_image_are_placed_in_microns_with_a_warning(
    viewer, widget, slide_layer, qtbot, tmp_path
):
    from napari_lemon.store import write_results

    path = write_results(small_results("other.svs"), tmp_path / "other.lemon.h5ad")
    start = len(notification_manager.records)

    [nuclei] = load_and_wait(widget, qtbot, path)

    [message] = [m for m in new_messages(start) if "not of the chosen image" in m]
    assert "results of 'other.svs'" in message and "'synthetic.tif'" in message
    assert "placed in microns" in message and "choose image 'other.svs'" in message
    np.testing.assert_allclose(nuclei.scale, (SYNTH_MPP, SYNTH_MPP))


def test_results_of_the_chosen_image_are_placed_on_it_without_a_warning(
    viewer, widget, slide_layer, qtbot, tmp_path
):
    from napari_lemon.store import write_results

    layer, _ = slide_layer
    path = write_results(small_results("synthetic.tif"), tmp_path / "s.lemon.h5ad")
    start = len(notification_manager.records)

    [nuclei] = load_and_wait(widget, qtbot, path)

    assert not [m for m in new_messages(start) if "not of the chosen" in m]
    np.testing.assert_allclose(nuclei.scale, layer.scale)
    assert widget._status.value == f"30 nuclei from {path.name}"


def test_results_without_mpp_are_refused_and_the_status_says_so(
    widget, qtbot, tmp_path
):
    from napari_lemon.store import write_results

    adata = small_results("other.svs")
    adata.uns["lemon"].pop("mpp")
    path = write_results(adata, tmp_path / "nompp.lemon.h5ad")
    start = len(notification_manager.records)

    assert load_and_wait(widget, qtbot, path) == []

    assert any("records no mpp" in m for m in new_messages(start))
    assert widget._status.value == "could not load nompp.lemon.h5ad"


def test_image_lists_leave_out_the_nuclei_raster(viewer, widget, slide_layer, qtbot):
    from napari_lemon._widgets.export_widget import ExportWidget

    layer, _ = slide_layer
    widget.show_nuclei(small_results("synthetic.tif"), layer, SYNTH_MPP)
    exporter = ExportWidget(viewer)

    rasters = [lay for lay in viewer.layers if "dots & outlines" in lay.name]
    assert len(rasters) == 1 and isinstance(rasters[0], Image)
    assert [c.name for c in widget._image.choices] == [layer.name]
    assert [c.name for c in exporter._image.choices] == [layer.name]


def test_colour_by_follows_a_recolour_made_elsewhere(viewer, widget, qtbot):
    import pandas as pd

    from napari_lemon._widgets._nuclei_display import COLOUR_KEY, recolour

    nuclei = widget.show_nuclei(small_results("a.svs"), None, SYNTH_MPP)
    assert widget._colour_by.value == "cluster"
    features = nuclei.features.copy()
    features["probe_kind"] = pd.Categorical(["a", "b"] * 15)
    nuclei.features = features

    # another panel recolours the layer: the choice follows, nothing recolours
    recolour(nuclei, "probe_kind", {"a": "#ff0000", "b": "#0000ff"})
    record, colours = nuclei.metadata[COLOUR_KEY], np.asarray(nuclei.face_color)
    qtbot.waitUntil(lambda: widget._colour_by.value == "probe_kind", timeout=3000)
    qtbot.wait(2 * aw.COLOUR_POLL_MS)

    assert nuclei.metadata[COLOUR_KEY] is record
    np.testing.assert_array_equal(np.asarray(nuclei.face_color), colours)
    np.testing.assert_allclose(np.asarray(nuclei.face_color)[0, :3], (1, 0, 0))

    # choosing in the panel still recolours
    widget._colour_by.value = "cluster"
    assert nuclei.metadata[COLOUR_KEY]["column"] == "cluster"


def test_colour_by_a_probe_uses_the_type_colours_the_results_keep(widget):
    import pandas as pd

    adata = small_results("a.svs")
    adata.obs["probe_kind"] = pd.Categorical(["a", "b"] * 15)
    adata.uns["probe_kind_colors"] = ["#ff0000", "#0000ff"]
    nuclei = widget.show_nuclei(adata, None, SYNTH_MPP)

    widget._colour_by.value = "probe_kind"

    colours = np.asarray(nuclei.face_color)
    np.testing.assert_allclose(colours[0, :3], (1, 0, 0))
    np.testing.assert_allclose(colours[1, :3], (0, 0, 1))
