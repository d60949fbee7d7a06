"""The results of an analysis as one AnnData object, and its .h5ad file.

Whole slides are written tile by tile to a ``.zarr`` store of the same layout by
:mod:`napari_lemon.incremental_store`; :func:`read_results` reads both.

Layout (the results contract of ARCHITECTURE.md):

- ``obs``: one row per nucleus: ``nucleus_id``, ``x``, ``y`` (level-0 px, float),
  ``area_um2``, ``segmenter``, ``tile_id``, then analysis columns such as
  ``cluster`` (categorical);
- ``obsm["X_lemon"]``: embeddings, ``(n_nuclei, 384)`` float32;
- ``obsm["spatial"]``: centroids ``(x, y)``, ``(n_nuclei, 2)`` float64, as scverse
  tools expect;
- ``uns["outlines"]``: polygons in level-0 px, ragged: ``offsets`` int64
  ``(n_nuclei + 1,)`` and ``xy`` float32 ``(total_vertices, 2)``; nucleus ``i`` owns
  ``xy[offsets[i]:offsets[i + 1]]``;
- ``uns["lemon"]``: provenance: source file and its hash, mpp, region, segmenter and
  parameters, encoder card name and sha256, package version, created/updated times.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

    from .encoder import EncoderCard

OBS_COLUMNS = ("nucleus_id", "x", "y", "area_um2", "segmenter", "tile_id")
OBS_DTYPES = {
    "nucleus_id": np.int64,
    "x": np.float64,
    "y": np.float64,
    "area_um2": np.float64,
    "segmenter": object,
    "tile_id": np.int64,
}
EMBEDDING_KEY = "X_lemon"
SPATIAL_KEY = "spatial"
OUTLINES_KEY = "outlines"
PROVENANCE_KEY = "lemon"

# files larger than this are fingerprinted by their ends and size, not read whole
FULL_HASH_LIMIT = 64 << 20
PARTIAL_HASH_BLOCK = 8 << 20


class StoreError(ValueError):
    """A results store that is bad, incomplete, of another run, or locked.

    The message names the store's path and says what to do.
    """


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Name, size and sha256 of a source file.

    Files up to 64 MiB are hashed whole. Larger ones (whole-slide images of
    gigabytes) are hashed over their first and last 8 MiB followed by their size
    in bytes as decimal text; ``sha256_scope`` says which was done.
    """
    from .checkpoint import file_sha256

    path = Path(path)
    size = path.stat().st_size
    if size <= FULL_HASH_LIMIT:
        sha256, scope = file_sha256(path), "full file"
    else:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            digest.update(fh.read(PARTIAL_HASH_BLOCK))
            fh.seek(size - PARTIAL_HASH_BLOCK)
            digest.update(fh.read(PARTIAL_HASH_BLOCK))
        digest.update(str(size).encode())
        sha256, scope = digest.hexdigest(), "first and last 8 MiB + size"
    return {"name": path.name, "size": size, "sha256": sha256, "sha256_scope": scope}


