"""Analysis columns added to saved results in place, and embeddings read in chunks.

A probe or a clustering adds a few columns to results that may hold a million
embeddings; rewriting the whole store for them would take minutes. Instead
:func:`write_analysis` opens the finished ``.zarr`` store (zarr) or the ``.h5ad``
file (h5py) and writes just the new elements with anndata's own element writer
(``anndata.io.write_elem``), so ``anndata.read_zarr`` / ``read_h5ad`` and
:func:`napari_lemon.store.read_results` read them as if the whole AnnData had
been written: categoricals stay categoricals, ``obs`` keeps its
``column-order`` attribute, an existing element of the same name is replaced.
The store's lock (:mod:`napari_lemon.store_lock`) is held while writing.

The columns of the results contract (``nucleus_id``, ``x``, ...), the
embeddings, centroids, outlines and provenance are refused: they describe the
nuclei, not an analysis of them. Everything is checked before anything is
written.

:func:`iter_embeddings` and :func:`read_provenance` read what a probe needs
without loading the store.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
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
    now_iso,
)

logger = logging.getLogger(__name__)

PROTECTED = {
    "obs": set(OBS_COLUMNS),
    "obsm": {EMBEDDING_KEY, SPATIAL_KEY},
    "uns": {OUTLINES_KEY, PROVENANCE_KEY},
}

# NOTE: elements are written in place: a process killed while writing one may
# leave that element half-written (the embeddings and other elements are never
# touched). Writing the whole store anew would be atomic but takes minutes.


def write_analysis(
    path: str | Path,
    obs: dict[str, Any] | None = None,
    obsm: dict[str, Any] | None = None,
    uns: dict[str, Any] | None = None,
) -> None:
    """Add or replace analysis elements of saved results, in place.

    Parameters
    ----------
    path : str or Path
        A finished ``.zarr`` results store or an ``.h5ad`` results file.
    obs : dict of str to array-like of shape (n_obs,), or None
        Columns of ``obs``; a ``pd.Categorical`` (or categorical Series) stays
        categorical.
    obsm : dict of str to array-like of shape (n_obs, ...), or None
    uns : dict or None
        Entries anndata can write (arrays, lists of str, numbers, dicts).

    Raises
    ------
    FileNotFoundError
        Nothing is at ``path``.
    StoreError
        The store is unfinished, or another process holds its lock.
    OSError
        The results (or the folder of their lock) cannot be written.
    ValueError
        An element has the wrong length, or names a column of the results
        contract; ``path`` is not napari-lemon results.
    """
    from anndata.io import write_elem

    from .store_lock import StoreLock

    path = _results_path(path)
    obs = {str(k): _column(k, v) for k, v in (obs or {}).items()}
    obsm = {str(k): _matrix(k, v) for k, v in (obsm or {}).items()}
    uns = {str(k): _uns_value(k, v) for k, v in (uns or {}).items()}
    _refuse_protected(path, obs=obs, obsm=obsm, uns=uns)
    check_writable(path)

    lock = StoreLock.acquire(path)
    try:
        with _open(path, "r+") as root:
            n_obs = _n_obs(root, path)
            _check_lengths(path, n_obs, obs, "obs")
            _check_lengths(path, n_obs, obsm, "obsm")

            # uns first: the entries most likely to be of a type anndata refuses
            for key, value in uns.items():
                _write(write_elem, root["uns"], key, value, path, "uns")
            for key, value in obsm.items():
                _write(write_elem, root["obsm"], key, value, path, "obsm")
            for key, value in obs.items():
                _write(write_elem, root["obs"], key, value, path, "obs")
            _add_to_column_order(root["obs"], list(obs))
            if f"uns/{PROVENANCE_KEY}" in root:
                write_elem(root[f"uns/{PROVENANCE_KEY}"], "updated", now_iso())
    finally:
        lock.release()
    logger.debug("wrote %s to %s", [*obs, *obsm, *uns], path)


def iter_embeddings(
    path: str | Path, chunk: int = 65536, dtype=None
) -> Iterator[np.ndarray]:
    """The embeddings ``obsm["X_lemon"]`` of saved results, ``chunk`` rows at a time.

    Yields
    ------
    ndarray of shape (<= chunk, dim)
        Rows in order, in the stored dtype (float16 or float32) unless ``dtype``
        is given.
    """
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk={chunk!r} must be a whole number >= 1")
    path = _results_path(path)
    with _open(path, "r") as root:
        array = _embeddings_of(root, path)
        for start in range(0, array.shape[0], int(chunk)):
            rows = np.asarray(array[start : start + int(chunk)])
            yield rows if dtype is None else rows.astype(dtype)


def read_embedding_rows(path: str | Path, rows, chunk: int = 65536) -> np.ndarray:
    """The embeddings of the given rows, in the order given, as float32.

    Streams the store once (``chunk`` rows at a time), so memory holds one chunk
    and the result, never all embeddings.

    Returns
    -------
    ndarray of shape (len(rows), dim), float32
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    n_obs, dim = embedding_shape(path)
    if len(rows) and (rows.min() < 0 or rows.max() >= n_obs):
        raise ValueError(f"rows must lie in 0..{n_obs - 1} for the nuclei of {path}")
    out = np.empty((len(rows), dim), dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    sorted_rows, start = rows[order], 0
    for part in iter_embeddings(path, chunk):
        stop = start + len(part)
        first, last = np.searchsorted(sorted_rows, [start, stop])
        out[order[first:last]] = part[sorted_rows[first:last] - start]
        start = stop
    return out


def read_obs_columns(path: str | Path, names) -> dict[str, np.ndarray]:
    """Some ``obs`` columns of saved results, without reading the rest.

    Returns
    -------
    dict of str to ndarray of shape (n_obs,)
        Categoricals as arrays of their values.
    """
    from anndata.io import read_elem

    path = _results_path(path)
    out = {}
    with _open(path, "r") as root:
        for name in names:
            if name not in root["obs"]:
                raise ValueError(f"{path} has no obs column {name!r}")
            value = read_elem(root["obs"][name])
            out[name] = np.asarray(value)
    return out


def embedding_shape(path: str | Path) -> tuple[int, int]:
    """``(n_obs, dim)`` of the embeddings of saved results."""
    path = _results_path(path)
    with _open(path, "r") as root:
        return tuple(int(s) for s in _embeddings_of(root, path).shape)


def read_provenance(path: str | Path) -> tuple[int, dict]:
    """Number of nuclei and the provenance ``uns["lemon"]`` of saved results.

    Only the index and provenance are read, not the embeddings.
    """
    from anndata.io import read_elem

    path = _results_path(path)
    with _open(path, "r") as root:
        n_obs = _n_obs(root, path)
        key = f"uns/{PROVENANCE_KEY}"
        provenance = read_elem(root[key]) if key in root else {}
    return n_obs, dict(provenance)


def check_writable(path: str | Path) -> None:
    """Refuse results :func:`write_analysis` could not write, before any work.

    Its lock file goes beside the results, and the columns into them: both the
    folder holding them and (for a ``.zarr`` store) the store's folder must take
    a new file, and an ``.h5ad`` file must open for writing.

    Raises
    ------
    OSError
        Naming the results and what to do.
    FileNotFoundError, StoreError, ValueError
        As :func:`write_analysis`.
    """
    path = _results_path(path)
    try:
        for folder in [path.parent] + ([path] if path.is_dir() else []):
            tempfile.TemporaryFile(dir=folder).close()
        if path.is_file():
            open(path, "r+b").close()  # noqa: SIM115 (opened only to be closed)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OSError(
            f"cannot write to the results {path}: {reason}. Copy them to a folder "
            "you may write to (with the annotations file beside them) and give "
            "that copy"
        ) from err


