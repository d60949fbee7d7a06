"""Embeddings of nuclei at given positions, without segmentation (``lemon embed``).

For centroids that come from elsewhere: another segmenter, annotations, a cell
detector, outlines imported from QuPath or HoVer-Net
(:mod:`napari_lemon.export.importers`). The result has the same layout as
:func:`napari_lemon.pipeline.analyze`'s, with ``segmenter = "points"`` (or the
name the caller gives), and the outlines and their areas when given.

Nuclei given for a whole slide can be many and scattered, so they are embedded
``EMBED_CHUNK`` at a time (the crops of one chunk are all that is held), and each
slide read covers one block of ``BLOCK_UM`` microns at most: the nuclei of a
chunk are taken block by block, so a few nuclei far apart never make one read
span the slide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .pipeline import CROP_CHUNK, embed_steps, load_or_use, run_steps
from .store import build_results, empty_obs, make_provenance

if TYPE_CHECKING:
    from anndata import AnnData

    from .encoder import Encoder
    from .slide import Slide

EMBED_CHUNK = 16384  # nuclei cropped, then embedded, at once: ~80 MB of crops
BLOCK_UM = 512.0  # side of the slide square one read may cover (+ a crop margin)


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
    outlines: Sequence[np.ndarray] | None = None,
    segmenter: str = "points",
    segmenter_params: dict | None = None,
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
        ``progress("embed", done, total)``: nuclei cropped and embedded so far.
    outlines : list of ndarray of shape (k, 2), optional
        One polygon per point, level-0 ``(x, y)`` px; stored as the outlines,
        and ``area_um2`` is its area. Default: no outlines, ``area_um2`` NaN.
    segmenter, segmenter_params
        What found the nuclei, for ``obs["segmenter"]`` and the provenance.

    Returns
    -------
    AnnData
        The results layout, ``nucleus_id`` = the row of ``points_xy``.
    """
    from .slide import require_mpp

    # inputs
    mpp = require_mpp(slide)
    points = _check_points(slide, points_xy)
    outlines = _check_outlines(outlines, len(points))
    obs = _points_obs(points, extra_obs, segmenter)
    obs["area_um2"] = outline_areas_px(outlines) * mpp**2
    encoder = load_or_use(encoder, model, device)

    # crops and embeddings, a chunk of nearby nuclei at a time
    card = encoder.card
    embeddings = np.empty((len(points), encoder.embed_dim), dtype=np.float32)
    order = _block_order(points, BLOCK_UM / mpp)
    for start in range(0, len(points), EMBED_CHUNK):
        chunk = order[start : start + EMBED_CHUNK]
        crops = _crops(slide, points[chunk], card.mpp, card.crop_size, BLOCK_UM / mpp)
        steps = embed_steps(encoder, crops, batch_size)
        report = _offset_progress(progress, start, len(points))
        embeddings[chunk] = run_steps(steps, report)

    provenance = make_provenance(
        slide.path, mpp, None, segmenter, segmenter_params, card
    )
    return build_results(obs, embeddings, outlines, provenance)


def _check_outlines(outlines: Sequence[np.ndarray] | None, n: int) -> list[np.ndarray]:
    """One ``(k, 2)`` float array per point (empty ones when none are given)."""
    if outlines is None:
        return [np.empty((0, 2))] * n
    if len(outlines) != n:
        raise ValueError(
            f"outlines has {len(outlines)} polygons for {n} points; give one (k, 2) "
            "array of level-0 (x, y) per point"
        )
    return [np.asarray(o, dtype=np.float64).reshape(-1, 2) for o in outlines]


def outline_areas_px(outlines: Sequence[np.ndarray]) -> np.ndarray:
    """Areas of polygons (shoelace formula), NaN for fewer than 3 vertices.

    Returns
    -------
    ndarray of shape (n,), float64
        In square pixels of the coordinates.
    """
    counts = np.array([len(o) for o in outlines], dtype=np.int64)
    if counts.sum() == 0:
        return np.full(len(counts), np.nan)
    xy = np.concatenate([np.asarray(o, np.float64).reshape(-1, 2) for o in outlines])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    # the next vertex of each, wrapping to the first of its ring
    following = np.arange(1, len(xy) + 1)
    filled = counts > 0
    following[(starts + counts - 1)[filled]] = starts[filled]
    x, y = xy[:, 0], xy[:, 1]
    cross = x * y[following] - x[following] * y

    rows = np.repeat(np.arange(len(counts)), counts)
    area = np.abs(np.bincount(rows, cross, minlength=len(counts))) / 2
    return np.where(counts >= 3, area, np.nan)


def _block_order(points: np.ndarray, block_px: float) -> np.ndarray:
    """Row order visiting the points block by block, blocks in row-major order."""
    block = np.floor(points / block_px).astype(np.int64)
    return np.lexsort((points[:, 0], points[:, 1], block[:, 0], block[:, 1]))


def _crops(
    slide: Slide, points: np.ndarray, mpp: float, size: int, block_px: float
) -> np.ndarray:
    """Crops of ``points`` (in block order), one slide read per block piece."""
    from .crops import crop_nuclei_from_slide

    crops = np.empty((len(points), size, size, 3), dtype=np.uint8)
    block = np.floor(points / block_px).astype(np.int64)
    new_block = np.flatnonzero((np.diff(block, axis=0) != 0).any(axis=1)) + 1
    bounds = np.concatenate([[0], new_block, [len(points)]])
    for first, last in zip(bounds[:-1], bounds[1:], strict=True):
        for start in range(first, last, CROP_CHUNK):
            piece = slice(start, min(start + CROP_CHUNK, last))
            crops[piece] = crop_nuclei_from_slide(slide, points[piece], mpp, size)
    return crops


def _offset_progress(
    progress: Callable[[str, int, int], None] | None, done: int, total: int
) -> Callable[[str, int, int], None] | None:
    """A progress callback for one chunk that reports over all nuclei."""
    if progress is None:
        return None

    def report(stage: str, chunk_done: int, chunk_total: int) -> None:
        progress("embed", done + chunk_done, total)

    return report


def _points_obs(
    points: np.ndarray, extra_obs: pd.DataFrame | None, segmenter: str = "points"
) -> pd.DataFrame:
    """The ``obs`` table of given points, with the caller's extra columns."""
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(len(points), dtype=np.int64),
            "x": points[:, 0],
            "y": points[:, 1],
            "area_um2": np.nan,
            "segmenter": segmenter,
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
