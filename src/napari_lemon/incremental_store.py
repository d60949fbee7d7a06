"""A results store on zarr, written tile by tile and resumable after a crash.

The store is a ``<name>.zarr`` folder in AnnData's on-disk zarr layout, so
``anndata.read_zarr`` (and :func:`napari_lemon.store.read_results`) returns the
layout of :func:`napari_lemon.store.build_results`. A new store takes the zarr
format anndata writes by default (``anndata.settings.zarr_write_format``: 2 in
anndata 0.12, which reads 2 and 3); an existing store keeps its own. Layout::

    nuclei.zarr/               attrs["napari-lemon"]: the commit record (run key,
                               provenance, tiles done, rows, vertices)
      obs/                     nucleus_id, x, y, area_um2, tile_id: appended,
                               chunks of 65536 rows
        segmenter/codes        int8, appended; segmenter/categories at finish
        _index, cluster        written at finish
      obsm/X_lemon             (n, dim) float16 (or float32), appended, chunks of
                               8192 rows (6 MB at 384-d float16)
      obsm/spatial             (n, 2) float64, appended, 65536 rows
      uns/outlines/offsets     (n + 1,) int64, appended, 65536 rows
      uns/outlines/xy          (vertices, 2) float32, appended, 524288 vertices
      uns/lemon                provenance, written at finish
      var/ layers/ obsp/ varm/ varp/ raw   empty, as anndata writes them
    nuclei.zarr.lock           held by the writing process

Commit: appended rows are buffered in memory and written in large slices; then
the commit record is replaced atomically (zarr writes the attribute file under a
temporary name and renames it).
Only the counts in that record are trusted: opening a store cuts every array
back to them, so a process killed at any instant leaves a store that resumes
at its last commit. zarr's local store replaces each chunk file atomically, so
rewriting a partly filled chunk never tears committed rows.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .store import (
    EMBEDDING_KEY,
    OBS_COLUMNS,
    OUTLINES_KEY,
    PROVENANCE_KEY,
    SPATIAL_KEY,
    StoreError,
    _check_obs,
    _storable,
    build_results,
    empty_obs,
    now_iso,
    pack_outlines,
)
from .store_lock import StoreLock

__all__ = ["IncrementalStore", "StoreError", "read_record", "check_complete"]

logger = logging.getLogger(__name__)

# the commit record lives in the root group's attributes under this key
COMMIT_KEY = "napari-lemon"
STORE_FORMAT = 1
EMBEDDING_DTYPES = ("float16", "float32")

# chunk lengths (rows, or vertices for xy): a few MB each, 6 MB of float16
# embeddings at 384-d (benchmarks/store_append.py)
ROW_CHUNK = 65536
EMBEDDING_CHUNK = 8192
VERTEX_CHUNK = 524288

# buffered rows are written once this many wait, or this long after the last
# write; 16384 rows of 384-d float16 with outlines buffer about 16 MB
FLUSH_ROWS = 16384
FLUSH_SECONDS = 5.0

# written only by finish; removed when an unfinished store is resumed
FINISH_ONLY = ("obs/_index", "obs/cluster", f"uns/{PROVENANCE_KEY}")


def _appended_arrays(embed_dim: int, dtype: str) -> dict[str, tuple]:
    """Name -> (dtype, trailing shape, chunk length, counted by) of appended arrays."""
    return {
        "obs/nucleus_id": ("int64", (), ROW_CHUNK, "rows"),
        "obs/x": ("float64", (), ROW_CHUNK, "rows"),
        "obs/y": ("float64", (), ROW_CHUNK, "rows"),
        "obs/area_um2": ("float64", (), ROW_CHUNK, "rows"),
        "obs/tile_id": ("int64", (), ROW_CHUNK, "rows"),
        "obs/segmenter/codes": ("int8", (), ROW_CHUNK, "rows"),
        f"obsm/{EMBEDDING_KEY}": (dtype, (embed_dim,), EMBEDDING_CHUNK, "rows"),
        f"obsm/{SPATIAL_KEY}": ("float64", (2,), ROW_CHUNK, "rows"),
        f"uns/{OUTLINES_KEY}/offsets": ("int64", (), ROW_CHUNK, "offsets"),
        f"uns/{OUTLINES_KEY}/xy": ("float32", (2,), VERTEX_CHUNK, "vertices"),
    }


def _length(counted_by: str, n_rows: int, n_vertices: int) -> int:
    """Committed length of an array counted by rows, offsets or vertices."""
    return {"rows": n_rows, "offsets": n_rows + 1, "vertices": n_vertices}[counted_by]


def _jsonable(value: Any, name: str) -> Any:
    """``value`` as it reads back from JSON; refuses what JSON cannot hold."""
    try:
        return json.loads(json.dumps(_storable(value), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must hold only numbers, strings, lists and dicts (it is "
            f"kept in the store's commit record): {err}"
        ) from err


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The commit record of the store at ``path``, or None when it has none."""
    import zarr

    try:
        attrs = zarr.open_group(path, mode="r").attrs.asdict()
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError):
        return None
    if COMMIT_KEY not in attrs:
        return None
    record = attrs[COMMIT_KEY]
    if not isinstance(record, dict) or record.get("format") != STORE_FORMAT:
        raise StoreError(
            f"{path} holds a napari-lemon commit record of another format "
            f"({str(record)[:60]!r}; this version reads format {STORE_FORMAT}); "
            "use another --out, or --overwrite (overwrite=True) to start over"
        )
    return record


