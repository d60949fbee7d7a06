"""Nuclei display: the centroid index, dot and outline rasters, recolouring, the view.

The index and raster tests are numpy only; the others need a display (pytest-xvfb
starts one when Xvfb is installed) and are skipped without one.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest

from napari_lemon._widgets._view_index import (
    CentroidIndex,
    outline_segments,
    rasterise_dots,
    rasterise_outlines,
)

HAS_DISPLAY = not sys.platform.startswith("linux") or bool(
    os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
)
needs_display = pytest.mark.skipif(
    not HAS_DISPLAY and not os.environ.get("LEMON_REQUIRE_DISPLAY"),
    reason="napari's canvas needs a display: install Xvfb (see .ci/run)",
)


def squares(centres: np.ndarray, half: float = 3.0):
    """Packed square outlines ``(offsets, xy)`` around ``(x, y)`` centres."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * half
    xy = (centres[:, None, :] + corners[None]).reshape(-1, 2).astype(np.float32)
    offsets = np.arange(len(centres) + 1, dtype=np.int64) * 4
    return offsets, xy


# -------------------------------------------------------------------- index
def test_index_query_matches_a_brute_force_box_test():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10_000, (20_000, 2))
    index = CentroidIndex(xy, strip_px=300)

    for box in [(100, 200, 1500, 700), (0, 0, 10_000, 10_000), (5000, 9990, 10, 10)]:
        x0, y0, w, h = box
        inside = (xy[:, 0] >= x0) & (xy[:, 0] < x0 + w)
        inside &= (xy[:, 1] >= y0) & (xy[:, 1] < y0 + h)

        np.testing.assert_array_equal(index.query(box), np.flatnonzero(inside))


def test_index_gives_up_above_the_limit():
    xy = np.random.default_rng(1).uniform(0, 1000, (5000, 2))
    index = CentroidIndex(xy)

    assert index.query((0, 0, 1000, 1000), limit=100) is None
    assert len(index.query((0, 0, 100, 100), limit=100)) < 100


def test_index_of_no_nuclei_and_boxes_outside():
    assert len(CentroidIndex(np.empty((0, 2))).query((0, 0, 10, 10))) == 0
    index = CentroidIndex(np.array([[5.0, 5.0]]))

    assert len(index.query((-100, -100, 10, 10))) == 0
    assert len(index.query((1e6, 1e6, 10, 10))) == 0


def test_index_refuses_bad_centroids_and_boxes():
    with pytest.raises(ValueError, match="not finite"):
        CentroidIndex(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="strip_px=0"):
        CentroidIndex(np.zeros((1, 2)), strip_px=0)
    with pytest.raises(ValueError, match="negative width"):
        CentroidIndex(np.zeros((1, 2))).query((0, 0, -1, 5))


# ------------------------------------------------------------------- raster
def test_segments_close_each_polygon_and_skip_degenerate_ones():
    offsets = np.array([0, 3, 4, 8])  # a triangle, a single point, a square
    xy = np.array([[0, 0], [4, 0], [0, 4], [9, 9]] + [[0, 0]] * 4, float)

    start, end, owner = outline_segments(offsets, xy, np.array([0, 1, 2]))

    assert list(owner) == [0, 0, 0, 2, 2, 2, 2]
    np.testing.assert_array_equal(end[2], start[0])  # last joins the first


def test_raster_draws_each_outline_in_its_colour_at_the_right_place():
    offsets, xy = squares(np.array([[10.0, 10.0], [30.0, 20.0]]), half=3)
    colours = np.array([[255, 0, 0, 255], [0, 0, 255, 255]], np.uint8)

    picture = rasterise_outlines(
        offsets, xy, np.array([0, 1]), colours, (0.0, 0.0), 1.0, (40, 50)
    )

    assert tuple(picture[7, 7]) == (255, 0, 0, 255)  # corner (x, y) = (7, 7)
    assert tuple(picture[10, 13]) == (255, 0, 0, 255)  # right edge
    assert tuple(picture[20, 33]) == (0, 0, 255, 255)
    assert picture[10, 10, 3] == 0  # the inside stays transparent
    assert (picture[..., 3] > 0).sum() == 2 * 4 * 6  # two 7 x 7 rings


