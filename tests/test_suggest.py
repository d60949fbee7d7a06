"""Suggestions of nuclei to label next: unsure, unlabelled and diverse."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_lemon.analysis.suggest import suggest_next


def two_patches(n=600, dim=16, seed=0):
    """Two tight clusters of unsure nuclei (A a bit less sure) among sure ones."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n, dim)).astype(np.float32)
    proba = np.tile(np.float32([0.95, 0.05]), (n, 1))
    a, b = np.arange(0, 100), np.arange(100, 200)
    embeddings[a] = 5 + 0.01 * rng.normal(size=(100, dim))
    embeddings[b] = -5 + 0.01 * rng.normal(size=(100, dim))
    proba[a] = [0.50, 0.50]  # margin 0.0
    proba[b] = [0.52, 0.48]  # margin 0.04
    return proba, embeddings, a, b


def test_suggestions_are_unsure_unlabelled_and_least_sure_first():
    proba, embeddings, a, b = two_patches()
    labelled = np.zeros(len(proba), bool)
    labelled[a[:50]] = True
    rows = suggest_next(proba, embeddings, labelled, n=6, pool_factor=20)

    assert rows.dtype == np.int64 and len(rows) == 6 == len(set(rows))
    assert not labelled[rows].any()
    assert np.isin(rows, np.concatenate([a, b])).all()  # no sure nucleus
    margin = np.abs(proba[rows, 0] - proba[rows, 1])
    assert (np.diff(margin) >= 0).all()


def test_suggestions_are_diverse_not_all_from_the_least_sure_patch():
    proba, embeddings, a, b = two_patches()
    labelled = np.zeros(len(proba), bool)
    rows = suggest_next(proba, embeddings, labelled, n=4, pool_factor=50)
    assert np.isin(rows, a).any() and np.isin(rows, b).any()

    # margin alone would take all four from patch A
    margin = np.abs(proba[:, 0] - proba[:, 1])
    assert np.isin(np.argsort(margin, kind="stable")[:4], a).all()


def test_a_pool_factor_of_one_is_plain_margin_sampling():
    proba = np.random.default_rng(2).dirichlet([1, 1, 1], 500)
    embeddings = np.random.default_rng(3).normal(size=(500, 8))
    rows = suggest_next(proba, embeddings, np.zeros(500, bool), n=7, pool_factor=1)
    top = np.sort(proba, axis=1)
    margin = top[:, -1] - top[:, -2]
    np.testing.assert_array_equal(rows, np.argsort(margin)[:7])


def test_without_a_probe_suggestions_are_diverse_and_repeatable():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=10, size=(5, 8))
    embeddings = np.repeat(centres, 200, axis=0) + rng.normal(size=(1000, 8))
    labelled = np.zeros(1000, bool)
    rows = suggest_next(None, embeddings.astype(np.float16), labelled, n=5)
    assert len(set(rows // 200)) >= 4  # most of the five kinds
    again = suggest_next(None, embeddings.astype(np.float16), labelled, n=5)
    np.testing.assert_array_equal(rows, again)


def test_few_unlabelled_nuclei_are_all_suggested():
    proba, embeddings, _, _ = two_patches(n=220)
    labelled = np.ones(220, bool)
    labelled[[3, 150, 210]] = False
    rows = suggest_next(proba, embeddings, labelled, n=12)
    assert sorted(rows) == [3, 150, 210]
    assert len(suggest_next(proba, embeddings, np.ones(220, bool))) == 0


def test_identical_embeddings_still_give_n_suggestions():
    proba = np.random.default_rng(0).dirichlet([1, 1, 1], 300)
    rows = suggest_next(proba, np.ones((300, 4)), np.zeros(300, bool), n=8)
    assert len(set(rows)) == 8


def test_bad_input_is_refused():
    proba, embeddings, _, _ = two_patches(n=220)
    labelled = np.zeros(220, bool)
    with pytest.raises(ValueError, match=r"embeddings have shape \(10, 16\) for 220"):
        suggest_next(proba, embeddings[:10], labelled)
    with pytest.raises(ValueError, match=r"proba has shape \(220, 1\)"):
        suggest_next(proba[:, :1], embeddings, labelled)
    with pytest.raises(ValueError, match="n=0"):
        suggest_next(proba, embeddings, labelled, n=0)
    with pytest.raises(ValueError, match="pool_factor=1.5"):
        suggest_next(proba, embeddings, labelled, pool_factor=1.5)


def test_a_million_nuclei_take_well_under_a_second_or_two():
    rng = np.random.default_rng(0)
    n = 1_000_000
    proba = rng.dirichlet([1, 1, 1, 1], n).astype(np.float32)
    embeddings = rng.standard_normal((n, 64), np.float32).astype(np.float16)
    suggest_next(proba[:1000], embeddings[:1000], np.zeros(1000, bool))  # warm up
    start = time.perf_counter()
    rows = suggest_next(proba, embeddings, np.zeros(n, bool), n=12)
    seconds = time.perf_counter() - start
    assert len(rows) == 12
    assert seconds < 2.5, f"{seconds:.2f} s"
