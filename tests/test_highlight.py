"""Rings over chosen nuclei, in a real napari viewer (needs a display)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from needs_display import require_display

require_display()

from napari_lemon._widgets._highlight import (  # noqa: E402
    MIN_RING_PX,
    clear_highlight,
    find_highlight,
    highlight,
    selected_rows,
)
from napari_lemon._widgets._results import add_nuclei, current_nuclei_layer  # noqa: E402
from napari_lemon.store import build_results  # noqa: E402


def square_nuclei(xy: np.ndarray, half: float = 4.0):
    """Results of nuclei with square outlines around ``(x, y)`` centres."""
    n = len(xy)
    obs = pd.DataFrame(
        {"nucleus_id": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "area_um2": 12.0}
        | {"segmenter": "test", "tile_id": 0}
    )
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * half
    outlines = [p + corners for p in xy]
    return build_results(obs, np.zeros((n, 4)), outlines, {"mpp": 0.5})


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def nuclei(viewer):
    """300 nuclei on a 1,000 px image at 0.5 um/px, shifted by a translate."""
    rng = np.random.default_rng(0)
    image = viewer.add_image(
        np.zeros((1000, 1000, 3), np.uint8),
        rgb=True,
        scale=(0.5, 0.5),
        translate=(10.0, 20.0),
        name="he",
    )
    return add_nuclei(viewer, square_nuclei(rng.uniform(10, 990, (300, 2))), image, 0.5)


def test_rings_lie_on_the_chosen_nuclei_in_world_coordinates(viewer, nuclei):
    rows = [3, 7, 250]

    rings = highlight(viewer, nuclei, rows)

    world_rings = [rings.data_to_world(p) for p in rings.data]
    world_nuclei = [nuclei.data_to_world(p) for p in nuclei.data[rows]]
    np.testing.assert_allclose(world_rings, world_nuclei)
    assert (np.asarray(rings.size) > np.asarray(nuclei.size)[rows]).all()
    assert (rings.face_color[:, 3] == 0).all()  # transparent: a ring
    np.testing.assert_allclose(rings.border_color, [[1, 1, 0, 1]] * 3)
    assert rings.canvas_size_limits[0] == MIN_RING_PX  # seen when zoomed out


def test_one_layer_per_name_replaced_on_each_call(viewer, nuclei):
    first = highlight(viewer, nuclei, [1, 2])
    again = highlight(viewer, nuclei, {5, 6, 9})
    other = highlight(viewer, nuclei, [0], name="similar", colour="#00ffff")

    assert again is first and other is not first
    np.testing.assert_array_equal(first.metadata["lemon_rows"], [5, 6, 9])
    assert len(first.data) == 3 and len(other.data) == 1
    np.testing.assert_allclose(other.border_color, [[0, 1, 1, 1]])
    assert find_highlight(viewer, "similar") is other


def test_rings_leave_the_nuclei_layer_active(viewer, nuclei):
    viewer.layers.selection.active = nuclei

    highlight(viewer, nuclei, [1])

    assert viewer.layers.selection.active is nuclei
    assert current_nuclei_layer(viewer) is nuclei


def test_selected_data_and_masks_become_rings(viewer, nuclei):
    nuclei.selected_data = {4, 8}
    rings = highlight(viewer, nuclei, nuclei.selected_data)
    np.testing.assert_array_equal(selected_rows(nuclei), [4, 8])
    assert len(rings.data) == 2

    mask = np.zeros(len(nuclei.data), bool)
    mask[[10, 11, 12]] = True
    highlight(viewer, nuclei, mask)
    np.testing.assert_array_equal(rings.metadata["lemon_rows"], [10, 11, 12])

    highlight(viewer, nuclei, [])
    assert len(rings.data) == 0 and rings in viewer.layers


def test_a_large_choice_is_drawn_as_an_even_subsample(viewer, nuclei):
    rings = highlight(viewer, nuclei, np.arange(300), max_rings=50)

    assert len(rings.data) == 50 and rings.metadata["lemon_shown"] == 50
    assert len(rings.metadata["lemon_rows"]) == 300


def test_clear_removes_the_rings_and_they_go_with_their_nuclei(viewer, nuclei):
    highlight(viewer, nuclei, [1])
    assert clear_highlight(viewer)
    assert find_highlight(viewer) is None and not clear_highlight(viewer)

    highlight(viewer, nuclei, [1], name="similar")
    viewer.layers.remove(nuclei)
    assert find_highlight(viewer, "similar") is None


def test_renamed_by_napari_the_ring_layer_is_still_found(viewer, nuclei):
    viewer.add_points(np.zeros((1, 2)), name="LEMON selection")  # someone else's

    rings = highlight(viewer, nuclei, [1])

    assert rings.name != "LEMON selection" and find_highlight(viewer) is rings
    assert highlight(viewer, nuclei, [2]) is rings


def test_bad_rows_are_refused_with_what_to_give(viewer, nuclei):
    with pytest.raises(ValueError, match=r"rows \[300\] are outside layer"):
        highlight(viewer, nuclei, [1, 300])
    with pytest.raises(ValueError, match=r"rows \[-1\] are outside"):
        highlight(viewer, nuclei, [-1])
    with pytest.raises(ValueError, match="mask of shape"):
        highlight(viewer, nuclei, np.ones(5, bool))
    with pytest.raises(ValueError, match="give row numbers"):
        highlight(viewer, nuclei, [0.5])
    with pytest.raises(ValueError, match="max_rings=0"):
        highlight(viewer, nuclei, [1], max_rings=0)
