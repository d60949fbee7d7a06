"""Results as tables: AnnData (.h5ad) for scverse tools, CSV for everything else.

The .h5ad export is the results AnnData with the user's labels added as
``obs["label"]`` (and ``uns["label_colors"]``), cluster colours as
``uns["cluster_colors"]``, and the probe columns as stored. Embeddings stay in
``obsm["X_lemon"]`` in the dtype of the store (float16 for whole slides):
scanpy's ``pp.neighbors(use_rep="X_lemon")`` computes on them as they are (its
distances come out float64), so they are not doubled in size; cast with
``adata.obsm["X_lemon"].astype("float32")`` for a tool that insists.

The CSV has one row per nucleus and no embeddings: ``nucleus_id, x, y`` (level-0
px), ``x_um, y_um`` (the same times the slide's mpp), ``area_um2, segmenter,
tile_id``, ``cluster``, ``label``, then per probe its prediction
``probe_<name>``, confidence ``probe_<name>_proba`` and one
``probe_<name>_proba_<class>`` column per class, then any other ``obs`` column.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._io import atomic_output, wants_gzip
from .columns import (
    LABEL_KEY,
    PROBE_PREFIX,
    colors_key,
    labels_of,
    palette_hex,
    probe_names,
    probe_probabilities,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from ..annotations import Annotations

FIRST_COLUMNS = ("nucleus_id", "x", "y", "x_um", "y_um", "area_um2", "segmenter")
CLUSTER_KEY = "cluster"


def _mpp(adata: AnnData) -> float | None:
    from ..store import PROVENANCE_KEY

    mpp = dict(adata.uns.get(PROVENANCE_KEY, {})).get("mpp")
    return float(mpp) if mpp else None


def labelled(adata: AnnData, annotations: Annotations | None = None) -> AnnData:
    """``adata`` with ``obs["label"]`` and the colours of its categoricals.

    A new AnnData sharing ``adata``'s arrays (nothing large is copied);
    ``adata`` itself is left as it was.
    """
    from anndata import AnnData

    obs, uns = adata.obs.copy(), dict(adata.uns)
    labels = labels_of(adata, annotations)
    if labels is not None:
        obs[LABEL_KEY] = labels.values
        uns[colors_key(LABEL_KEY)] = labels.colours
    if CLUSTER_KEY in obs and isinstance(obs[CLUSTER_KEY].dtype, pd.CategoricalDtype):
        k = len(obs[CLUSTER_KEY].cat.categories)
        if len(uns.get(colors_key(CLUSTER_KEY), [])) != k:
            uns[colors_key(CLUSTER_KEY)] = palette_hex(k)
    return AnnData(obs=obs, obsm=dict(adata.obsm), uns=uns)


def export_h5ad(
    adata: AnnData,
    path: str | Path,
    annotations: Annotations | None = None,
    gzip: bool = False,
) -> Path:
    """Write results for scverse tools (scanpy, squidpy) as one .h5ad file.

    Parameters
    ----------
    adata : AnnData
        Results (:func:`napari_lemon.store.read_results`), embeddings included.
    path : str or Path
        The ``.h5ad`` file; written atomically, replacing one that is there.
    annotations : Annotations, optional
        User labels, written as ``obs["label"]``.
    gzip : bool
        Compress the arrays inside the file (smaller, slower to write and read).
    """
    from ..store import EMBEDDING_KEY

    path = Path(path)
    if path.suffix.lower() != ".h5ad":
        raise ValueError(f"path={str(path)!r} must end in .h5ad for an AnnData export")
    if EMBEDDING_KEY not in adata.obsm:
        raise ValueError(
            f"these results have no obsm[{EMBEDDING_KEY!r}]; read them with "
            "napari_lemon.store.read_results to export embeddings"
        )
    table = labelled(adata, annotations)
    with atomic_output(path) as tmp:
        table.write_h5ad(tmp, compression="gzip" if gzip else None)
    return path


def csv_table(adata: AnnData, annotations: Annotations | None = None) -> pd.DataFrame:
    """One row per nucleus: positions, area, cluster, label, probe columns."""
    obs = labelled(adata, annotations).obs.reset_index(drop=True)
    mpp = _mpp(adata)
    scale = mpp if mpp is not None else np.nan
    table = obs.assign(x_um=obs["x"] * scale, y_um=obs["y"] * scale)

    # probe probabilities as columns beside each prediction
    probe_columns = []
    for name in probe_names(adata):
        column = PROBE_PREFIX + name
        probe_columns += [column, f"{column}_proba"]
        classes, proba = probe_probabilities(adata, name)
        for index, cls in enumerate(classes if proba is not None else []):
            table[f"{column}_proba_{cls}"] = proba[:, index]
            probe_columns.append(f"{column}_proba_{cls}")

    # order: the contract's columns, then the analysis, then the rest
    order = [*FIRST_COLUMNS, "tile_id", CLUSTER_KEY, LABEL_KEY, *probe_columns]
    order = [c for c in order if c in table.columns]
    return table[order + [c for c in table.columns if c not in order]]


def export_csv(
    adata: AnnData,
    path: str | Path,
    gzip: bool | None = None,
    annotations: Annotations | None = None,
) -> Path:
    """Write one row per nucleus to a CSV file (gzip when it ends in .gz).

    Parameters
    ----------
    adata : AnnData
        Results; embeddings are not needed (nor written).
    path : str or Path
        Written atomically, replacing a file that is there.
    gzip : bool, optional
        Compress; default: when ``path`` ends in ``.gz``.
    annotations : Annotations, optional
        User labels, as the ``label`` column.
    """
    path = Path(path)
    table = csv_table(adata, annotations)
    compression = "gzip" if wants_gzip(path, gzip) else None
    with atomic_output(path) as tmp:
        table.to_csv(tmp, index=False, compression=compression)
    return path
