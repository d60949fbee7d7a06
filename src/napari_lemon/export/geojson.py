"""Nuclei as GeoJSON detections for QuPath (0.4 and later).

One ``Feature`` per nucleus, in a ``FeatureCollection``::

    {"type": "Feature", "id": "<uuid>",
     "geometry": {"type": "Polygon", "coordinates": [[[x, y], ..., [x, y]]]},
     "properties": {"objectType": "detection",
                    "classification": {"name": "tumour", "color": [230, 159, 0]},
                    "measurements": {"Area um^2": 38.2, "Cluster": 3, ...}}}

Coordinates are level-0 pixels of the slide, rounded to 1/1000 px (what float32
keeps of coordinates above 16,384 px), in closed rings whose exterior runs
counter-clockwise in ``(x, y)``. Nuclei embedded at given points have no outline:
they get a 16-sided circle of their area (a 7 um disc when that is unknown). The
classification is the main probe's prediction, else the user's label, and is left
out for neither. ``id`` is a UUID derived from the source slide and the nucleus
id, so exporting the same results twice gives the same ids.

Measurements (QuPath reads them as a dict): ``Area um^2``, ``Cluster``, ``LEMON
nucleus id``, ``LEMON x px``/``LEMON y px`` (the centroid the crop was cut
around), and per probe ``LEMON <name>: <class> probability`` and ``LEMON <name>
confidence``. Unknown values (NaN) are left out: JSON has no NaN.

The file is written a block of 16,384 nuclei at a time (no list of all features
in memory), gzip-compressed when the name ends in ``.gz`` or ``gzip=True``.
Outlines that shapely finds invalid are repaired when that gives one polygon,
else skipped, with a warning that counts them by reason.
"""

from __future__ import annotations

import gzip as gzip_module
import json
import logging
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._geometry import clean_polygons, describe
from ._io import atomic_output, wants_gzip
from .columns import (
    PROBE_PREFIX,
    classification,
    hex_to_rgb,
    probe_names,
    probe_probabilities,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from ..annotations import Annotations

logger = logging.getLogger(__name__)

BLOCK = 16384  # nuclei converted and written at once
NDIGITS = 3  # decimals of a coordinate, in px
DEFAULT_DIAMETER_UM = 7.0  # disc of a nucleus of unknown area
FALLBACK_MPP = 0.25
CIRCLE_QUAD_SEGS = 4  # 16-sided circles
GZIP_LEVEL = 3  # 2.2x faster than 6 on GeoJSON, files 14% larger
SEPARATORS = (",", ":")  # compact JSON
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "napari-lemon/nucleus")

# measurement names, as QuPath shows them
AREA = "Area um^2"
CLUSTER = "Cluster"
NUCLEUS_ID = "LEMON nucleus id"
CENTROID_X, CENTROID_Y = "LEMON x px", "LEMON y px"


def probability_name(probe: str, cls: str) -> str:
    return f"LEMON {probe}: {cls} probability"


def confidence_name(probe: str) -> str:
    return f"LEMON {probe} confidence"


def export_geojson(
    adata: AnnData,
    path: str | Path,
    gzip: bool | None = None,
    annotations: Annotations | None = None,
) -> Path:
    """Write the nuclei of ``adata`` as a QuPath GeoJSON FeatureCollection.

    Parameters
    ----------
    adata : AnnData
        Results (embeddings not needed): ``obs``, ``uns["outlines"]``,
        ``uns["lemon"]`` and any probe columns.
    path : str or Path
        ``.geojson`` (or ``.geojson.gz``); written atomically, replacing a file
        that is there.
    gzip : bool, optional
        Compress; default: when ``path`` ends in ``.gz``.
    annotations : Annotations, optional
        User labels, the classification of nuclei no probe predicts.

    Returns
    -------
    Path
        ``path``. Skipped outlines are reported by a warning.
    """
    path = Path(path)
    skipped: Counter = Counter()
    with atomic_output(path) as tmp, _open_text(tmp, wants_gzip(path, gzip)) as out:
        out.write('{"type":"FeatureCollection","features":[\n')
        first = True
        for text in _feature_blocks(adata, annotations, skipped):
            if text:
                out.write(text if first else ",\n" + text)
                first = False
        out.write("\n]}\n")

    if skipped:
        total = sum(skipped.values())
        warnings.warn(
            f"{path.name}: {total} of {adata.n_obs} nuclei left out, their outlines "
            f"not a polygon ({describe(skipped)})",
            stacklevel=2,
        )
    logger.debug("%d features -> %s", adata.n_obs - sum(skipped.values()), path)
    return path


def _open_text(path: Path, compress: bool):
    if compress:
        return gzip_module.open(path, "wt", encoding="utf-8", compresslevel=GZIP_LEVEL)
    return open(path, "w", encoding="utf-8")