def test_raster_step_and_origin_map_level0_to_pixels():
    offsets, xy = squares(np.array([[1000.0, 2000.0]]), half=8)

    picture = rasterise_outlines(
        offsets, xy, np.array([0]), np.full((1, 4), 255, np.uint8),
        (990.0, 1990.0), 2.0, (20, 20),
    )  # fmt: skip

    rows, cols = np.nonzero(picture[..., 3])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 9, 1, 9)


def test_raster_refuses_bad_steps_and_colours():
    offsets, xy = squares(np.array([[5.0, 5.0]]))
    with pytest.raises(ValueError, match="step_px=0"):
        rasterise_outlines(offsets, xy, [0], np.zeros((1, 4)), (0, 0), 0, (9, 9))
    with pytest.raises(ValueError, match="colours has 2 rows for 1 nuclei"):
        rasterise_outlines(offsets, xy, [0], np.zeros((2, 4)), (0, 0), 1, (9, 9))


def test_dots_are_discs_of_their_diameter_and_at_least_one_pixel():
    xy = np.array([[10.0, 10.0], [30.0, 20.0], [40.5, 5.2]])
    colours = np.array([[255, 0, 0, 255], [0, 0, 255, 128], [0, 255, 0, 255]])

    picture = rasterise_dots(xy, [10.0, 2.0, 0.1], colours, (0, 0), 2.0, (20, 30))

    red = np.argwhere(picture[..., 0] == 255)
    assert len(red) == 21 and tuple(red.mean(axis=0)) == (5, 5)  # radius 2.5 px
    assert tuple(picture[10, 15]) == (0, 0, 255, 128)  # radius 0.5: one pixel
    assert (picture[..., 2] > 0).sum() == 1
    assert tuple(picture[3, 20]) == (0, 255, 0, 255)  # tiny, still one pixel
    assert (picture[..., 3] > 0).sum() == 23


def test_small_dots_are_drawn_over_large_ones_and_off_picture_ones_dropped():
    xy = np.array([[5.0, 5.0], [5.0, 5.0], [-50.0, 3.0]])
    colours = np.array([[0, 9, 0, 255], [0, 0, 7, 255], [5, 5, 5, 255]])

    picture = rasterise_dots(xy, [1.0, 8.0, 4.0], colours, (0, 0), 1.0, (10, 10))

    assert tuple(picture[5, 5]) == (0, 9, 0, 255) and picture[5, 8, 2] == 7
    assert not (picture[..., 0] == 5).any()


def test_dots_refuse_bad_steps_and_lengths():
    with pytest.raises(ValueError, match="step_px=-1"):
        rasterise_dots(np.zeros((1, 2)), [1], np.zeros((1, 4)), (0, 0), -1, (4, 4))
    with pytest.raises(ValueError, match="1 centroids, 2 diameters and 1 colours"):
        rasterise_dots(np.zeros((1, 2)), [1, 2], np.zeros((1, 4)), (0, 0), 1, (4, 4))


# ------------------------------------------------------------------ colours
def test_column_colours_map_categories_numbers_and_missing_values():
    from napari_lemon._widgets._nuclei_display import MISSING_RGBA, column_colours

    labels = pd.Series(pd.Categorical(["b", "a", None, "b"], categories=["a", "b"]))
    palette = {"a": "red", "b": "blue"}

    colours = column_colours(labels, palette)

    np.testing.assert_allclose(
        colours[[0, 1, 3]], [[0, 0, 1, 1], [1, 0, 0, 1]] * 1 + [[0, 0, 1, 1]]
    )
    np.testing.assert_allclose(colours[2], MISSING_RGBA)
    numbers = column_colours(pd.Series([0.0, 0.5, 1.0, np.nan]), "gray")
    np.testing.assert_allclose(numbers[:3, 0], [0, 0.5, 1], atol=0.01)
    np.testing.assert_allclose(numbers[3], MISSING_RGBA)


