"""The 2-D morphology map, its thumbnail grid and lasso selection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from napari_lemon.analysis.morphology_map import (
    MorphologyMap,
    embed_2d,
    rows_in_polygon,
    thumbnail_grid,
)


def blobs(n: int = 300, n_blobs: int = 3, dim: int = 64, seed: int = 0):
    """Well-separated Gaussian blobs, float16 like stored embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_blobs, dim))
    truth = rng.integers(0, n_blobs, n)
    points = centres[truth] + rng.normal(scale=0.5, size=(n, dim))
    return points.astype(np.float16), truth


@pytest.fixture(scope="module")
def blob_map():
    """One UMAP of 300 nuclei (the first call compiles umap-learn: ~10 s)."""
    points, truth = blobs()
    calls = []
    found = embed_2d(points, sample=None, progress=lambda *a: calls.append(a))
    return found, truth, calls


# --- embed_2d ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_map_keeps_blobs_apart(blob_map):
    found, truth, _ = blob_map
    assert isinstance(found, MorphologyMap) and found.method == "umap"
    assert found.rows.tolist() == list(range(300)) and found.rows.dtype == np.int64
    assert found.xy.shape == (300, 2) and found.xy.dtype == np.float32
    assert np.isfinite(found.xy).all()

    # each nucleus's map neighbours come from its own blob
    knn = KNeighborsClassifier(n_neighbors=5).fit(found.xy, truth)
    assert knn.score(found.xy, truth) > 0.98


@pytest.mark.slow
def test_progress_names_each_stage(blob_map):
    *_, calls = blob_map
    assert calls == [("sample", 0, 3), ("PCA", 1, 3), ("umap", 2, 3), ("done", 3, 3)]


@pytest.mark.slow
def test_a_sample_is_seeded_and_the_map_reproducible(blob_map):
    points, _ = blobs()
    a = embed_2d(points, sample=60, seed=3)
    b = embed_2d(points, sample=60, seed=3)

    assert len(a.rows) == 60 and len(np.unique(a.rows)) == 60
    assert np.all(np.diff(a.rows) > 0) and a.rows.max() < 300
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.xy, b.xy)
    assert not np.array_equal(a.rows, embed_2d(points, sample=60, seed=4).rows)


@pytest.mark.parametrize(
    "method, match",
    [("tsne", "needs openTSNE, which is not installed"), ("pca", "not one of")],
)
def test_unavailable_methods_are_refused(method, match):
    with pytest.raises(ValueError, match=match):
        embed_2d(np.ones((50, 4)), method=method)


def test_too_few_nuclei_or_a_bad_sample_is_refused():
    with pytest.raises(ValueError, match="needs at least 16 nuclei; there are 10"):
        embed_2d(np.ones((10, 4)))
    with pytest.raises(ValueError, match="needs at least 16 nuclei; sample is 5"):
        embed_2d(np.ones((50, 4)), sample=5)
    with pytest.raises(ValueError, match="sample=0 must be a whole number"):
        embed_2d(np.ones((50, 4)), sample=0)
    with pytest.raises(ValueError, match=r"shape \(50,\); expected"):
        embed_2d(np.ones(50))


# --- thumbnail_grid -----------------------------------------------------------------


def brute_force_grid(xy: np.ndarray, n_cells: int):
    """Per cell (by its box), the row nearest the box centre: a loop over cells."""
    low, high = xy.min(axis=0), xy.max(axis=0)
    side = (high - low).max() / n_cells
    counts = np.maximum(1, np.ceil((high - low) / side - 1e-9)).astype(int)
    origin = (low + high) / 2 - counts * side / 2
    found = {}
    for j in range(counts[1]):
        for i in range(counts[0]):
            x0, y0 = origin + np.array([i, j]) * side
            last_x, last_y = i == counts[0] - 1, j == counts[1] - 1
            inside = (
                (xy[:, 0] >= x0)
                & ((xy[:, 0] < x0 + side) | last_x)
                & (xy[:, 1] >= y0)
                & ((xy[:, 1] < y0 + side) | last_y)
            )
            if inside.any():
                rows = np.flatnonzero(inside)
                d = np.hypot(*(xy[rows] - (x0 + side / 2, y0 + side / 2)).T)
                found[(j, i)] = rows[np.argmin(d)]
    return [found[key] for key in sorted(found)]