# opening


def _results_path(path: str | Path) -> Path:
    """``path`` checked to be a finished .zarr store or an .h5ad file."""
    from .store_layout import check_complete

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file {path} does not exist")
    if path.is_dir():
        check_complete(path)
    elif path.suffix != ".h5ad":
        raise ValueError(
            f"{path} is neither a .zarr results store nor an .h5ad file; give "
            "results written by `lemon analyze` or `lemon embed`"
        )
    return path


@contextlib.contextmanager
def _open(path: Path, mode: str):
    """The root group of a .zarr store or an .h5ad file."""
    if path.is_dir():
        import zarr

        try:
            root = zarr.open_group(path, mode=mode)
        except Exception as err:
            raise ValueError(
                f"{path} is not a readable .zarr store ({type(err).__name__}: {err})"
            ) from err
        yield root
        return

    import h5py

    try:
        handle = h5py.File(path, mode)
    except OSError as err:
        raise ValueError(
            f"{path} is not a readable .h5ad file ({err}); if another program has "
            "it open for writing, close it there"
        ) from err
    with handle:
        yield handle


def _n_obs(root, path: Path) -> int:
    """Rows of ``obs``, from the length of its index."""
    try:
        group = root["obs"]
        return int(group[group.attrs["_index"]].shape[0])
    except KeyError:
        raise ValueError(
            f"{path} is not napari-lemon results: it has no AnnData obs index"
        ) from None