def check_complete(path: str | Path) -> dict[str, Any] | None:
    """Raise when ``path`` is an unfinished store; its record (or None) otherwise."""
    record = read_record(path)
    if record is not None and not record["complete"]:
        total = record.get("total_tiles")
        done = len(record["tiles_done"])
        counts = f"{done} of {total} tiles done" if total else f"{done} tiles done"
        raise StoreError(
            f"{path} is incomplete ({counts}); run the same command again to finish it"
        )
    return record


# NOTE: nothing is fsynced: a killed process loses nothing committed (the page
# cache survives it), a power cut may. Atomic chunk files are a property of
# zarr's local store; a remote (fsspec) store would need its own care.


def _write_record(root, record: dict[str, Any]) -> None:
    """Replace the commit record in the root group's attributes.

    zarr's local store writes the attribute file under a temporary name and
    renames it into place, so the record is always the old or the new one.
    """
    root.attrs[COMMIT_KEY] = record


def _put_rows(array, start: int, rows: np.ndarray) -> None:
    """Grow ``array`` to ``start + len(rows)`` and write ``rows`` from ``start``."""
    stop = start + len(rows)
    array.resize((stop, *array.shape[1:]))
    if len(rows):
        array[start:stop] = rows


def _disk_error(path: Path, err: OSError, doing: str) -> StoreError:
    """A StoreError for an OSError raised while ``doing`` something to ``path``."""
    if err.errno == errno.ENOSPC:
        cause = "the disk is full"
        fix = "free space on that disk and run the same command again"
    else:
        cause = f"{type(err).__name__}: {err}"
        fix = "fix the cause and run the same command again"
    return StoreError(
        f"could not write {path} while {doing}: {cause}. The store is kept at its "
        f"last commit; {fix} to resume from there"
    )


def _create(path: Path, record: dict[str, Any], zarr_format: int) -> None:
    """Make an empty store at ``path``: built beside it, then renamed into place."""
    import zarr
    from anndata.experimental import write_dispatched

    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    shutil.rmtree(tmp, ignore_errors=True)
    dim, dtype = record["embed_dim"], record["embedding_dtype"]
    spec = _appended_arrays(dim, dtype)

    # an empty result of build_results, in the stored dtypes
    empty = build_results(empty_obs(), np.empty((0, dim)), [], {})
    del empty.uns[PROVENANCE_KEY]
    empty.obs["segmenter"] = pd.Categorical([], categories=np.array([], dtype=str))
    empty.obsm[EMBEDDING_KEY] = np.empty((0, dim), dtype)

    # written by anndata's own writers, with chunks that suit appending
    def chunked(write, group, key, elem, *, dataset_kwargs, iospec):
        name = f"{group.path}/{key}".strip("/")
        if name in spec:
            dataset_kwargs = {
                **dataset_kwargs,
                "chunks": (spec[name][2], *elem.shape[1:]),
            }
        write(group, key, elem, dataset_kwargs=dataset_kwargs)

    root = zarr.open_group(tmp, mode="w", zarr_format=zarr_format)
    write_dispatched(root, "/", empty, callback=chunked)
    del root["obs/_index"]
    _write_record(root, record)
    os.replace(tmp, path)


