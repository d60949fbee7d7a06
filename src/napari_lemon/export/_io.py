"""Files of the exports: atomic writes, gzip by name, results read for export.

Every export is written beside its target under a hidden temporary name and
renamed when complete, so an interrupted export never leaves half a file under
the name a user (or QuPath) will open. Results are read without their embeddings
when the format does not carry them (GeoJSON, CSV): at a million nuclei those are
the bulk of the store (0.8 GB in float16).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData


def wants_gzip(path: Path, gzip: bool | None) -> bool:
    """``gzip`` when given, else whether ``path`` ends in ``.gz``."""
    return bool(gzip) if gzip is not None else path.suffix.lower() == ".gz"


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed to it when the block succeeds.

    Raises
    ------
    OSError
        Writing failed (a read-only folder, a full disk): the message names
        ``path``, never the temporary file, and says what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name to export to")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, tmp, err) from err
    finally:
        with contextlib.suppress(OSError):  # e.g. the folder is not there
            tmp.unlink(missing_ok=True)


def write_error(path: Path, tmp: Path, err: OSError) -> OSError:
    """``err`` as an OSError about ``path`` (not ``tmp``), saying what to do."""
    reason = err.strerror or str(err).replace(str(tmp), str(path))
    return type(err)(
        f"cannot write {path}: {reason}; choose a folder you may write to (with "
        "free space), or pass another file name"
    )


def read_for_export(path: str | Path, embeddings: bool = True) -> AnnData:
    """Results from an .h5ad file or a finished .zarr store, optionally lean.

    Parameters
    ----------
    embeddings : bool
        False leaves ``obsm["X_lemon"]`` on disk (the rest is read whole).

    Raises
    ------
    FileNotFoundError, StoreError, ValueError
        As :func:`napari_lemon.store.read_results`.
    """
    from ..store import read_results

    if embeddings:
        return read_results(path)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file {path} does not exist")
    with _open_group(path) as group:
        return _read_lean(path, group)


@contextlib.contextmanager
def _open_group(path: Path):
    """The root group of a .zarr folder or an .h5ad file, for anndata's read_elem."""
    if path.is_dir():
        import zarr

        from ..store_layout import check_complete

        check_complete(path)
        yield zarr.open_group(path, mode="r")
        return

    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(
            f"{path} is not a readable .h5ad file ({err}); results are a .zarr "
            "store or an .h5ad file written by napari-lemon (lemon analyze, lemon "
            "embed or the LEMON nuclei panel)"
        ) from err
    with handle:
        yield handle


def _read_lean(path: Path, group) -> AnnData:
    """obs, uns and every obsm array except the embeddings, checked."""
    from anndata import AnnData
    from anndata.io import read_elem

    from ..store import EMBEDDING_KEY, OBS_COLUMNS, OUTLINES_KEY, SPATIAL_KEY

    # what must be there
    obsm_keys = list(group["obsm"].keys()) if "obsm" in group else []
    uns_keys = list(group["uns"].keys()) if "uns" in group else []
    obs = read_elem(group["obs"]) if "obs" in group else None
    missing = [c for c in OBS_COLUMNS if obs is None or c not in obs.columns]
    missing += [
        f"obsm[{k!r}]" for k in (EMBEDDING_KEY, SPATIAL_KEY) if k not in obsm_keys
    ]
    missing += [f"uns[{OUTLINES_KEY!r}]"] if OUTLINES_KEY not in uns_keys else []
    if missing:
        raise ValueError(
            f"{path} is not napari-lemon results: it lacks {missing}. Make it with "
            "`lemon analyze` or `lemon embed`"
        )

    # read all but the embeddings
    obsm = {k: read_elem(group["obsm"][k]) for k in obsm_keys if k != EMBEDDING_KEY}
    return AnnData(obs=obs, obsm=obsm, uns=read_elem(group["uns"]))