def _embeddings_of(root, path: Path):
    key = f"obsm/{EMBEDDING_KEY}"
    if key not in root:
        raise ValueError(
            f"{path} is not napari-lemon results: it has no {key}; make it with "
            "`lemon analyze` or `lemon embed`"
        )
    return root[key]


# checking


def _column(name, value) -> Any:
    """An obs column as a Categorical or a 1-D ndarray."""
    if isinstance(value, pd.Series):
        value = value.array if isinstance(value.dtype, pd.CategoricalDtype) else value
    if isinstance(value, pd.Categorical):
        return pd.Categorical(value)
    value = np.asarray(value)
    if value.ndim != 1:
        raise ValueError(
            f"obs column {name!r} has shape {value.shape}; give one value per nucleus"
        )
    return value


def _matrix(name, value) -> Any:
    if isinstance(value, pd.DataFrame):
        return value
    value = np.asarray(value)
    if value.ndim < 1:
        raise ValueError(f"obsm[{name!r}] is a scalar; give one row per nucleus")
    return value


def _uns_value(name, value) -> Any:
    from .store import _storable

    if value is None:
        raise ValueError(f"uns[{name!r}] is None; anndata cannot store None")
    value = _storable(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return np.array(value, dtype=object)  # a string array, as scanpy keeps them
    return value


def _refuse_protected(path: Path, **elements: dict) -> None:
    for where, values in elements.items():
        taken = sorted(set(values) & PROTECTED[where])
        if taken:
            raise ValueError(
                f"{where} {taken} of {path} belong to the results themselves and "
                "are not replaced; give the analysis another name"
            )


def _check_lengths(path: Path, n_obs: int, values: dict, where: str) -> None:
    for name, value in values.items():
        if len(value) != n_obs:
            raise ValueError(
                f"{where}[{name!r}] has length {len(value)} but {path} holds "
                f"n_obs={n_obs} nuclei; give one row per nucleus, in store order"
            )


def _write(write_elem, group, key: str, value, path: Path, where: str) -> None:
    try:
        write_elem(group, key, value)
    except Exception as err:
        if isinstance(err, OSError):
            raise
        raise ValueError(
            f"could not write {where}[{key!r}] to {path}: anndata cannot store "
            f"{type(value).__name__} ({type(err).__name__}: {err})"
        ) from err


def _add_to_column_order(group, names: list[str]) -> None:
    """Append new column names to the obs group's ``column-order`` attribute."""
    order = [str(c) for c in np.asarray(group.attrs.get("column-order", []))]
    new = [n for n in names if n not in order]
    if new:
        group.attrs["column-order"] = order + new
