"""Brush hit tests: nuclei within a radius of a stroke, the nearest to a click.

Numpy only; the brush on the canvas is tested in test_cell_types_widget.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_lemon.analysis.brush_hits import (
    BrushIndex,
    distance_to_polyline,
    sample_polyline,
)


def brute_force_hits(centroids, polyline, radius):
    """Rows within ``radius`` of the polyline, every nucleus measured by shapely."""
    import shapely

    line = shapely.LineString(polyline)
    return np.flatnonzero(shapely.distance(line, shapely.points(centroids)) <= radius)


def test_distance_to_a_segment_is_the_perpendicular_or_the_nearest_end():
    line = np.array([[0.0, 0.0], [10.0, 0.0]])
    points = np.array([[5.0, 3.0], [-4.0, 3.0], [13.0, -4.0], [10.0, 0.0]])

    np.testing.assert_allclose(distance_to_polyline(points, line), [3, 5, 5, 0])


def test_distance_to_a_polyline_matches_shapely():
    import shapely

    rng = np.random.default_rng(2)
    points, line = rng.uniform(0, 100, (500, 2)), rng.uniform(0, 100, (7, 2))

    expected = shapely.distance(shapely.LineString(line), shapely.points(points))
    np.testing.assert_allclose(distance_to_polyline(points, line), expected)


def test_distance_to_a_single_vertex_and_a_zero_length_segment():
    points = np.array([[3.0, 4.0]])

    assert distance_to_polyline(points, np.array([[0.0, 0.0]]))[0] == 5
    assert distance_to_polyline(points, np.zeros((2, 2)))[0] == 5


def test_stroke_hits_match_a_brute_force_test():
    rng = np.random.default_rng(0)
    centroids = rng.uniform(0, 1000, (5000, 2))
    index = BrushIndex(centroids)
    stroke = np.array([[100.0, 100.0], [400.0, 150.0], [420.0, 600.0], [800, 900]])

    for radius in (3.0, 25.0, 80.0):
        got = index.hits(stroke, radius)

        assert len(got) > 0
        np.testing.assert_array_equal(got, brute_force_hits(centroids, stroke, radius))
        assert (np.diff(got) > 0).all()


def test_a_dab_hits_a_disc_and_nothing_outside_it():
    centroids = np.array([[0.0, 0.0], [3.0, 4.0], [3.1, 4.0], [-5.0, 0.0]])

    got = BrushIndex(centroids).hits(np.array([[0.0, 0.0]]), radius_px=5)

    assert got.tolist() == [0, 1, 3]


def test_click_picks_the_nearest_nucleus_within_the_limit():
    index = BrushIndex(np.array([[0.0, 0.0], [10.0, 0.0]]))

    assert index.nearest((7.0, 1.0), max_px=5) == 1
    assert index.nearest((5.0, 20.0), max_px=5) is None


def test_an_index_of_no_nuclei_hits_nothing():
    index = BrushIndex(np.empty((0, 2)))

    assert len(index.hits(np.array([[0.0, 0.0], [5.0, 5.0]]), 10)) == 0
    assert index.nearest((0.0, 0.0), 10) is None
    assert len(index) == 0


def test_very_long_strokes_are_sampled_within_the_cap():
    stroke = np.array([[0.0, 0.0], [1e7, 0.0]])

    samples = sample_polyline(stroke, 1.0)

    assert len(samples) <= 20_001
    np.testing.assert_array_equal(samples[[0, -1]], stroke)
    index = BrushIndex(np.array([[5e6, 3.0], [5e6, 30.0]]))
    assert index.hits(stroke, 5.0).tolist() == [0]  # still exact


def test_bad_strokes_radii_and_centroids_are_refused():
    index = BrushIndex(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="radius_px=-1"):
        index.hits(np.zeros((2, 2)), -1)
    with pytest.raises(ValueError, match=r"polyline_xy of shape \(2, 3\)"):
        index.hits(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="max_px=nan"):
        index.nearest((0, 0), float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        BrushIndex(np.array([[0.0, np.inf]]))


@pytest.mark.slow
def test_a_stroke_over_a_million_nuclei_takes_under_50_ms():
    rng = np.random.default_rng(1)
    side = 100_000.0  # a slide of 1,000,000 nuclei, 100 px apart on average
    index = BrushIndex(rng.uniform(0, side, (1_000_000, 2)))
    t = np.linspace(0, 1, 200)[:, None]
    stroke = np.hstack([20_000 + 20_000 * t, 30_000 + 5_000 * np.sin(6 * t)])
    index.hits(stroke, 200.0)  # warm

    started = time.perf_counter()
    hits = index.hits(stroke, 200.0)
    seconds = time.perf_counter() - started

    assert len(hits) > 500
    assert seconds < 0.05, f"stroke took {seconds * 1000:.0f} ms"
