"""The incremental zarr store: layout, commits, resume, lock, run key, disk full."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_lemon import incremental_store, store_layout
from napari_lemon.incremental_store import IncrementalStore, StoreError, read_record
from napari_lemon.store import (
    build_results,
    outlines_of,
    read_results,
    set_clusters,
    write_results,
)
from napari_lemon.store_lock import lock_path_of

DIM = 16
RUN_KEY = {"source": {"sha256": "ab" * 32}, "mpp": 0.25, "tile_um": 512.0}
PROVENANCE = {"mpp": 0.25, "segmenter": {"name": "classical", "params": {"a": 1}}}
SIZES = [3, 0, 5, 7, 1, 4]  # nuclei per tile; tile 1 has none


def make_tile(tile_id: int, n: int, dim: int = DIM):
    """One tile's obs, embeddings and outlines, the same for the same tile id."""
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
    embeddings = rng.normal(size=(n, dim)).astype(np.float32)
    outlines = [rng.uniform(0, 100, (int(rng.integers(3, 9)), 2)) for _ in range(n)]
    return obs, embeddings, outlines


def tiles(sizes=SIZES):
    return {t: make_tile(t, n) for t, n in enumerate(sizes)}


def open_store(path, **kwargs):
    options = {"run_key": RUN_KEY, "provenance": PROVENANCE, "embed_dim": DIM}
    return IncrementalStore.open(path, **(options | kwargs))


def reference(parts, clusters=None, dtype="float16"):
    """build_results of the same tiles, embeddings rounded as the store keeps them."""
    obs = pd.concat([p[0] for p in parts], ignore_index=True)
    embeddings = np.concatenate([p[1] for p in parts]).astype(dtype)
    outlines = [o for p in parts for o in p[2]]
    adata = build_results(obs, embeddings, outlines, PROVENANCE)
    if clusters is not None:
        set_clusters(adata, clusters)
    return adata