class IncrementalStore:
    """Results of one slide, appended tile by tile to a ``.zarr`` folder.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Rows of appended tiles are buffered (up to ``FLUSH_ROWS`` rows or
    ``FLUSH_SECONDS``) and committed when written: :attr:`tiles_done` and
    :attr:`n_nuclei` count every appended tile, :attr:`tiles_committed` those
    on disk. :meth:`flush`, :meth:`close`, :meth:`iter_embeddings` and
    :meth:`finish` commit the buffer.
    """

    def __init__(self, path: Path, lock: StoreLock, record: dict[str, Any]):
        import zarr

        self.path = path
        self._lock = lock
        self._record = record
        self._root = zarr.open_group(path, mode="r+")
        self._spec = _appended_arrays(record["embed_dim"], record["embedding_dtype"])
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_tiles: list[int] = []
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        self._dirty = False  # the record changed without rows (total tiles)
        self._closed = False

    # opening

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        run_key: dict,
        provenance: dict,
        embed_dim: int,
        embedding_dtype: str = "float16",
        overwrite: bool = False,
        total_tiles: int | None = None,
    ) -> IncrementalStore:
        """Create the store at ``path``, or resume it when made with ``run_key``.

        Parameters
        ----------
        path : str or Path
            A folder ending in ``.zarr``.
        run_key : dict
            What decides the results (source fingerprint, mpp, segmenter and
            parameters, encoder sha256, tile size, ...): a store is resumed only
            when its run key equals this one.
        provenance : dict
            Written to ``uns["lemon"]`` at :meth:`finish` (with created/updated
            times, tiles done and the run key).
        embed_dim : int
            Length of one embedding.
        embedding_dtype : {"float16", "float32"}
            How embeddings are kept on disk.
        overwrite : bool
            Remove an existing store of napari-lemon and start over.
        total_tiles : int or None
            Number of tiles the run will append, for progress and messages.

        Raises
        ------
        StoreError
            Another process holds the store; it was made by another run (and
            ``overwrite`` is False); it is not a napari-lemon store.
        """
        path = Path(path)
        if path.suffix != ".zarr":
            raise StoreError(f"path={str(path)!r} must be a folder ending in .zarr")
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise StoreError(
                f"embedding_dtype={embedding_dtype!r} for {path}; choose one of "
                f"{list(EMBEDDING_DTYPES)}"
            )
        if int(embed_dim) != embed_dim or embed_dim < 1:
            raise StoreError(f"embed_dim={embed_dim!r} for {path} must be >= 1")
        run_key = _jsonable(run_key, "run_key")
        provenance = _jsonable(provenance, "provenance")

        lock = StoreLock.acquire(path)
        try:
            record = cls._existing(path, run_key, embed_dim, embedding_dtype, overwrite)
            if record is None:
                record = cls._new_record(
                    run_key, provenance, embed_dim, embedding_dtype
                )
                _create(path, record, _zarr_format())
            else:
                record["provenance"] = provenance
            store = cls(path, lock, record)
            store._resume()
            if total_tiles is not None:
                store.set_total_tiles(total_tiles)
        except BaseException:
            lock.release()
            raise
        return store

    @staticmethod
    def _existing(path, run_key, embed_dim, embedding_dtype, overwrite):
        """The record of a resumable store at ``path``, or None to create one."""
        prefix = f".{path.name}."  # our temporaries, removed under the lock
        for leftover in path.parent.iterdir():
            if leftover.name.startswith(prefix) and leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        if path.is_file():
            raise StoreError(f"{path} is a file; give a folder ending in .zarr")
        if not path.exists():
            return None
        record = read_record(path)
        if record is None:
            if not any(path.iterdir()):
                path.rmdir()
                return None
            raise StoreError(
                f"{path} exists but is not a napari-lemon store (no commit record); "
                "it is left untouched. Use another --out, or remove it yourself"
            )
        if overwrite:
            trash = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, trash)
            shutil.rmtree(trash)
            return None
        theirs = (record["run_key"], record["embed_dim"], record["embedding_dtype"])
        if theirs != (run_key, embed_dim, embedding_dtype):
            changed = sorted(
                k
                for k in set(record["run_key"]) | set(run_key)
                if record["run_key"].get(k) != run_key.get(k)
            ) or ["embed_dim/embedding_dtype"]
            raise StoreError(
                f"{path} was made by another run (differs in {changed}); use "
                "another --out, or --overwrite (overwrite=True) to replace it"
            )
        return record

    @staticmethod
    def _new_record(run_key, provenance, embed_dim, embedding_dtype) -> dict:
        """The commit record of an empty store."""
        return {
            "format": STORE_FORMAT,
            "run_key": run_key,
            "provenance": provenance,
            "embed_dim": int(embed_dim),
            "embedding_dtype": embedding_dtype,
            "created": now_iso(),
            "updated": now_iso(),
            "tiles_done": [],
            "total_tiles": None,
            "n_rows": 0,
            "n_vertices": 0,
            "segmenters": [],
            "complete": False,
        }

    def _resume(self) -> None:
        """Cut arrays back to the committed counts; drop pieces of a broken finish."""
        if self._record["complete"]:
            return
        n_rows, n_vertices = self._record["n_rows"], self._record["n_vertices"]
        for name, (_, _, _, counted_by) in self._spec.items():
            array = self._root[name]
            length = _length(counted_by, n_rows, n_vertices)
            if array.shape[0] < length:
                raise StoreError(
                    f"{self.path}: {name} holds {array.shape[0]} rows but the commit "
                    f"record counts {length}; the store is damaged. Run the command "
                    "again with --overwrite (overwrite=True) to start over"
                )
            if array.shape[0] > length:
                logger.info(
                    "resume: %s cut from %d to %d", name, array.shape[0], length
                )
                array.resize((length, *array.shape[1:]))
        for name in FINISH_ONLY:
            if name in self._root:
                del self._root[name]
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)

    # state

    @property
    def tiles_done(self) -> frozenset[int]:
        """Tiles appended: committed ones and those in the buffer."""
        return frozenset(self._record["tiles_done"]) | frozenset(self._pending_tiles)

    @property
    def tiles_committed(self) -> frozenset[int]:
        """Tiles whose rows are on disk and in the commit record."""
        return frozenset(self._record["tiles_done"])

    @property
    def n_nuclei(self) -> int:
        """Rows appended: committed ones and those in the buffer."""
        return self._record["n_rows"] + self._pending_rows

    @property
    def complete(self) -> bool:
        """Whether :meth:`finish` has run."""
        return bool(self._record["complete"])

    @property
    def total_tiles(self) -> int | None:
        """Number of tiles the run appends, when known."""
        return self._record["total_tiles"]

    def set_total_tiles(self, n: int) -> None:
        """Record how many tiles the run appends (committed with the next flush)."""
        if int(n) != n or n < 0:
            raise StoreError(f"total_tiles={n!r} for {self.path} must be >= 0")
        self._dirty = self._dirty or self._record["total_tiles"] != int(n)
        self._record["total_tiles"] = int(n)

    def _check_writable(self) -> None:
        """Raise when the store is closed or already complete."""
        if self._closed:
            raise StoreError(f"{self.path} is closed; open it again to write")
        if self.complete:
            raise StoreError(
                f"{self.path} is already complete; use another --out, or "
                "--overwrite (overwrite=True) to make it again"
            )

    # appending

    def append_tile(
        self,
        tile_id: int,
        obs: pd.DataFrame,
        embeddings: np.ndarray,
        outlines: Sequence[np.ndarray],
    ) -> None:
        """Append the nuclei of one tile (possibly none).

        Parameters
        ----------
        tile_id : int
            The tile; each is appended once. ``obs["tile_id"]`` must equal it.
        obs : DataFrame
            One row per nucleus with the contract columns ``nucleus_id, x, y,
            area_um2, segmenter, tile_id`` and no others.
        embeddings : ndarray of shape (n_nuclei, embed_dim), float
        outlines : list of ndarray of shape (k, 2)
            One polygon per nucleus, ``(x, y)`` level-0 px.

        Raises
        ------
        StoreError
            The tile is already in the store, the store is complete or closed, or
            writing failed (disk full, ...); the store stays at its last commit.
        """
        self._check_writable()
        if int(tile_id) in self.tiles_done:
            raise StoreError(f"tile {tile_id} is already in {self.path}")
        rows = self._rows_of(int(tile_id), obs, embeddings, outlines)
        self._pending.append(rows)
        self._pending_tiles.append(int(tile_id))
        self._pending_rows += len(rows["obs/x"])

        waited = time.monotonic() - self._last_flush
        if self._pending_rows >= FLUSH_ROWS or waited >= FLUSH_SECONDS:
            self.flush()

    def _rows_of(self, tile_id, obs, embeddings, outlines) -> dict[str, np.ndarray]:
        """Check one tile's input and turn it into rows of the appended arrays."""
        extra = [c for c in obs.columns if c not in OBS_COLUMNS]
        if extra:
            raise ValueError(
                f"obs of tile {tile_id} has columns {extra} beyond "
                f"{list(OBS_COLUMNS)}; the incremental store keeps only those"
            )
        obs = _check_obs(obs)
        if (obs["tile_id"] != tile_id).any():
            raise ValueError(
                f"obs['tile_id'] holds {sorted(set(obs['tile_id']))} for "
                f"tile_id={tile_id!r}; give the tile's own id"
            )
        embeddings = self._embeddings_of(tile_id, embeddings, len(obs))
        packed = pack_outlines(outlines, len(obs))

        names, inverse = np.unique(obs["segmenter"].to_numpy(str), return_inverse=True)
        codes = np.array([self._segmenter_code(name) for name in names], np.int8)
        base = self._record["n_vertices"] + sum(
            len(p[f"uns/{OUTLINES_KEY}/xy"]) for p in self._pending
        )
        return {
            "obs/nucleus_id": obs["nucleus_id"].to_numpy(np.int64),
            "obs/x": obs["x"].to_numpy(np.float64),
            "obs/y": obs["y"].to_numpy(np.float64),
            "obs/area_um2": obs["area_um2"].to_numpy(np.float64),
            "obs/tile_id": obs["tile_id"].to_numpy(np.int64),
            "obs/segmenter/codes": codes[inverse].reshape(-1),
            f"obsm/{EMBEDDING_KEY}": embeddings,
            f"obsm/{SPATIAL_KEY}": obs[["x", "y"]].to_numpy(np.float64),
            f"uns/{OUTLINES_KEY}/offsets": packed["offsets"][1:] + base,
            f"uns/{OUTLINES_KEY}/xy": packed["xy"],
        }

    def _embeddings_of(self, tile_id, embeddings, n) -> np.ndarray:
        """Embeddings in the store's dtype, checked for shape and range."""
        dim, dtype = self._record["embed_dim"], self._record["embedding_dtype"]
        embeddings = np.asarray(embeddings)
        if embeddings.shape != (n, dim):
            raise ValueError(
                f"embeddings of tile {tile_id} have shape {embeddings.shape}; "
                f"expected ({n}, {dim})"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            stored = embeddings.astype(dtype)
        if not np.isfinite(stored).all() and np.isfinite(embeddings).all():
            raise ValueError(
                f"embeddings of tile {tile_id} exceed the {dtype} range (largest "
                f"|value| {np.abs(embeddings).max():.4g}); open the store with "
                "embedding_dtype='float32'"
            )
        return stored

    def _segmenter_code(self, name: str) -> int:
        """The category code of a segmenter name, adding new names."""
        names = self._record["segmenters"]
        if name not in names:
            if len(names) >= 127:
                raise ValueError("more than 127 segmenter names in one store")
            names.append(name)
        return names.index(name)

    def flush(self) -> None:
        """Write buffered rows and commit their tiles.

        Safe to repeat after a failure: rows are written at the committed counts.
        """
        if self._closed or self.complete or not (self._pending or self._dirty):
            return
        n_rows, n_vertices = self._record["n_rows"], self._record["n_vertices"]
        try:
            for name, (_, _, _, counted_by) in self._spec.items():
                parts = [p[name] for p in self._pending]
                rows = np.concatenate(parts) if parts else None
                start = _length(counted_by, n_rows, n_vertices)
                if rows is not None:
                    _put_rows(self._root[name], start, rows)
            self._commit(self._record["tiles_done"] + self._pending_tiles)
        except OSError as err:
            raise _disk_error(self.path, err, "appending tiles") from err
        self._pending, self._pending_tiles, self._pending_rows = [], [], 0
        self._last_flush, self._dirty = time.monotonic(), False

    def _commit(self, tiles_done: list[int], complete: bool = False) -> None:
        """Replace the commit record with the counts of the arrays on disk."""
        xy = self._root[f"uns/{OUTLINES_KEY}/xy"]
        record = {
            **self._record,
            "tiles_done": list(tiles_done),
            "n_rows": int(self._root["obs/x"].shape[0]),
            "n_vertices": int(xy.shape[0]),
            "complete": complete,
            "updated": now_iso(),
        }
        _write_record(self._root, record)
        self._record = record

    # reading

    def iter_embeddings(self, chunk: int = 65536) -> Iterator[np.ndarray]:
        """Committed embeddings in row order, after writing the buffer.

        Yields
        ------
        ndarray of shape (<= chunk, embed_dim), float32
        """
        if int(chunk) != chunk or chunk < 1:
            raise ValueError(f"chunk={chunk!r} must be a whole number >= 1")
        self.flush()
        array = self._root[f"obsm/{EMBEDDING_KEY}"]
        n = self._record["n_rows"]
        for start in range(0, n, int(chunk)):
            yield np.asarray(array[start : start + int(chunk)], dtype=np.float32)

    # finishing

    def finish(self, clusters: np.ndarray | None, provenance_update: dict) -> Path:
        """Write the index, categories, clusters and provenance; mark complete.

        Parameters
        ----------
        clusters : ndarray of shape (n_nuclei,), int, or None
            Written as the categorical ``obs["cluster"]``; None writes no column.
        provenance_update : dict
            Merged over the provenance given at :meth:`open`.

        Returns
        -------
        Path
            The store, now complete and unlocked.
        """
        self._check_writable()
        self.flush()
        clusters = self._clusters_of(clusters)
        provenance_update = _jsonable(provenance_update, "provenance_update")
        try:
            self._write_finish_pieces(clusters, provenance_update)
            self._commit(self._record["tiles_done"], complete=True)
        except OSError as err:
            raise _disk_error(self.path, err, "finishing") from err
        self.close()
        return self.path

    def _clusters_of(self, clusters) -> pd.Categorical | None:
        """Cluster numbers as a categorical of ints, checked for length."""
        if clusters is None:
            return None
        clusters = np.asarray(clusters)
        n = self._record["n_rows"]
        if clusters.shape != (n,) or (n and clusters.min() < 0):
            raise ValueError(
                f"clusters has shape {clusters.shape}; expected ({n},) numbers >= 0, "
                f"one per nucleus of {self.path}"
            )
        clusters = clusters.astype(np.int64)
        n_clusters = int(clusters.max()) + 1 if n else 0
        return pd.Categorical(clusters, categories=range(n_clusters))

    def _write_finish_pieces(self, clusters, provenance_update) -> None:
        """Index (in slices), segmenter names, clusters, column order, uns."""
        from anndata.io import write_elem

        # index: the nucleus ids as strings, a slice at a time
        ids, n = self._root["obs/nucleus_id"], self._record["n_rows"]
        first = np.asarray(ids[:ROW_CHUNK]).astype(str)
        write_elem(
            self._root, "obs/_index", first, dataset_kwargs={"chunks": (ROW_CHUNK,)}
        )
        index = self._root["obs/_index"]
        for start in range(ROW_CHUNK, n, ROW_CHUNK):
            _put_rows(
                index, start, np.asarray(ids[start : start + ROW_CHUNK]).astype(str)
            )

        # categoricals and the order of columns
        del self._root["obs/segmenter/categories"]
        names = np.asarray(self._record["segmenters"], dtype=str)
        write_elem(self._root, "obs/segmenter/categories", names)
        columns = list(OBS_COLUMNS)
        if clusters is not None:
            write_elem(self._root, "obs/cluster", clusters)
            columns.append("cluster")
        self._root["obs"].attrs["column-order"] = columns

        # provenance
        record = self._record
        provenance = {
            "created": record["created"],
            **record["provenance"],
            **provenance_update,
            "updated": now_iso(),
            "run_key": record["run_key"],
            "tiles_done": np.asarray(sorted(record["tiles_done"]), dtype=np.int64),
            "tiles_total": record["total_tiles"],
            "complete": True,
        }
        write_elem(self._root, f"uns/{PROVENANCE_KEY}", provenance)

    # closing

    def close(self) -> None:
        """Write the buffer and release the lock (idempotent)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._lock.release()

    def __enter__(self) -> IncrementalStore:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except StoreError as err:
            logger.warning("%s", err)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self.tiles_done)} tiles"
        return f"IncrementalStore({str(self.path)!r}, {self.n_nuclei} nuclei, {state})"


def _zarr_format() -> int:
    """The zarr format anndata writes by default (2 in anndata 0.12)."""
    import anndata

    return int(anndata.settings.zarr_write_format)