def test_palettes_that_do_not_cover_the_categories_are_refused():
    from napari_lemon._widgets._nuclei_display import column_colours

    labels = pd.Series(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"no colour for categories \['c'\]"):
        column_colours(labels, {"a": "red", "b": "blue"})
    with pytest.raises(ValueError, match="does not colour 3 categories"):
        column_colours(labels, np.zeros((2, 3), np.uint8))


# ------------------------------------------------------------------- viewer
def nuclei_adata(xy: np.ndarray, clusters: np.ndarray):
    """Results with square outlines around ``(x, y)`` centroids."""
    from napari_lemon.store import build_results, set_clusters

    n = len(xy)
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(n),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "area_um2": 30.0,
            "segmenter": "test",
            "tile_id": 0,
            "probe_kind": np.where(np.arange(n) % 2, "tumour", "stroma"),
        }
    )
    offsets, packed = squares(xy, half=6)
    outlines = [packed[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    adata = build_results(obs, np.zeros((n, 4)), outlines, {})
    set_clusters(adata, clusters)
    return adata


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def nuclei(viewer):
    """2,000 nuclei on a 2,000 x 2,000 px image at 0.5 um/px, in 3 clusters."""
    from napari_lemon._widgets._results import add_nuclei

    rng = np.random.default_rng(0)
    xy = rng.uniform(20, 1980, (2000, 2))
    image = viewer.add_image(
        np.zeros((2000, 2000, 3), np.uint8), rgb=True, scale=(0.5, 0.5), name="he"
    )
    adata = nuclei_adata(xy, rng.integers(0, 3, len(xy)))
    return add_nuclei(viewer, adata, image, 0.5)


def set_view(viewer, centre_xy_px, zoom, mpp=0.5):
    camera = getattr(viewer, "scene", viewer).camera
    camera.center = (centre_xy_px[1] * mpp, centre_xy_px[0] * mpp)
    camera.zoom = zoom


@needs_display
def test_the_new_nuclei_layer_is_the_active_one(viewer, nuclei):
    assert viewer.layers.selection.active is nuclei
    assert viewer.layers[-1].name == f"{nuclei.name} dots & outlines"


@needs_display
def test_recolour_changes_colours_per_category_and_not_the_data(viewer, nuclei):
    from napari_lemon._widgets._nuclei_display import recolour

    data, features = nuclei.data, nuclei.features
    kinds = features["probe_kind"].to_numpy()

    recolour(nuclei, "probe_kind", {"tumour": "#ff0000", "stroma": "#00ff00"})

    assert nuclei.data is data and nuclei.features is features
    assert (nuclei.face_color[kinds == "tumour"] == [1, 0, 0, 1]).all()
    assert (nuclei.face_color[kinds == "stroma"] == [0, 1, 0, 1]).all()
    recolour(nuclei, "cluster")
    colours = {tuple(c) for c in np.round(nuclei.face_color, 3)}
    assert len(colours) == 3 and nuclei.metadata["lemon_colour"]["column"] == "cluster"


@needs_display
def test_recolour_names_an_unknown_column(viewer, nuclei):
    from napari_lemon._widgets._nuclei_display import recolour

    with pytest.raises(ValueError, match="column='probe_x' is not a feature"):
        recolour(nuclei, "probe_x")


def in_box(nuclei, box):
    (x0, y0, w, h) = box
    xy = nuclei.features[["x", "y"]].to_numpy()
    inside = (xy[:, 0] >= x0) & (xy[:, 0] < x0 + w)
    return np.flatnonzero(inside & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + h))


def raster_at(display, nuclei, rows):
    """The raster's RGBA at the centroids of ``rows``."""
    xy = nuclei.features.loc[rows, ["x", "y"]].to_numpy()
    world = [nuclei.data_to_world(p) for p in xy[:, ::-1]]
    r, c = np.rint([display.layer.world_to_data(w) for w in world]).astype(int).T
    return display.layer.data[r, c]


@needs_display
def test_zoomed_out_dots_replace_the_points_and_follow_a_recolour(viewer, nuclei):
    from napari_lemon._widgets._nuclei_display import display_of, recolour

    display = display_of(nuclei)
    display.max_outlines = 500
    viewer.reset_view()
    display.refresh()

    # all 2,000 in view: dots, the points hidden, their features and data kept
    assert display.mode == "dots" and len(display.rows) == 2000
    assert display.layer.visible and not nuclei.visible
    data, features = nuclei.data, nuclei.features
    recolour(nuclei, "probe_kind", {"tumour": "red", "stroma": "blue"})
    assert nuclei.data is data and nuclei.features is features
    tumour = np.flatnonzero(features["probe_kind"] == "tumour")
    assert (nuclei.face_color[tumour] == [1, 0, 0, 1]).all()  # set while hidden

    # each dot at its centroid, in its colour at the points' opacity
    pixels = raster_at(display, nuclei, np.arange(2000))
    expected = np.where(features["probe_kind"].to_numpy()[:, None] == "tumour",
                        [255, 0, 0], [0, 0, 255])  # fmt: skip
    assert ((pixels[:, :3] == expected).all(axis=1)).mean() > 0.95
    assert set(pixels[:, 3]) <= {round(255 * nuclei.opacity)}


@needs_display
def test_zoomed_in_the_points_and_the_outlines_in_view_come_back(viewer, nuclei):
    from napari_lemon._widgets._nuclei_display import display_of, recolour

    display = display_of(nuclei)
    display.max_outlines = 500
    viewer.reset_view()
    display.refresh()
    recolour(nuclei, "probe_kind", {"tumour": "red", "stroma": "lime"})

    set_view(viewer, (1000, 1000), zoom=4.0)
    display.refresh()
    box, _ = display.view_box()
    assert display.mode == "outlines" and nuclei.visible and display.layer.visible
    np.testing.assert_array_equal(display.rows, in_box(nuclei, box))
    assert 0 < len(display.rows) <= 500

    # the colours set while hidden reached the canvas when shown
    visual = viewer.window._qt_viewer.canvas.layer_to_visual[nuclei]
    drawn = visual.node.points_markers._data["a_bg_color"]
    np.testing.assert_allclose(drawn, nuclei.face_color[nuclei._view_indices])


@needs_display
def test_the_eyes_of_the_layers_hide_points_dots_and_outlines(viewer, nuclei):
    from napari_lemon._widgets._nuclei_display import display_of

    display = display_of(nuclei)
    display.max_outlines = 500
    viewer.reset_view()
    display.refresh()

    display.layer.visible = False  # the dots' eye, zoomed out: nothing drawn
    display.refresh()
    assert not display.layer.visible and not nuclei.visible
    display.layer.visible = True
    display.refresh()
    assert display.mode == "dots" and display.layer.visible

    set_view(viewer, (1000, 1000), zoom=4.0)
    display.refresh()
    nuclei.visible = False  # the points' eye, zoomed in: no outlines either
    display.refresh()
    assert not display.layer.visible and not nuclei.visible
    viewer.reset_view()
    display.refresh()
    assert not display.layer.visible and not nuclei.visible


@needs_display
def test_outline_picture_lies_on_the_nuclei_and_takes_their_colours(viewer, nuclei):
    from napari_lemon._widgets._nuclei_display import display_of, recolour

    display = display_of(nuclei)
    set_view(viewer, (1000, 1000), zoom=4.0)
    recolour(nuclei, "probe_kind", {"tumour": "red", "stroma": "lime"})

    # the outline of one nucleus in view, at its corner in world coordinates
    row = display.rows[0]
    x, y = nuclei.features.loc[row, ["x", "y"]]
    corner = nuclei.data_to_world([y - 6, x - 6])
    r, c = np.rint(display.layer.world_to_data(corner)).astype(int)
    colour = display.layer.data[r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 4)
    expected = np.rint(nuclei.face_color[row, :3] * 255)
    assert any((px[3] == 255) and (px[:3] == expected).all() for px in colour)


@needs_display
def test_removing_the_nuclei_removes_their_outlines(viewer, nuclei):
    from napari_lemon._widgets._nuclei_display import display_of

    outlines = display_of(nuclei).layer

    viewer.layers.remove(nuclei)

    assert outlines not in viewer.layers and display_of(nuclei) is None