def make_provenance(
    source: str | Path | None,
    mpp: float | None,
    region: Sequence[int] | None,
    segmenter: str,
    segmenter_params: dict[str, Any] | None = None,
    encoder_card: EncoderCard | None = None,
    encoder_precision: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Collect what produced a result, for ``uns["lemon"]``.

    Parameters
    ----------
    source : str or Path or None
        The slide file; its name, size and sha256 are recorded.
    mpp : float or None
        Level-0 microns per pixel used.
    region : sequence of 4 int or None
        ``(x, y, width, height)`` in level-0 px that was analysed.
    segmenter, segmenter_params
        Name and parameters of the nucleus segmenter.
    encoder_card : EncoderCard or None
        Card of the encoder whose embeddings are stored.
    encoder_precision : str or None
        The arithmetic it ran in (``fp32``, ``bf16``, ``int8``, ``fp16``).
    **extra
        Further entries (clusters, seed, ...).
    """
    from . import __version__

    provenance: dict[str, Any] = {
        "source": file_fingerprint(source) if source else {},
        "mpp": mpp,
        "region": list(region) if region is not None else None,
        "segmenter": {"name": segmenter, "params": dict(segmenter_params or {})},
        "package": "napari-lemon",
        "version": __version__,
    }
    if encoder_card is not None:
        card = encoder_card
        provenance["encoder"] = {
            "name": card.name,
            "sha256": card.sha256,
            "architecture": card.architecture,
            "mpp": card.mpp,
            "crop_size": card.crop_size,
        }
        if encoder_precision is not None:
            provenance["encoder"]["precision"] = encoder_precision
    provenance.update(extra)
    return provenance


def _storable(value: Any) -> Any:
    """Make ``value`` writable by anndata's h5ad writer (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_storable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def pack_outlines(outlines: Sequence[np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Store polygons as one vertex table and offsets.

    Returns
    -------
    dict with ``offsets`` ndarray of shape (n + 1,), int64 and ``xy`` ndarray of
    shape (total_vertices, 2), float32
    """
    if len(outlines) != n:
        raise ValueError(
            f"outlines has {len(outlines)} polygons for {n} nuclei; give one "
            "(k, 2) array per nucleus (k may be 0)"
        )
    polygons = [np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in outlines]
    counts = np.array([len(p) for p in polygons], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    xy = np.concatenate(polygons) if polygons else np.empty((0, 2), np.float32)
    return {"offsets": offsets, "xy": xy.astype(np.float32)}


def outlines_of(adata: AnnData) -> list[np.ndarray]:
    """The polygon of each nucleus of ``adata``.

    Returns
    -------
    list of ndarray of shape (k, 2), float32
        Vertices ``(x, y)`` in level-0 px, one array per row of ``obs``.
    """
    if OUTLINES_KEY not in adata.uns:
        raise ValueError(
            f"this AnnData has no uns[{OUTLINES_KEY!r}]; it was not made by "
            "napari_lemon.store.build_results"
        )
    packed = adata.uns[OUTLINES_KEY]
    offsets, xy = np.asarray(packed["offsets"]), np.asarray(packed["xy"])
    return [
        xy[start:stop] for start, stop in zip(offsets[:-1], offsets[1:], strict=True)
    ]


def _check_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """Contract columns in order and dtype, other columns kept after them."""
    missing = [c for c in OBS_COLUMNS if c not in obs.columns]
    if missing:
        raise ValueError(
            f"obs lacks columns {missing}; it has {list(obs.columns)}. The results "
            f"table needs {list(OBS_COLUMNS)}"
        )
    extra = [c for c in obs.columns if c not in OBS_COLUMNS]
    obs = obs[list(OBS_COLUMNS) + extra].astype(OBS_DTYPES)
    obs.index = obs["nucleus_id"].astype(str).to_numpy()
    return obs


def empty_obs() -> pd.DataFrame:
    """An ``obs`` table with the contract columns and no rows."""
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in OBS_DTYPES.items()})


def build_results(
    obs: pd.DataFrame,
    embeddings: np.ndarray,
    outlines: Sequence[np.ndarray],
    provenance: dict[str, Any],
) -> AnnData:
    """Assemble the results of one slide or region.

    Parameters
    ----------
    obs : DataFrame
        One row per nucleus with at least ``nucleus_id, x, y, area_um2, segmenter,
        tile_id`` (``x``, ``y`` in level-0 px).
    embeddings : ndarray of shape (n_nuclei, embed_dim), float
        Stored as float32 in ``obsm["X_lemon"]``.
    outlines : list of ndarray of shape (k, 2)
        One polygon per nucleus, ``(x, y)`` level-0 px.
    provenance : dict
        From :func:`make_provenance`; ``created``/``updated`` times are added.

    Returns
    -------
    AnnData
        With ``n_obs = n_nuclei`` and no variables (``X`` is None).
    """
    from anndata import AnnData

    # tables and arrays
    obs = _check_obs(obs)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(obs):
        raise ValueError(
            f"embeddings have shape {embeddings.shape}; expected ({len(obs)}, dim) "
            "for the rows of obs"
        )
    spatial = obs[["x", "y"]].to_numpy(dtype=np.float64)

    # assemble
    adata = AnnData(obs=obs, obsm={EMBEDDING_KEY: embeddings, SPATIAL_KEY: spatial})
    adata.uns[OUTLINES_KEY] = pack_outlines(outlines, len(obs))
    stamp = now_iso()
    provenance = {"created": stamp, **provenance, "updated": stamp}
    adata.uns[PROVENANCE_KEY] = _storable(provenance)
    return adata


def set_clusters(adata: AnnData, clusters: np.ndarray, name: str = "cluster"):
    """Put cluster numbers into ``obs[name]`` as a categorical of ints."""
    clusters = np.asarray(clusters, dtype=np.int64)
    if clusters.shape != (adata.n_obs,):
        raise ValueError(
            f"clusters has shape {clusters.shape}; expected ({adata.n_obs},)"
        )
    n_clusters = int(clusters.max()) + 1 if len(clusters) else 0
    adata.obs[name] = pd.Categorical(clusters, categories=range(n_clusters))


def write_results(adata: AnnData, path: str | Path) -> Path:
    """Write ``adata`` to an .h5ad file, atomically.

    The file is written beside ``path`` under a temporary name and renamed when
    complete, so an interrupted write never leaves a partial file at ``path``.
    ``uns["lemon"]["updated"]`` is set to now.
    """
    path = Path(path)
    if path.suffix != ".h5ad":
        raise ValueError(f"path={str(path)!r} must end in .h5ad")
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.uns.setdefault(PROVENANCE_KEY, {})["updated"] = now_iso()

    # a hidden name beside the target, renamed once complete
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_results(path: str | Path) -> AnnData:
    """Read results from an .h5ad file or a finished ``.zarr`` store; check them.

    Raises
    ------
    FileNotFoundError
        Nothing is at ``path``.
    StoreError
        ``path`` is an incremental store that is not finished yet.
    ValueError
        ``path`` is not readable AnnData, or AnnData without napari-lemon results.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"results file {path} does not exist")
    adata = _read_zarr(path) if path.is_dir() else _read_h5ad(path)

    missing = [c for c in OBS_COLUMNS if c not in adata.obs.columns]
    missing += [
        f"obsm[{k!r}]" for k in (EMBEDDING_KEY, SPATIAL_KEY) if k not in adata.obsm
    ]
    missing += [f"uns[{OUTLINES_KEY!r}]"] if OUTLINES_KEY not in adata.uns else []
    if missing:
        raise ValueError(
            f"{path} is an AnnData file but not napari-lemon results: it lacks "
            f"{missing}. Make it with `lemon analyze` or napari_lemon.store"
        )
    return adata


def _read_h5ad(path: Path) -> AnnData:
    """An .h5ad file as AnnData; ValueError when it is not one."""
    import anndata

    try:
        return anndata.read_h5ad(path)
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable .h5ad file ({type(err).__name__}: {err})"
        ) from err


def _read_zarr(path: Path) -> AnnData:
    """A ``.zarr`` folder as AnnData; StoreError when it is an unfinished store."""
    import anndata

    from .store_layout import check_complete

    check_complete(path)
    try:
        return anndata.read_zarr(path)
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable AnnData .zarr store ({type(err).__name__}: "
            f"{err}); give an .h5ad file or a .zarr folder written by napari-lemon"
        ) from err
