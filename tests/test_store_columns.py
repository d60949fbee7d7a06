"""Analysis columns written in place into .zarr stores and .h5ad files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from napari_lemon.incremental_store import IncrementalStore, StoreError
from napari_lemon.store import build_results, read_results, write_results
from napari_lemon.store_columns import (
    check_writable,
    embedding_shape,
    iter_embeddings,
    read_provenance,
    write_analysis,
)
from napari_lemon.store_lock import StoreLock

DIM = 8
PROVENANCE = {
    "source": {"name": "slide.svs"},
    "mpp": 0.25,
    "encoder": {"name": "test", "sha256": "ab" * 32, "mpp": 0.25, "crop_size": 40},
}


def tile(tile_id: int, n: int):
    rng = np.random.default_rng(tile_id)
    obs = pd.DataFrame(
        {
            "nucleus_id": tile_id * 1000 + np.arange(n),
            "x": rng.uniform(0, 1000, n),
            "y": rng.uniform(0, 1000, n),
            "area_um2": rng.uniform(10, 60, n),
            "segmenter": "classical",
            "tile_id": tile_id,
        }
    )
    embeddings = rng.normal(size=(n, DIM)).astype(np.float32)
    outlines = [rng.uniform(0, 100, (5, 2)) for _ in range(n)]
    return obs, embeddings, outlines


SIZES = (4, 3, 5)


def make_zarr(path, sizes=SIZES, finish=True):
    store = IncrementalStore.open(
        path, run_key={"k": 1}, provenance=PROVENANCE, embed_dim=DIM
    )
    for tile_id, n in enumerate(sizes):
        store.append_tile(tile_id, *tile(tile_id, n))
    if finish:
        store.finish(np.zeros(sum(sizes), int), {})
    else:
        store.close()
    return path


def make_h5ad(path, sizes=SIZES):
    parts = [tile(t, n) for t, n in enumerate(sizes)]
    obs = pd.concat([p[0] for p in parts], ignore_index=True)
    embeddings = np.concatenate([p[1] for p in parts])
    outlines = [o for p in parts for o in p[2]]
    return write_results(build_results(obs, embeddings, outlines, PROVENANCE), path)


@pytest.fixture(params=["zarr", "h5ad"])
def results(request, tmp_path):
    if request.param == "zarr":
        return make_zarr(tmp_path / "slide.lemon.zarr")
    return make_h5ad(tmp_path / "slide.h5ad")


def read_back(path):
    raw = anndata.read_zarr(path) if path.is_dir() else anndata.read_h5ad(path)
    return read_results(path), raw


def test_write_analysis_adds_columns_every_reader_sees(results):
    n = sum(SIZES)
    classes = pd.Categorical.from_codes(np.arange(n) % 3, ["tumour", "immune", "other"])
    proba = np.random.default_rng(0).random((n, 3)).astype(np.float32)
    before = read_results(results)

    write_analysis(
        results,
        obs={"probe_cell_type": classes, "probe_cell_type_proba": proba.max(axis=1)},
        obsm={"probe_cell_type": proba},
        uns={"probe_cell_type_colors": ["#e69f00", "#56b4e9", "#009e73"]},
    )
    for adata in read_back(results):
        column = adata.obs["probe_cell_type"]
        assert isinstance(column.dtype, pd.CategoricalDtype)
        assert list(column.cat.categories) == ["tumour", "immune", "other"]
        np.testing.assert_array_equal(column.cat.codes, np.arange(n) % 3)
        assert adata.obs["probe_cell_type_proba"].dtype == np.float32
        np.testing.assert_array_equal(adata.obsm["probe_cell_type"], proba)
        assert list(adata.uns["probe_cell_type_colors"]) == [
            "#e69f00",
            "#56b4e9",
            "#009e73",
        ]
        assert list(adata.obs.columns[-2:]) == [
            "probe_cell_type",
            "probe_cell_type_proba",
        ]
        np.testing.assert_array_equal(
            adata.obsm["X_lemon"], before.obsm["X_lemon"]
        )  # untouched
        pd.testing.assert_frame_equal(
            adata.obs[before.obs.columns], before.obs, check_categorical=False
        )
    assert (
        read_results(results).uns["lemon"]["updated"] >= before.uns["lemon"]["updated"]
    )


def test_replacing_a_column_replaces_it(results):
    n = sum(SIZES)
    write_analysis(results, obs={"label": pd.Categorical(["a"] * n)})
    labels = pd.Categorical([None] * (n - 1) + ["b"], categories=["b", "c"])
    write_analysis(results, obs={"label": labels}, uns={"label_colors": ["#000000"]})
    for adata in read_back(results):
        assert list(adata.obs["label"].cat.categories) == ["b", "c"]
        assert adata.obs["label"].isna().sum() == n - 1
        assert list(adata.obs.columns).count("label") == 1


def test_write_analysis_refuses_wrong_lengths_and_writes_nothing(results):
    n = sum(SIZES)
    with pytest.raises(
        ValueError, match=rf"obs\['probe_x'\] has length 3 but .* n_obs={n}"
    ):
        write_analysis(results, obs={"ok": np.zeros(n), "probe_x": [1, 2, 3]})
    with pytest.raises(ValueError, match=rf"obsm\['probe_x'\] has length 2 .*{n}"):
        write_analysis(results, obsm={"probe_x": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="obs column 'x2' has shape"):
        write_analysis(results, obs={"x2": np.zeros((n, 2))})
    assert "ok" not in read_results(results).obs


def test_write_analysis_refuses_the_results_own_elements(results):
    n = sum(SIZES)
    with pytest.raises(ValueError, match=r"obs \['x'\] .* belong to the results"):
        write_analysis(results, obs={"x": np.zeros(n)})
    with pytest.raises(ValueError, match=r"obsm \['X_lemon'\]"):
        write_analysis(results, obsm={"X_lemon": np.zeros((n, DIM))})
    with pytest.raises(ValueError, match=r"uns \['lemon'\]"):
        write_analysis(results, uns={"lemon": {}})
    with pytest.raises(ValueError, match=r"uns\['a'\] is None"):
        write_analysis(results, uns={"a": None})


def test_write_analysis_refuses_what_anndata_cannot_store(results):
    with pytest.raises(ValueError, match=r"could not write uns\['thing'\]"):
        write_analysis(results, uns={"thing": object()})


def test_unfinished_stores_and_foreign_files_are_refused(tmp_path):
    path = make_zarr(tmp_path / "open.zarr", finish=False)
    with pytest.raises(StoreError, match="open.zarr is incomplete"):
        write_analysis(path, obs={"a": np.zeros(12)})
    with pytest.raises(StoreError, match="incomplete"):
        next(iter_embeddings(path))
    with pytest.raises(FileNotFoundError, match="missing.h5ad does not exist"):
        write_analysis(tmp_path / "missing.h5ad")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is neither"):
        read_provenance(text)
    fake = tmp_path / "fake.h5ad"
    fake.write_text("hello")
    with pytest.raises(ValueError, match="fake.h5ad is not a readable .h5ad"):
        read_provenance(fake)


def test_a_locked_store_is_refused(tmp_path):
    path = make_zarr(tmp_path / "s.zarr")
    lock = StoreLock.acquire(path)
    try:
        with pytest.raises(StoreError, match="s.zarr is locked"):
            write_analysis(path, obs={"a": np.zeros(12)})
    finally:
        lock.release()


def refuse_new_files(monkeypatch, where):
    """New files in ``where`` fail as in a read-only folder (tests run as root)."""
    import tempfile

    make = tempfile.TemporaryFile

    def temporary_file(*args, dir=None, **kwargs):
        if Path(dir) == where:
            raise PermissionError(13, "Permission denied", str(Path(dir) / "tmpab"))
        return make(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)


@pytest.mark.parametrize("folder", ["parent", "store"])
def test_results_that_cannot_be_written_are_refused_first(
    tmp_path, monkeypatch, folder
):
    path = make_zarr(tmp_path / "s.zarr")
    check_writable(path)  # writable: no error
    refuse_new_files(monkeypatch, tmp_path if folder == "parent" else path)

    message = f"cannot write to the results {path}: Permission denied. Copy them"
    with pytest.raises(OSError, match=re.escape(message)):
        write_analysis(path, obs={"a": np.zeros(12)})
    assert "a" not in read_results(path).obs
    assert not (tmp_path / "s.zarr.lock").exists()


def test_an_h5ad_that_does_not_open_for_writing_is_refused(tmp_path, monkeypatch):
    import builtins

    path = make_h5ad(tmp_path / "s.h5ad")
    real_open = builtins.open

    def read_only(file, mode="r", *args, **kwargs):
        if Path(file) == path and "+" in mode:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    with pytest.raises(OSError, match="cannot write to the results .*s.h5ad"):
        check_writable(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    path = make_h5ad(tmp_path / "ro" / "s.h5ad")
    path.parent.chmod(0o555)
    try:
        with pytest.raises(OSError, match="cannot write to the results"):
            check_writable(path)
    finally:
        path.parent.chmod(0o755)


def test_iter_embeddings_streams_rows_in_order(results):
    expected = read_results(results).obsm["X_lemon"]
    chunks = list(iter_embeddings(results, chunk=5))
    assert [len(c) for c in chunks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(chunks), expected)
    as_float32 = next(iter_embeddings(results, dtype=np.float32))
    assert as_float32.dtype == np.float32
    assert embedding_shape(results) == (12, DIM)
    with pytest.raises(ValueError, match="chunk=0"):
        next(iter_embeddings(results, chunk=0))


def test_zarr_embeddings_keep_the_stored_float16(tmp_path):
    path = make_zarr(tmp_path / "s.zarr")
    assert next(iter_embeddings(path)).dtype == np.float16


def test_read_provenance(results):
    n_obs, provenance = read_provenance(results)
    assert n_obs == 12
    assert provenance["encoder"]["sha256"] == "ab" * 32
    assert provenance["source"]["name"] == "slide.svs"


def test_files_without_embeddings_are_not_results(tmp_path):
    path = tmp_path / "plain.h5ad"
    anndata.AnnData(obs=pd.DataFrame(index=["a", "b"])).write_h5ad(path)
    with pytest.raises(ValueError, match="plain.h5ad is not napari-lemon results"):
        next(iter_embeddings(path))
    assert read_provenance(path) == (2, {})


def test_read_embedding_rows_in_the_order_given(results):
    from napari_lemon.store_columns import read_embedding_rows

    expected = read_results(results).obsm["X_lemon"]
    rows = np.array([11, 0, 5, 4, 4])
    got = read_embedding_rows(results, rows, chunk=4)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected[rows].astype(np.float32))
    assert read_embedding_rows(results, []).shape == (0, DIM)
    with pytest.raises(ValueError, match="rows must lie in 0..11"):
        read_embedding_rows(results, [12])


def test_read_obs_columns_without_the_rest(results):
    from napari_lemon.store_columns import read_obs_columns

    expected = read_results(results).obs
    got = read_obs_columns(results, ["nucleus_id", "tile_id", "segmenter"])
    np.testing.assert_array_equal(got["nucleus_id"], expected["nucleus_id"])
    np.testing.assert_array_equal(got["tile_id"], [0] * 4 + [1] * 3 + [2] * 5)
    assert list(got["segmenter"]) == ["classical"] * 12
    with pytest.raises(ValueError, match="has no obs column 'nope'"):
        read_obs_columns(results, ["nope"])
