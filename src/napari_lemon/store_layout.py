"""The on-disk layout of the incremental results store and its commit record.

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

The arrays marked "appended" grow tile by tile; the commit record alone says how
many of their rows count (see :mod:`napari_lemon.incremental_store`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
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
    _storable,
    build_results,
    empty_obs,
    now_iso,
)

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

# written only by finish; removed when an unfinished store is resumed
FINISH_ONLY = ("obs/_index", "obs/cluster", f"uns/{PROVENANCE_KEY}")


def appended_arrays(embed_dim: int, dtype: str) -> dict[str, tuple]:
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


def length_of(counted_by: str, n_rows: int, n_vertices: int) -> int:
    """Committed length of an array counted by rows, offsets or vertices."""
    return {"rows": n_rows, "offsets": n_rows + 1, "vertices": n_vertices}[counted_by]


def jsonable(value: Any, name: str) -> Any:
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


def write_record(root, record: dict[str, Any]) -> None:
    """Replace the commit record in the root group's attributes.

    zarr's local store writes the attribute file under a temporary name and
    renames it into place, so the record is always the old or the new one.
    """
    root.attrs[COMMIT_KEY] = record


def put_rows(array, start: int, rows: np.ndarray) -> None:
    """Grow ``array`` to ``start + len(rows)`` and write ``rows`` from ``start``."""
    stop = start + len(rows)
    array.resize((stop, *array.shape[1:]))
    if len(rows):
        array[start:stop] = rows


def disk_error(path: Path, err: OSError, doing: str) -> StoreError:
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


def create_store(path: Path, record: dict[str, Any]) -> None:
    """Make an empty store at ``path``: built beside it, then renamed into place."""
    import zarr
    from anndata.experimental import write_dispatched

    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    shutil.rmtree(tmp, ignore_errors=True)
    dim, dtype = record["embed_dim"], record["embedding_dtype"]
    spec = appended_arrays(dim, dtype)

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

    root = zarr.open_group(tmp, mode="w", zarr_format=_zarr_format())
    write_dispatched(root, "/", empty, callback=chunked)
    del root["obs/_index"]
    write_record(root, record)
    os.replace(tmp, path)


def new_record(run_key, provenance, embed_dim, embedding_dtype) -> dict:
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


def cut_back(root, path: Path, record: dict[str, Any]) -> None:
    """Cut appended arrays back to the committed counts; drop a broken finish."""
    if record["complete"]:
        return
    n_rows, n_vertices = record["n_rows"], record["n_vertices"]
    spec = appended_arrays(record["embed_dim"], record["embedding_dtype"])
    for name, (_, _, _, counted_by) in spec.items():
        array, length = root[name], length_of(counted_by, n_rows, n_vertices)
        if array.shape[0] < length:
            raise StoreError(
                f"{path}: {name} holds {array.shape[0]} rows but the commit "
                f"record counts {length}; the store is damaged. Run the command "
                "again with --overwrite (overwrite=True) to start over"
            )
        if array.shape[0] > length:
            logger.info("resume: %s cut from %d to %d", name, array.shape[0], length)
            array.resize((length, *array.shape[1:]))

    # pieces of an interrupted finish; temporaries of interrupted chunk writes
    for name in FINISH_ONLY:
        if name in root:
            del root[name]
    for partial in path.rglob("*.partial"):
        partial.unlink(missing_ok=True)


def write_finish_pieces(root, record: dict[str, Any], clusters, update: dict) -> None:
    """Index (in slices), segmenter names, clusters, column order, uns."""
    from anndata.io import write_elem

    # index: the nucleus ids as strings, a slice at a time
    ids, n = root["obs/nucleus_id"], record["n_rows"]
    first = np.asarray(ids[:ROW_CHUNK]).astype(str)
    write_elem(root, "obs/_index", first, dataset_kwargs={"chunks": (ROW_CHUNK,)})
    index = root["obs/_index"]
    for start in range(ROW_CHUNK, n, ROW_CHUNK):
        put_rows(index, start, np.asarray(ids[start : start + ROW_CHUNK]).astype(str))

    # categoricals and the order of columns
    del root["obs/segmenter/categories"]
    names = np.asarray(record["segmenters"], dtype=str)
    write_elem(root, "obs/segmenter/categories", names)
    columns = list(OBS_COLUMNS)
    if clusters is not None:
        write_elem(root, "obs/cluster", clusters)
        columns.append("cluster")
    root["obs"].attrs["column-order"] = columns

    # provenance
    provenance = {
        "created": record["created"],
        **record["provenance"],
        **update,
        "updated": now_iso(),
        "run_key": record["run_key"],
        "tiles_done": np.asarray(sorted(record["tiles_done"]), dtype=np.int64),
        "tiles_total": record["total_tiles"],
        "complete": True,
    }
    write_elem(root, f"uns/{PROVENANCE_KEY}", provenance)


def _zarr_format() -> int:
    """The zarr format anndata writes by default (2 in anndata 0.12)."""
    import anndata

    return int(anndata.settings.zarr_write_format)
