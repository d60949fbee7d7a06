"""A results store on zarr, written tile by tile and resumable after a crash.

The store is a ``<name>.zarr`` folder that ``anndata.read_zarr`` (and
:func:`napari_lemon.store.read_results`) reads as the layout of
:func:`napari_lemon.store.build_results`; :mod:`napari_lemon.store_layout`
describes it on disk. ``<name>.zarr.lock`` beside it is held by the writer.

Commit: appended rows are buffered in memory and written in large slices; then
the commit record is replaced atomically (zarr writes the attribute file under a
temporary name and renames it). Only the counts in that record are trusted:
opening a store cuts every array back to them, so a process killed at any
instant leaves a store that resumes at its last commit. zarr's local store
replaces each chunk file atomically, so rewriting a partly filled chunk never
tears committed rows.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import store_layout as layout
from .store import (
    EMBEDDING_KEY,
    OBS_COLUMNS,
    OUTLINES_KEY,
    SPATIAL_KEY,
    StoreError,
    _check_obs,
    now_iso,
    pack_outlines,
)
from .store_layout import check_complete, read_record
from .store_lock import StoreLock

__all__ = ["IncrementalStore", "StoreError", "check_complete", "read_record"]

logger = logging.getLogger(__name__)

# buffered rows are written once this many wait, or this long after the last
# write; 16384 rows of 384-d float16 with outlines buffer about 16 MB
FLUSH_ROWS = 16384
FLUSH_SECONDS = 5.0


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
        self._spec = layout.appended_arrays(
            record["embed_dim"], record["embedding_dtype"]
        )
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
        if embedding_dtype not in layout.EMBEDDING_DTYPES:
            raise StoreError(
                f"embedding_dtype={embedding_dtype!r} for {path}; choose one of "
                f"{list(layout.EMBEDDING_DTYPES)}"
            )
        if int(embed_dim) != embed_dim or embed_dim < 1:
            raise StoreError(f"embed_dim={embed_dim!r} for {path} must be >= 1")
        run_key = layout.jsonable(run_key, "run_key")
        provenance = layout.jsonable(provenance, "provenance")

        lock = StoreLock.acquire(path)
        try:
            record = cls._existing(path, run_key, embed_dim, embedding_dtype, overwrite)
            if record is None:
                record = layout.new_record(
                    run_key, provenance, embed_dim, embedding_dtype
                )
                layout.create_store(path, record)
            else:
                record["provenance"] = provenance
            store = cls(path, lock, record)
            layout.cut_back(store._root, path, record)
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
                raise ValueError(
                    f"{self.path} holds 127 segmenter names already and {name!r} "
                    "would be one more than 127 segmenter names; give each "
                    "segmenter its own --out"
                )
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
                start = layout.length_of(counted_by, n_rows, n_vertices)
                if rows is not None:
                    layout.put_rows(self._root[name], start, rows)
            self._commit(self._record["tiles_done"] + self._pending_tiles)
        except OSError as err:
            raise layout.disk_error(self.path, err, "appending tiles") from err
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
        layout.write_record(self._root, record)
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
        provenance_update = layout.jsonable(provenance_update, "provenance_update")
        try:
            layout.write_finish_pieces(
                self._root, self._record, clusters, provenance_update
            )
            self._commit(self._record["tiles_done"], complete=True)
        except OSError as err:
            raise layout.disk_error(self.path, err, "finishing") from err
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
