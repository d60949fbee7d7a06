"""Outlines coloured by cluster over the image."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lemon.overlay import (
    cluster_palette,
    render_overlay,
    shrink_for_display,
)


def two_squares():
    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 2:8] = 3
    labels[10:18, 15:25] = 7
    image = np.full((20, 30, 3), 200, np.uint8)
    return image, labels


def test_outlines_take_the_colour_of_their_cluster():
    image, labels = two_squares()
    palette = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    out = render_overlay(image, labels, [3, 7], [1, 0], palette)

    # the rim of each square is coloured, its inside and the background are not
    assert tuple(out[2, 5]) == (0, 0, 255) and tuple(out[7, 2]) == (0, 0, 255)
    assert tuple(out[10, 20]) == (255, 0, 0) and tuple(out[17, 24]) == (255, 0, 0)
    assert tuple(out[5, 5]) == (200, 200, 200)
    assert tuple(out[0, 0]) == (200, 200, 200)
    assert out.dtype == np.uint8 and image[2, 5, 0] == 200  # input untouched


def test_thicker_outlines_reach_further_inside():
    image, labels = two_squares()
    thin = render_overlay(image, labels, [3, 7], [0, 0], thickness=1)
    thick = render_overlay(image, labels, [3, 7], [0, 0], thickness=2)
    assert tuple(thin[11, 20]) == (200, 200, 200)
    assert tuple(thick[11, 20]) == tuple(cluster_palette(1)[0])


def test_unlisted_labels_and_negative_values_are_not_drawn():
    image, labels = two_squares()
    out = render_overlay(image, labels, [3], [-1])
    np.testing.assert_array_equal(out, image)


def test_no_nuclei_returns_the_image():
    image, labels = two_squares()
    out = render_overlay(image, labels, [], [])
    np.testing.assert_array_equal(out, image)


def test_palette_colours_are_distinct_beyond_twenty():
    palette = cluster_palette(40)
    assert palette.shape == (40, 3) and palette.dtype == np.uint8
    assert len({tuple(c) for c in palette}) == 40
    assert cluster_palette(0).shape == (0, 3)


def test_shrink_for_display_keeps_sides_within_the_limit():
    image = np.zeros((1000, 500, 3), np.uint8)
    labels = np.arange(500000, dtype=np.int32).reshape(1000, 500)
    small_image, small_labels = shrink_for_display(image, labels, max_side=300)
    assert small_labels.shape == (250, 125) and small_image.shape == (250, 125, 3)
    assert small_labels[1, 1] == labels[4, 4]
    same_image, same_labels = shrink_for_display(image, labels, max_side=1000)
    assert same_labels is labels


def test_render_overlay_refuses_mismatched_shapes():
    image, labels = two_squares()
    with pytest.raises(ValueError, match=r"labels \(10, 30\)"):
        render_overlay(image, labels[:10], [3], [0])
    with pytest.raises(ValueError, match="one value per label"):
        render_overlay(image, labels, [3, 7], [0])


def test_palette_refuses_negative_k():
    with pytest.raises(ValueError, match="k=-1"):
        cluster_palette(-1)


def _square(x0: float, y0: float, side: float) -> np.ndarray:
    return np.array(
        [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]]
    )


def test_draw_outlines_draws_perimeters_and_dots_in_cluster_colours():
    from napari_lemon.overlay import cluster_palette, draw_outlines
    from napari_lemon.store import pack_outlines

    # a 40 px square (10 px at scale 4) and a 4 px one (a dot at scale 4)
    packed = pack_outlines([_square(40, 40, 40), _square(200, 120, 4)], 2)
    image = np.zeros((64, 64, 3), np.uint8)
    out = draw_outlines(image, packed["offsets"], packed["xy"], np.array([0, 1]), 4.0)

    colours = cluster_palette(2)
    first = np.all(out == colours[0], axis=-1)
    assert first[10, 10:21].all() and first[20, 10:21].all() and not first[15, 15]
    second = np.all(out == colours[1], axis=-1)
    assert second.sum() == 1 and second[30, 50]
    assert image.max() == 0  # the input is left as it was


def test_draw_outlines_skips_negative_values_and_clips_to_the_image():
    from napari_lemon.overlay import draw_outlines
    from napari_lemon.store import pack_outlines

    packed = pack_outlines([_square(-10, -10, 30), _square(5, 5, 8)], 2)
    out = draw_outlines(
        np.zeros((32, 32, 3), np.uint8), packed["offsets"], packed["xy"], [0, -1], 1.0
    )
    drawn = out.any(axis=-1)
    assert drawn[20, :21].all() and drawn[:21, 20].all()  # the parts inside
    assert drawn.sum() == 41
    assert not drawn[5:14, 5:14].any()  # value -1: not drawn


def test_draw_outlines_needs_one_value_per_nucleus():
    from napari_lemon.overlay import draw_outlines
    from napari_lemon.store import pack_outlines

    packed = pack_outlines([_square(0, 0, 5)], 1)
    with pytest.raises(ValueError, match="1 outlines but 2 values"):
        draw_outlines(
            np.zeros((8, 8, 3), np.uint8), packed["offsets"], packed["xy"], [0, 1], 1
        )
