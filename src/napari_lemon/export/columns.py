"""The analysis columns every export carries: labels, probe predictions, colours.

Probe results follow the table contract: ``obs["probe_<name>"]`` (categorical
class names), ``obs["probe_<name>_proba"]`` (confidence, the largest
probability), ``obsm["probe_<name>"]`` (all class probabilities, in class order)
and ``uns["probe_<name>_colors"]`` (``#rrggbb`` per class, scanpy's ``<key>_colors``
convention). User labels come from the annotations beside a store and become
``obs["label"]`` (categorical, NaN unlabelled) with ``uns["label_colors"]``.

A nucleus' *classification* (what QuPath shows) is the prediction of the main
probe (``cell_type`` when there is one) and, where a nucleus has none, the
user's label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

    from ..annotations import Annotations

LABEL_KEY = "label"
DEFAULT_PROBE = "cell_type"
PROBE_PREFIX = "probe_"


def colors_key(column: str) -> str:
    """scanpy's key for the colours of a categorical column."""
    return f"{column}_colors"


def probe_names(adata: AnnData) -> list[str]:
    """Names of the probes whose predictions ``adata.obs`` holds, main one first."""
    names = [
        column[len(PROBE_PREFIX) :]
        for column in adata.obs.columns
        if column.startswith(PROBE_PREFIX)
        and not column.endswith("_proba")
        and isinstance(adata.obs[column].dtype, pd.CategoricalDtype)
    ]
    return sorted(names, key=lambda name: name != DEFAULT_PROBE)


def hex_colours(adata: AnnData, column: str, n: int) -> list[str]:
    """``uns["<column>_colors"]`` when it has ``n`` entries, else a palette."""
    stored = adata.uns.get(colors_key(column))
    if stored is not None and len(stored) == n:
        return [str(c).lower() for c in stored]
    return palette_hex(n)


def palette_hex(n: int) -> list[str]:
    """``n`` distinct ``#rrggbb`` colours (the cluster palette)."""
    from ..overlay import cluster_palette

    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in cluster_palette(n)]


def hex_to_rgb(colour: str) -> list[int]:
    """``'#e69f00'`` -> ``[230, 159, 0]``."""
    colour = colour.lstrip("#")
    return [int(colour[i : i + 2], 16) for i in (0, 2, 4)]


@dataclass
class Labels:
    """User labels of each row: a categorical and its colours in category order."""

    values: pd.Categorical
    colours: list[str]


def labels_of(adata: AnnData, annotations: Annotations | None = None) -> Labels | None:
    """The labels to export: from ``annotations``, else ``obs["label"]``, else None."""
    if annotations is not None:
        from ..annotations import label_columns

        columns = label_columns(annotations, adata.obs["nucleus_id"].to_numpy())
        return Labels(columns["obs"][LABEL_KEY], columns["uns"][colors_key(LABEL_KEY)])
    if LABEL_KEY in adata.obs.columns:
        values = pd.Categorical(adata.obs[LABEL_KEY])
        return Labels(values, hex_colours(adata, LABEL_KEY, len(values.categories)))
    return None


def classification(
    adata: AnnData, annotations: Annotations | None = None
) -> tuple[np.ndarray, dict[str, str]]:
    """What each nucleus is classified as, and the colour of each class.

    Returns
    -------
    names : ndarray of shape (n,), object
        The main probe's prediction, else the user's label, ``""`` for neither.
    colours : dict
        Class name -> ``#rrggbb``; the probe's colours win over the labels'.
    """
    names = np.full(adata.n_obs, "", dtype=object)
    colours: dict[str, str] = {}

    # labels first, so that predictions overwrite them
    labels = labels_of(adata, annotations)
    if labels is not None:
        labelled = ~pd.isna(labels.values)
        names[labelled] = np.asarray(labels.values)[labelled]
        colours.update(zip(labels.values.categories, labels.colours, strict=True))

    probes = probe_names(adata)
    if probes:
        column = PROBE_PREFIX + probes[0]
        predicted = pd.Categorical(adata.obs[column])
        known = ~pd.isna(predicted)
        names[known] = np.asarray(predicted)[known]
        classes = list(predicted.categories)
        colours.update(
            zip(classes, hex_colours(adata, column, len(classes)), strict=True)
        )
    return names, colours


def probe_probabilities(
    adata: AnnData, name: str
) -> tuple[list[str], np.ndarray | None]:
    """Classes of probe ``name`` and its ``(n, k)`` probabilities (None if absent)."""
    column = PROBE_PREFIX + name
    classes = [str(c) for c in pd.Categorical(adata.obs[column]).categories]
    proba = adata.obsm.get(column)
    if proba is None or np.shape(proba) != (adata.n_obs, len(classes)):
        return classes, None
    return classes, np.asarray(proba, dtype=np.float32)
