"""Nearest neighbours by cosine similarity, against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from napari_lemon.analysis import neighbours
from napari_lemon.analysis.neighbours import nearest_neighbours


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks and parts of a few rows, so that small arrays cross their edges."""
    monkeypatch.setattr(neighbours, "BLOCK", 3)
    monkeypatch.setattr(neighbours, "PART", 7)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_matches_sklearn_cosine_similarity(small_blocks, dtype):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(200, 16)).astype(dtype)

    rows, similarity = nearest_neighbours(embeddings, 17, k=10, chunk=50)

    expected = cosine_similarity(embeddings.astype(np.float64))[17]
    expected[17] = -np.inf
    assert rows.tolist() == np.argsort(-expected, kind="stable")[:10].tolist()
    np.testing.assert_allclose(similarity, expected[rows], atol=1e-6)
    assert rows.dtype == np.int64 and similarity.dtype == np.float32
    assert np.all(np.diff(similarity) <= 0)


def test_chunk_size_does_not_change_the_result(small_blocks):
    embeddings = np.random.default_rng(1).normal(size=(101, 8)).astype(np.float16)
    whole = nearest_neighbours(embeddings, 0, k=20, chunk=1000)
    for chunk in (1, 10, 64):
        rows, similarity = nearest_neighbours(embeddings, 0, k=20, chunk=chunk)
        assert rows.tolist() == whole[0].tolist()
        np.testing.assert_allclose(similarity, whole[1], rtol=1e-6)  # BLAS rounding


def test_the_query_is_excluded_but_its_duplicate_comes_first():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    rows, similarity = nearest_neighbours(embeddings, 0, k=3)
    assert rows.tolist() == [2, 3, 1]
    np.testing.assert_allclose(similarity, [1.0, np.sqrt(0.5), 0.0], atol=1e-6)


def test_k_is_capped_at_the_other_nuclei_and_ties_keep_row_order():
    embeddings = np.ones((4, 3), dtype=np.float16)
    rows, similarity = nearest_neighbours(embeddings, 2, k=24)
    assert rows.tolist() == [0, 1, 3]
    np.testing.assert_allclose(similarity, 1.0, atol=1e-3)


def test_scale_does_not_matter_and_zero_rows_score_zero():
    embeddings = np.array([[1.0, 2.0], [10.0, 20.0], [0.0, 0.0], [-1.0, -2.0]])
    rows, similarity = nearest_neighbours(embeddings, 0, k=3)
    assert rows.tolist() == [1, 2, 3]
    np.testing.assert_allclose(similarity, [1.0, 0.0, -1.0], atol=1e-6)


def test_reads_a_lazy_zarr_array_by_chunks(tmp_path):
    import zarr

    values = np.random.default_rng(2).normal(size=(300, 12)).astype(np.float16)
    lazy = zarr.open_array(
        tmp_path / "e.zarr", mode="w", shape=values.shape, dtype=values.dtype
    )
    lazy[:] = values
    rows, similarity = nearest_neighbours(lazy, 5, k=8, chunk=64)
    expected = nearest_neighbours(values, 5, k=8)
    assert rows.tolist() == expected[0].tolist()
    np.testing.assert_allclose(similarity, expected[1], rtol=1e-6)


def test_an_all_zero_query_is_refused():
    embeddings = np.array([[0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="row=0: .* all zeros"):
        nearest_neighbours(embeddings, 0)


@pytest.mark.parametrize(
    "embeddings, match",
    [
        (np.zeros(5), r"shape \(5,\); expected \(n_nuclei, dim\)"),
        (np.ones((1, 4)), "1 rows; neighbours need at least 2"),
    ],
)
def test_bad_embeddings_are_refused(embeddings, match):
    with pytest.raises(ValueError, match=match):
        nearest_neighbours(embeddings, 0)


@pytest.mark.parametrize("row", [-1, 10, 2.5, True])
def test_a_row_out_of_range_is_refused(row):
    with pytest.raises(ValueError, match=r"row=.* out of range for 10 nuclei"):
        nearest_neighbours(np.ones((10, 3)), row)


@pytest.mark.parametrize("name, value", [("k", 0), ("k", 1.5), ("chunk", 0)])
def test_bad_k_or_chunk_is_refused(name, value):
    with pytest.raises(ValueError, match=f"{name}={value!r} must be a whole number"):
        nearest_neighbours(np.ones((10, 3)), 0, **{name: value})