def _feature_blocks(
    adata: AnnData, annotations: Annotations | None, skipped: Counter
) -> Iterator[str]:
    """The features of ``BLOCK`` nuclei at a time, as comma-joined JSON text."""
    from ..store import OUTLINES_KEY, PROVENANCE_KEY

    # per nucleus: classification and measurements, as columns
    provenance = dict(adata.uns.get(PROVENANCE_KEY, {}))
    names, colours = classification(adata, annotations)
    columns = measurement_columns(adata)
    nucleus_ids = adata.obs["nucleus_id"].to_numpy()

    # outlines, then the text of each block
    offsets = np.asarray(adata.uns[OUTLINES_KEY]["offsets"], dtype=np.int64)
    xy = adata.uns[OUTLINES_KEY]["xy"]
    mpp = _mpp_or_fallback(provenance)
    for start in range(0, adata.n_obs, BLOCK):
        stop = min(start + BLOCK, adata.n_obs)
        block = offsets[start : stop + 1]
        polygons, why = clean_polygons(
            xy[block[0] : block[-1]], block - block[0], NDIGITS
        )
        skipped.update(why)
        _add_circles(polygons, np.diff(block) == 0, adata.obs.iloc[start:stop], mpp)
        yield _features_text(
            polygons,
            _feature_ids(nucleus_ids[start:stop], provenance),
            _classification_json(names[start:stop], colours),
            measurement_rows(columns, start, stop),
        )


def _features_text(polygons, ids, classes, measurements) -> str:
    """Comma-joined features of the polygons that are not None."""
    import shapely

    keep = np.flatnonzero(polygons != None)  # noqa: E711
    geometries = shapely.to_geojson(polygons[keep].astype(object))
    return ",\n".join(
        f'{{"type":"Feature","id":"{ids[i]}","geometry":{geometry},'
        f'"properties":{{"objectType":"detection",{classes[i]}'
        f'"measurements":{json.dumps(measurements[i], separators=SEPARATORS)}}}}}'
        for i, geometry in zip(keep, geometries, strict=True)
    )


def _feature_ids(nucleus_ids: np.ndarray, provenance: dict) -> list[str]:
    """UUIDs of the nuclei, from the source slide (its hash, else its name) and id."""
    source = dict(provenance.get("source") or {})
    key = source.get("sha256") or source.get("name") or ""
    return [str(uuid.uuid5(ID_NAMESPACE, f"{key}/{int(i)}")) for i in nucleus_ids]


def _classification_json(names: np.ndarray, colours: dict[str, str]) -> np.ndarray:
    """The ``"classification": {...},`` text of each nucleus (``""`` for none)."""
    text = {
        name: '"classification":'
        + json.dumps(
            {"name": name, "color": hex_to_rgb(colours[name])}, separators=SEPARATORS
        )
        + ","
        for name in colours
    }
    text[""] = ""
    return np.array([text[n] for n in names], dtype=object)


def measurement_columns(adata: AnnData) -> dict[str, np.ndarray]:
    """The QuPath measurements of all nuclei, one float64 array per name."""
    obs = adata.obs
    columns: dict[str, np.ndarray] = {
        NUCLEUS_ID: obs["nucleus_id"].to_numpy(np.float64),
        CENTROID_X: np.round(obs["x"].to_numpy(np.float64), NDIGITS),
        CENTROID_Y: np.round(obs["y"].to_numpy(np.float64), NDIGITS),
        AREA: np.round(obs["area_um2"].to_numpy(np.float64), NDIGITS),
    }
    if "cluster" in obs.columns:
        cluster = pd.to_numeric(np.asarray(obs["cluster"]), errors="coerce")
        columns[CLUSTER] = np.asarray(cluster, dtype=np.float64)
    for name in probe_names(adata):
        classes, proba = probe_probabilities(adata, name)
        for index, cls in enumerate(classes if proba is not None else []):
            columns[probability_name(name, cls)] = np.round(
                proba[:, index].astype(np.float64), 4
            )
        confidence = obs.get(f"{PROBE_PREFIX}{name}_proba")
        if confidence is not None:
            columns[confidence_name(name)] = np.round(confidence.to_numpy(float), 4)
    return columns


def measurement_rows(
    columns: dict[str, np.ndarray], start: int, stop: int
) -> list[dict[str, float]]:
    """The measurements of nuclei ``start:stop`` as dicts; NaN left out."""
    lists = {}
    for key, values in columns.items():
        values = values[start:stop].astype(np.float64)
        whole = key in (NUCLEUS_ID, CLUSTER) and _whole(values)
        lists[key] = values.astype(np.int64).tolist() if whole else values.tolist()
    keys = list(lists)
    return [
        {k: v for k, v in zip(keys, row, strict=True) if v == v}
        for row in zip(*lists.values(), strict=True)
    ]


def _whole(values: np.ndarray) -> bool:
    """Whether all values are finite whole numbers (so they print as ints)."""
    finite = np.isfinite(values)
    return bool(finite.all() and (values == np.round(values)).all())


def _mpp_or_fallback(provenance: dict) -> float:
    mpp = provenance.get("mpp")
    return float(mpp) if mpp else FALLBACK_MPP


def _add_circles(polygons: np.ndarray, empty: np.ndarray, obs, mpp: float) -> None:
    """Fill the nuclei with no outline with circles of their area, in place."""
    import shapely

    rows = np.flatnonzero(empty)
    if len(rows) == 0:
        return
    area_px = obs["area_um2"].to_numpy(np.float64)[rows] / mpp**2
    radius = np.sqrt(area_px / np.pi)
    radius = np.where(
        np.isfinite(radius) & (radius > 0), radius, DEFAULT_DIAMETER_UM / 2 / mpp
    )
    centres = shapely.points(obs[["x", "y"]].to_numpy(np.float64)[rows])
    circles = shapely.buffer(centres, radius, quad_segs=CIRCLE_QUAD_SEGS)
    circles = shapely.transform(circles, lambda c: np.round(c, NDIGITS))
    polygons[rows] = shapely.orient_polygons(circles, exterior_cw=False)