def assert_same_rows(got, expected):
    pd.testing.assert_frame_equal(
        got.obs.astype({"segmenter": str}),
        expected.obs.astype({"segmenter": str}),
        check_categorical=False,
    )
    np.testing.assert_array_equal(got.obsm["X_lemon"], expected.obsm["X_lemon"])
    np.testing.assert_array_equal(got.obsm["spatial"], expected.obsm["spatial"])
    for a, b in zip(outlines_of(got), outlines_of(expected), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def small_chunks(monkeypatch):
    """Tiny chunks and a flush after every tile, so tests cross chunk borders."""
    monkeypatch.setattr(store_layout, "ROW_CHUNK", 4)
    monkeypatch.setattr(store_layout, "EMBEDDING_CHUNK", 2)
    monkeypatch.setattr(store_layout, "VERTEX_CHUNK", 8)
    monkeypatch.setattr(incremental_store, "FLUSH_ROWS", 1)


# layout


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_store_reads_back_like_build_results(tmp_path, small_chunks, dtype):
    import anndata

    parts = tiles()
    with open_store(tmp_path / "nuclei.zarr", embedding_dtype=dtype) as store:
        for t, part in parts.items():
            store.append_tile(t, *part)
        clusters = np.arange(store.n_nuclei) % 3
        store.finish(clusters, {"n_clusters": 3})

    back = anndata.read_zarr(tmp_path / "nuclei.zarr")
    expected = reference(list(parts.values()), clusters, dtype)
    assert back.obsm["X_lemon"].dtype == np.dtype(dtype)
    assert back.obs["cluster"].dtype == "category"
    assert list(back.obs.columns) == list(expected.obs.columns)
    assert list(back.obs_names) == list(expected.obs_names)
    assert_same_rows(back, expected)


def test_dtypes_match_an_h5ad_round_trip(tmp_path, small_chunks):
    parts = list(tiles().values())
    h5ad = reference(parts, np.zeros(20, dtype=int), "float32")
    from_h5ad = read_results(write_results(h5ad, tmp_path / "nuclei.h5ad"))
    with open_store(tmp_path / "nuclei.zarr", embedding_dtype="float32") as store:
        for t, part in enumerate(parts):
            store.append_tile(t, *part)
        store.finish(np.zeros(20, dtype=int), {})
    from_zarr = read_results(tmp_path / "nuclei.zarr")
    pd.testing.assert_series_equal(from_zarr.obs.dtypes, from_h5ad.obs.dtypes)
    assert from_zarr.uns["outlines"]["offsets"].dtype == np.int64
    assert from_zarr.uns["outlines"]["xy"].dtype == np.float32
    assert_same_rows(from_zarr, from_h5ad)


def test_provenance_records_times_tiles_and_run_key(tmp_path):
    with open_store(tmp_path / "nuclei.zarr", total_tiles=2) as store:
        store.append_tile(0, *make_tile(0, 2))
        store.append_tile(1, *make_tile(1, 3))
        store.finish(None, {"clusters": {"name": "none"}})
    lemon = read_results(tmp_path / "nuclei.zarr").uns["lemon"]
    assert lemon["segmenter"]["params"]["a"] == 1
    assert lemon["clusters"]["name"] == "none"
    assert list(lemon["tiles_done"]) == [0, 1] and lemon["tiles_total"] == 2
    assert lemon["complete"] is True or lemon["complete"] == np.True_
    assert lemon["run_key"]["mpp"] == 0.25
    assert lemon["created"] <= lemon["updated"]


def test_zero_nuclei_finish_and_read(tmp_path):
    import anndata

    with open_store(tmp_path / "empty.zarr") as store:
        store.append_tile(0, *make_tile(0, 0))
        assert list(store.iter_embeddings()) == []
        store.finish(np.empty(0, dtype=int), {})
    back = anndata.read_zarr(tmp_path / "empty.zarr")
    assert back.n_obs == 0
    assert back.obsm["X_lemon"].shape == (0, DIM)
    assert back.obsm["spatial"].shape == (0, 2)
    assert outlines_of(back) == []
    assert read_results(tmp_path / "empty.zarr").n_obs == 0


def test_iter_embeddings_gives_float32_chunks_in_row_order(tmp_path, small_chunks):
    parts = tiles()
    with open_store(tmp_path / "nuclei.zarr", embedding_dtype="float32") as store:
        for t, part in parts.items():
            store.append_tile(t, *part)
        chunks = list(store.iter_embeddings(chunk=6))
    assert [len(c) for c in chunks] == [6, 6, 6, 2]
    assert all(c.dtype == np.float32 for c in chunks)
    expected = np.concatenate([p[1] for p in parts.values()])
    np.testing.assert_array_equal(np.concatenate(chunks), expected)


def test_buffered_tiles_commit_on_close(tmp_path):
    path = tmp_path / "nuclei.zarr"
    store = open_store(path)
    store.append_tile(0, *make_tile(0, 3))
    assert store.tiles_done == {0} and store.tiles_committed == set()
    assert read_record(path)["n_rows"] == 0
    store.close()
    store.close()  # idempotent
    assert read_record(path)["tiles_done"] == [0]
    assert read_record(path)["n_rows"] == 3
    assert not lock_path_of(path).exists()


# resume


def test_resume_keeps_committed_tiles_and_continues(tmp_path, small_chunks):
    parts, path = tiles(), tmp_path / "nuclei.zarr"
    with open_store(path, total_tiles=6) as store:
        for t in (0, 1, 2):
            store.append_tile(t, *parts[t])
    with open_store(path) as store:
        assert store.tiles_done == {0, 1, 2} and store.n_nuclei == 8
        assert store.total_tiles == 6
        for t in (3, 4, 5):
            store.append_tile(t, *parts[t])
        store.finish(None, {})
    assert_same_rows(read_results(path), reference(list(parts.values())))


def _crash_at(monkeypatch, step: int):
    """Make the ``step``-th write of array data, shape or commit record crash."""
    import zarr

    class Crash(BaseException):
        pass

    calls = {"n": 0}

    def counting(original):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == step:
                raise Crash
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(zarr.Array, "resize", counting(zarr.Array.resize))
    monkeypatch.setattr(zarr.Array, "__setitem__", counting(zarr.Array.__setitem__))
    monkeypatch.setattr(
        store_layout, "write_record", counting(store_layout.write_record)
    )
    return Crash, calls


def stored_rows(path: Path) -> dict[str, np.ndarray]:
    """The appended arrays of a store, read with zarr alone."""
    import zarr

    root = zarr.open_group(path, mode="r")
    names = ["obs/nucleus_id", "obs/x", "obs/tile_id", "obsm/X_lemon"]
    names += ["obsm/spatial", "uns/outlines/offsets", "uns/outlines/xy"]
    return {name: root[name][:] for name in names}


def expected_rows(parts) -> dict[str, np.ndarray]:
    adata = reference(parts)
    return {
        "obs/nucleus_id": adata.obs["nucleus_id"].to_numpy(),
        "obs/x": adata.obs["x"].to_numpy(),
        "obs/tile_id": adata.obs["tile_id"].to_numpy(),
        "obsm/X_lemon": adata.obsm["X_lemon"].astype(np.float16),
        "obsm/spatial": adata.obsm["spatial"],
        "uns/outlines/offsets": adata.uns["outlines"]["offsets"],
        "uns/outlines/xy": adata.uns["outlines"]["xy"],
    }


# a flush of one tile writes 10 arrays (resize + data each) then the record
APPEND_STEPS = 21


def test_every_step_of_an_append_is_counted(tmp_path, small_chunks, monkeypatch):
    with open_store(tmp_path / "nuclei.zarr") as store:
        _, calls = _crash_at(monkeypatch, step=-1)
        store.append_tile(0, *make_tile(0, 3))
    assert calls["n"] == APPEND_STEPS


@pytest.mark.slow
def test_crash_at_every_step_of_an_append_resumes_at_the_last_commit(
    tmp_path, small_chunks, monkeypatch
):
    parts, base = tiles(), tmp_path / "base.zarr"
    with open_store(base) as store:
        for t in (0, 1, 2):
            store.append_tile(t, *parts[t])

    for step in range(1, APPEND_STEPS + 1):
        path = tmp_path / f"crash{step}.zarr"
        shutil.copytree(base, path)

        # crash inside the append of tile 3
        store = open_store(path)
        with monkeypatch.context() as patch:
            crash, _ = _crash_at(patch, step)
            with pytest.raises(crash):
                store.append_tile(3, *parts[3])
        store._lock.release()  # the crashed process is gone; its lock with it

        # resume: the last commit, then the same rows as an uninterrupted run
        with open_store(path) as store:
            assert store.tiles_done == {0, 1, 2} and store.n_nuclei == 8, step
            for t in (3, 4):
                store.append_tile(t, *parts[t])
        got, expected = stored_rows(path), expected_rows([parts[t] for t in range(5)])
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_crash_during_finish_resumes_and_finishes(tmp_path, monkeypatch):
    from anndata.io import write_elem

    parts, path = tiles(), tmp_path / "nuclei.zarr"
    store = open_store(path)
    for t, part in parts.items():
        store.append_tile(t, *part)

    def crash(group, key, *args, **kwargs):
        if key.startswith("uns/"):
            raise KeyboardInterrupt
        return write_elem(group, key, *args, **kwargs)

    monkeypatch.setattr("anndata.io.write_elem", crash)
    with pytest.raises(KeyboardInterrupt):
        store.finish(np.zeros(20, dtype=int), {})
    monkeypatch.undo()
    store._lock.release()

    with pytest.raises(StoreError, match=r"is incomplete \(6 tiles done\)"):
        read_results(path)
    with open_store(path) as store:
        assert store.n_nuclei == 20 and not store.complete
        store.finish(np.zeros(20, dtype=int), {})
    assert read_results(path).n_obs == 20


KILLED_WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from napari_lemon import incremental_store, store_layout
from test_incremental_store import open_store, make_tile, SIZES
incremental_store.FLUSH_ROWS = 1
store_layout.ROW_CHUNK, store_layout.EMBEDDING_CHUNK = 4, 2
store = open_store({path!r})
for t in range(200):
    store.append_tile(t, *make_tile(t, SIZES[t % len(SIZES)]))
    time.sleep(0.01)
"""


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_rows_of_an_uninterrupted_run(tmp_path):
    path = tmp_path / "killed.zarr"
    script = KILLED_WRITER.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            record = read_record(path) if path.exists() else None
            if record and len(record["tiles_done"]) >= 2:
                break
            assert proc.poll() is None, "the writer ended before it was killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # resume: a stale lock taken over, the rest appended
    n_tiles = 24
    with pytest.warns(UserWarning, match="stale lock"):
        store = open_store(path)
    with store:
        done = store.tiles_done
        assert done == set(range(len(done))) and len(done) < n_tiles
        for t in range(len(done), n_tiles):
            store.append_tile(t, *make_tile(t, SIZES[t % len(SIZES)]))
        store.finish(None, {})
    parts = [make_tile(t, SIZES[t % len(SIZES)]) for t in range(n_tiles)]
    assert_same_rows(read_results(path), reference(parts))


# lock

LOCK_HOLDER = """
import sys
sys.path.insert(0, {tests!r})
from test_incremental_store import open_store
store = open_store({path!r})
print("locked", flush=True)
sys.stdin.readline()
store.close()
"""


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    path = tmp_path / "nuclei.zarr"
    script = LOCK_HOLDER.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(
            StoreError, match=rf"nuclei.zarr is locked by pid {proc.pid}"
        ):
            open_store(path)
    finally:
        proc.communicate("done\n", timeout=20)
    assert proc.returncode == 0
    open_store(path).close()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "nuclei.zarr"
    holder = {"pid": dead.pid, "host": socket.gethostname(), "at": "then"}
    lock_path_of(path).write_text(json.dumps(holder))
    with pytest.warns(UserWarning, match=f"stale lock .*{dead.pid}"):
        store = open_store(path)
    store.close()
    assert not lock_path_of(path).exists()


def test_a_lock_from_another_host_is_respected(tmp_path):
    path = tmp_path / "nuclei.zarr"
    holder = {"pid": 1, "host": "elsewhere", "at": "then"}
    lock_path_of(path).write_text(json.dumps(holder))
    with pytest.raises(StoreError, match="pid 1 on host 'elsewhere'.*delete"):
        open_store(path)


def test_an_unreadable_fresh_lock_is_respected(tmp_path):
    path = tmp_path / "nuclei.zarr"
    lock_path_of(path).write_text("")
    with pytest.raises(StoreError, match="locked by an unknown process"):
        open_store(path)


def test_a_store_left_by_a_crashed_writer_keeps_its_lock_until_taken_over(tmp_path):
    path = tmp_path / "nuclei.zarr"
    store = open_store(path)
    with pytest.raises(StoreError, match=f"locked by pid {os.getpid()}"):
        open_store(path)
    store.close()


# run key, overwrite, foreign folders


def test_another_run_key_is_refused_and_overwrite_replaces(tmp_path):
    path = tmp_path / "nuclei.zarr"
    with open_store(path) as store:
        store.append_tile(0, *make_tile(0, 3))
    other = RUN_KEY | {"mpp": 0.5}
    with pytest.raises(
        StoreError, match=r"another run \(differs in \['mpp'\]\).*--overwrite"
    ):
        open_store(path, run_key=other)
    with pytest.raises(StoreError, match=r"differs in \['embed_dim/embedding_dtype'\]"):
        open_store(path, embedding_dtype="float32")

    with open_store(path, run_key=other, overwrite=True) as store:
        assert store.n_nuclei == 0 and store.tiles_done == set()
    assert read_record(path)["run_key"]["mpp"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei.zarr"]


def test_a_complete_store_opens_complete_and_refuses_more(tmp_path):
    path = tmp_path / "nuclei.zarr"
    with open_store(path) as store:
        store.append_tile(0, *make_tile(0, 3))
        store.finish(None, {})
    with open_store(path) as store:
        assert store.complete and store.n_nuclei == 3
        with pytest.raises(StoreError, match="already complete.*--overwrite"):
            store.append_tile(1, *make_tile(1, 2))
        with pytest.raises(StoreError, match="already complete"):
            store.finish(None, {})


def test_a_folder_that_is_not_a_store_is_left_alone(tmp_path):
    path = tmp_path / "mine.zarr"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not a napari-lemon store.*untouched"):
            open_store(path, overwrite=overwrite)
    assert (path / "notes.txt").read_text() == "keep me"
    assert not lock_path_of(path).exists()


def test_an_empty_folder_becomes_a_store(tmp_path):
    (tmp_path / "nuclei.zarr").mkdir()
    open_store(tmp_path / "nuclei.zarr").close()
    assert read_record(tmp_path / "nuclei.zarr")["n_rows"] == 0


def test_a_record_of_another_format_is_refused(tmp_path):
    import zarr

    path = tmp_path / "nuclei.zarr"
    open_store(path).close()
    zarr.open_group(path, mode="r+").attrs["napari-lemon"] = {"format": 99}
    with pytest.raises(StoreError, match="another format.*--overwrite"):
        open_store(path)


# disk full and other write errors


@pytest.mark.parametrize("where", ["data", "record"])
def test_disk_full_keeps_the_last_commit(tmp_path, small_chunks, monkeypatch, where):
    import zarr

    parts, path = tiles(), tmp_path / "nuclei.zarr"
    with open_store(path) as store:
        store.append_tile(0, *parts[0])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    store = open_store(path)
    if where == "data":
        monkeypatch.setattr(zarr.Array, "__setitem__", full)
    else:
        monkeypatch.setattr(store_layout, "write_record", full)
    with pytest.raises(StoreError, match="nuclei.zarr .*the disk is full.*free space"):
        store.append_tile(2, *parts[2])
    monkeypatch.undo()
    store._lock.release()

    with open_store(path) as store:
        assert store.tiles_done == {0} and store.n_nuclei == 3
        np.testing.assert_array_equal(
            np.concatenate(list(store.iter_embeddings())),
            parts[0][1].astype(np.float16).astype(np.float32),
        )


def test_other_write_errors_name_the_cause(tmp_path, monkeypatch):
    import zarr

    store = open_store(tmp_path / "nuclei.zarr")
    store.append_tile(0, *make_tile(0, 3))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(zarr.Array, "__setitem__", denied)
    with pytest.raises(StoreError, match="PermissionError.*run the same command"):
        store.flush()
    monkeypatch.undo()
    store.close()  # the retry succeeds
    assert read_record(tmp_path / "nuclei.zarr")["n_rows"] == 3


def test_disk_full_at_finish_is_a_store_error(tmp_path, monkeypatch):
    store = open_store(tmp_path / "nuclei.zarr")
    store.append_tile(0, *make_tile(0, 3))
    store.flush()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("anndata.io.write_elem", full)
    with pytest.raises(StoreError, match="while finishing: the disk is full"):
        store.finish(None, {})
    monkeypatch.undo()
    store.close()


# incomplete stores and bad input


def test_read_results_refuses_an_incomplete_store(tmp_path):
    path = tmp_path / "nuclei.zarr"
    with open_store(path, total_tiles=5) as store:
        store.append_tile(0, *make_tile(0, 3))
        store.append_tile(1, *make_tile(1, 0))
    with pytest.raises(
        StoreError, match=r"incomplete \(2 of 5 tiles done\); run the same"
    ):
        read_results(path)


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data")
def test_read_results_refuses_foreign_zarr_folders(tmp_path):
    import anndata
    import zarr

    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(ValueError, match="not a readable AnnData .zarr store"):
        read_results(tmp_path / "plain.zarr")
    anndata.AnnData(obs=pd.DataFrame(index=["a"])).write_zarr(tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="not napari-lemon results"):
        read_results(tmp_path / "other.zarr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_results(tmp_path / "missing.zarr")


def test_open_refuses_bad_parameters(tmp_path):
    with pytest.raises(StoreError, match="must be a folder ending in .zarr"):
        open_store(tmp_path / "nuclei.h5ad")
    with pytest.raises(StoreError, match="embedding_dtype='int8'.*float16"):
        open_store(tmp_path / "a.zarr", embedding_dtype="int8")
    with pytest.raises(StoreError, match="embed_dim=0"):
        open_store(tmp_path / "a.zarr", embed_dim=0)
    with pytest.raises(ValueError, match="run_key must hold only numbers"):
        open_store(tmp_path / "a.zarr", run_key={"f": object()})
    with pytest.raises(ValueError, match="provenance must hold only numbers"):
        open_store(tmp_path / "a.zarr", provenance={"mpp": float("nan")})
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="file.zarr is a file"):
        open_store(tmp_path / "file.zarr")
    with open_store(tmp_path / "a.zarr") as store:
        with pytest.raises(StoreError, match="total_tiles=-1"):
            store.set_total_tiles(-1)


def test_append_tile_refuses_bad_tiles(tmp_path):
    store = open_store(tmp_path / "nuclei.zarr")
    obs, embeddings, outlines = make_tile(0, 3)
    store.append_tile(0, obs, embeddings, outlines)
    with pytest.raises(StoreError, match="tile 0 is already in"):
        store.append_tile(0, obs, embeddings, outlines)
    with pytest.raises(ValueError, match=r"obs\['tile_id'\] holds \[0\] for tile_id=1"):
        store.append_tile(1, obs, embeddings, outlines)
    obs1, emb1, out1 = make_tile(1, 3)
    with pytest.raises(ValueError, match=r"have shape \(2, 16\); expected \(3, 16\)"):
        store.append_tile(1, obs1, emb1[:2], out1)
    with pytest.raises(ValueError, match="outlines has 2 polygons for 3 nuclei"):
        store.append_tile(1, obs1, emb1, out1[:2])
    with pytest.raises(ValueError, match=r"columns \['probe'\] beyond"):
        store.append_tile(1, obs1.assign(probe=1), emb1, out1)
    with pytest.raises(ValueError, match="exceed the float16 range.*float32"):
        store.append_tile(1, obs1, emb1 * 1e6, out1)
    with pytest.raises(ValueError, match=r"clusters has shape \(2,\); expected \(3,\)"):
        store.finish(np.zeros(2, dtype=int), {})
    with pytest.raises(ValueError, match="chunk=0"):
        next(store.iter_embeddings(chunk=0))
    store.close()
    with pytest.raises(StoreError, match="is closed; open it again"):
        store.append_tile(1, obs1, emb1, out1)


def test_context_manager_releases_the_lock_on_errors(tmp_path):
    path = tmp_path / "nuclei.zarr"
    with pytest.raises(RuntimeError, match="boom"):
        with open_store(path) as store:
            store.append_tile(0, *make_tile(0, 2))
            raise RuntimeError("boom")
    assert not lock_path_of(path).exists()
    assert read_record(path)["tiles_done"] == [0]  # complete tiles are kept


def test_buffered_rows_are_written_after_flush_seconds(tmp_path, monkeypatch):
    path = tmp_path / "nuclei.zarr"
    monkeypatch.setattr(incremental_store, "FLUSH_ROWS", 10**9)
    store = open_store(path)
    store.append_tile(0, *make_tile(0, 3))
    assert read_record(path)["tiles_done"] == []  # buffered

    monkeypatch.setattr(incremental_store, "FLUSH_SECONDS", 0.0)
    store.append_tile(1, *make_tile(1, 2))
    assert read_record(path)["tiles_done"] == [0, 1]
    assert store.tiles_committed == {0, 1}
    store.close()


def test_tiles_of_several_segmenters_keep_their_names(tmp_path):
    parts = [make_tile(0, 3), make_tile(1, 2)]
    parts[1][0]["segmenter"] = "unet"
    with open_store(tmp_path / "nuclei.zarr") as store:
        for t, part in enumerate(parts):
            store.append_tile(t, *part)
        store.finish(None, {})
    back = read_results(tmp_path / "nuclei.zarr")
    assert back.obs["segmenter"].tolist() == ["classical"] * 3 + ["unet"] * 2


@pytest.mark.filterwarnings("ignore:zarr v3 autosharding")
def test_zarr_format_3_stores_work_too(tmp_path, small_chunks):
    import anndata

    parts, path = tiles(), tmp_path / "nuclei.zarr"
    with anndata.settings.override(zarr_write_format=3):
        with open_store(path) as store:
            for t in (0, 1, 2):
                store.append_tile(t, *parts[t])
    assert (path / "zarr.json").is_file()
    with open_store(path) as store:  # resumed in its own format
        for t in (3, 4, 5):
            store.append_tile(t, *parts[t])
        store.finish(None, {})
    assert_same_rows(anndata.read_zarr(path), reference(list(parts.values())))


def test_an_old_unreadable_lock_is_taken_over(tmp_path):
    path = tmp_path / "nuclei.zarr"
    lock = lock_path_of(path)
    lock.write_text("")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="stale lock .*unreadable lock file"):
        open_store(path).close()


def test_leftovers_of_an_interrupted_creation_are_removed(tmp_path):
    leftover = tmp_path / ".nuclei.zarr.12345.new"
    leftover.mkdir()
    (leftover / "junk").write_text("x")
    open_store(tmp_path / "nuclei.zarr").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.zarr"]


def test_a_store_with_fewer_rows_than_committed_is_damaged(tmp_path):
    import zarr

    path = tmp_path / "nuclei.zarr"
    with open_store(path) as store:
        store.append_tile(0, *make_tile(0, 3))
    zarr.open_group(path, mode="r+")["obs/x"].resize((2,))
    with pytest.raises(
        StoreError, match=r"obs/x holds 2 rows but .* counts 3.*damaged"
    ):
        open_store(path)
    assert not lock_path_of(path).exists()


def test_more_than_127_segmenter_names_are_refused(tmp_path):
    obs, embeddings, outlines = make_tile(0, 128)
    obs["segmenter"] = [f"s{i}" for i in range(128)]
    with open_store(tmp_path / "nuclei.zarr") as store:
        with pytest.raises(ValueError, match="more than 127 segmenter names"):
            store.append_tile(0, obs, embeddings, outlines)