@pytest.mark.parametrize("n_cells", [1, 4, 10])
def test_each_occupied_cell_shows_the_point_nearest_its_centre(n_cells):
    rng = np.random.default_rng(n_cells)
    xy = rng.normal(size=(500, 2)) * (3.0, 1.0)  # wider than tall
    rows, boxes = thumbnail_grid(xy, n_cells=n_cells)

    assert rows.tolist() == brute_force_grid(xy, n_cells)
    assert boxes.shape == (len(rows), 4)
    # square cells holding their point, n_cells across the wider side
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert np.all((boxes[:, :2] <= xy[rows]) & (xy[rows] <= boxes[:, 2:]))
    width = boxes[:, 2].max() - boxes[:, 0].min()
    np.testing.assert_allclose(width, np.ptp(xy[:, 0]), rtol=1e-9)


def test_grid_cells_are_centred_on_the_shorter_side():
    xy = np.array([[0.0, 0.0], [10.0, 3.0]])  # 5 cells of 2 across, 2 tall
    rows, boxes = thumbnail_grid(xy, n_cells=5)
    assert rows.tolist() == [0, 1]
    np.testing.assert_allclose(boxes, [[0, -0.5, 2, 1.5], [8, 1.5, 10, 3.5]])


def test_points_that_are_not_finite_are_ignored_and_alike_points_share_a_cell():
    xy = np.array([[np.nan, 1.0], [2.0, 2.0], [2.0, 2.0], [np.inf, 0.0]])
    rows, boxes = thumbnail_grid(xy, n_cells=3)
    assert rows.tolist() == [1]
    np.testing.assert_allclose(boxes, [[1.5, 1.5, 2.5, 2.5]])

    rows, boxes = thumbnail_grid(np.full((3, 2), np.nan))
    assert rows.shape == (0,) and boxes.shape == (0, 4)


@pytest.mark.parametrize("n_cells", [0, 2.5, True])
def test_a_bad_number_of_cells_is_refused(n_cells):
    with pytest.raises(ValueError, match="n_cells=.* must be a whole number"):
        thumbnail_grid(np.zeros((3, 2)), n_cells=n_cells)


# --- rows_in_polygon ----------------------------------------------------------------


def test_points_inside_a_lasso_are_found():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-2, 2, size=(2000, 2))
    triangle = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]

    rows = rows_in_polygon(xy, triangle)

    expected = (xy[:, 0] > 0) & (xy[:, 1] > 0) & (xy.sum(axis=1) < 1)
    assert rows.tolist() == np.flatnonzero(expected).tolist()
    assert rows.dtype == np.int64


def test_points_that_are_not_finite_are_never_inside():
    xy = np.array([[0.5, 0.5], [np.nan, 0.5], [0.2, 0.2]])
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
    assert rows_in_polygon(xy, square).tolist() == [0, 2]
    assert rows_in_polygon(np.empty((0, 2)), square).tolist() == []


@pytest.mark.parametrize(
    "polygon, match",
    [
        ([(0, 0), (1, 1)], r"shape \(2, 2\); expected \(k, 2\) vertices, k >= 3"),
        ([(0, 0), (1, np.nan), (1, 1)], "not finite"),
    ],
)
def test_bad_polygons_are_refused(polygon, match):
    with pytest.raises(ValueError, match=match):
        rows_in_polygon(np.zeros((3, 2)), polygon)


def test_bad_map_coordinates_are_refused():
    with pytest.raises(ValueError, match=r"xy has shape \(3, 3\); expected \(n, 2\)"):
        rows_in_polygon(np.zeros((3, 3)), [(0, 0), (1, 0), (1, 1)])
