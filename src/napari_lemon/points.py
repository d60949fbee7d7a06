"""Embeddings of nuclei at given positions, without segmentation (``lemon embed``).

For centroids that come from elsewhere: another segmenter, annotations, a cell
detector. The result has the same layout as :func:`napari_lemon.pipeline.analyze`'s,
with ``segmenter = "points"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .pipeline import crop_steps, embed_steps, load_or_use, run_steps
from .store import build_results, empty_obs, make_provenance

if TYPE_CHECKING:
    from anndata import AnnData

    from .encoder import Encoder
    from .slide import Slide


def _check_points(slide: Slide, points_xy: np.ndarray) -> np.ndarray:
    """``points_xy`` as float64 (n, 2), refusing points outside the slide."""
    points = np.asarray(points_xy, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(
            f"points_xy has shape {points.shape}; expected (n, 2) level-0 (x, y)"
        )
    width, height = slide.dimensions
    bad = ~np.isfinite(points).all(axis=1)
    bad |= (points < 0).any(axis=1) | (points[:, 0] > width) | (points[:, 1] > height)
    if bad.any():
        example = tuple(float(v) for v in points[np.argmax(bad)])
        raise ValueError(
            f"{int(bad.sum())} of {len(points)} points lie outside the "
            f"{width}x{height} slide '{slide.path.name}' or are not numbers, e.g. "
            f"(x, y)={example}; points must be level-0 pixels"
        )
    return points


def embed_points(
    slide: Slide,
    points_xy: np.ndarray,
    encoder: Encoder | None = None,
    model: str = "bundled",
    device: str = "auto",
    extra_obs: pd.DataFrame | None = None,
    batch_size: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> AnnData:
    """Embeddings of nuclei at given positions (no segmentation).

    Parameters
    ----------
    slide : Slide
        An open slide with a known mpp.
    points_xy : ndarray of shape (n, 2), float
        Nucleus centres, level-0 ``(x, y)`` px.
    encoder, model, device
        As in :func:`analysis_steps`.
    extra_obs : DataFrame, optional
        ``n`` rows of further columns for ``obs`` (cell types, ids, ...).
    batch_size : int, optional
        Crops per forward pass; default the encoder's choice for its device.
    progress : callable, optional
        ``progress(stage, done, total)`` for the ``crop`` and ``embed`` steps.

    Returns
    -------
    AnnData
        The results layout with ``segmenter = "points"``, ``area_um2`` NaN and
        empty outlines.
    """
    from .slide import require_mpp

    # inputs
    mpp = require_mpp(slide)
    points = _check_points(slide, points_xy)
    obs = _points_obs(points, extra_obs)
    encoder = load_or_use(encoder, model, device)

    # crops, embeddings, table
    card = encoder.card
    crops = run_steps(crop_steps(slide, points, card.mpp, card.crop_size), progress)
    embeddings = run_steps(embed_steps(encoder, crops, batch_size), progress)
    outlines = [np.empty((0, 2))] * len(points)
    provenance = make_provenance(slide.path, mpp, None, "points", None, card)
    return build_results(obs, embeddings, outlines, provenance)


def _points_obs(points: np.ndarray, extra_obs: pd.DataFrame | None) -> pd.DataFrame:
    """The ``obs`` table of given points, with the caller's extra columns."""
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(len(points), dtype=np.int64),
            "x": points[:, 0],
            "y": points[:, 1],
            "area_um2": np.nan,
            "segmenter": "points",
            "tile_id": 0,
        }
    )
    if extra_obs is None:
        return obs if len(obs) else empty_obs()
    if len(extra_obs) != len(points):
        raise ValueError(
            f"extra_obs has {len(extra_obs)} rows for {len(points)} points; give "
            "one row per point"
        )
    clash = sorted(set(extra_obs.columns) & set(obs.columns))
    if clash:
        raise ValueError(
            f"extra_obs columns {clash} clash with the results columns "
            f"{list(obs.columns)}; rename them"
        )
    return pd.concat([obs, extra_obs.reset_index(drop=True)], axis=1)
