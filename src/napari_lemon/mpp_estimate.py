"""Estimate a slide's pixel size from the size of its nuclei.

For a file that records no microns per pixel. Nuclei of H&E tissue have a
typical area, so the median area of the nuclei found, in pixels, says how large
a pixel is. The steps:

1. find the tissue on a thumbnail and pick up to ``n_tiles`` level-0 tiles
   covered by it, spread over the slide (seeded);
2. segment them with the classical segmenter at an assumed scale
   (:data:`START_MPP`) and take the median nucleus area;
3. rescale the assumed scale so that this median matches
   :data:`REFERENCE_AREA_UM2`, the median on slides of known scale.

Accuracy is modest: nucleus size varies between tissues as much as between 20x
and 40x, and the classical segmenter adapts part of the way to the scale it is
told. Measured on MoNuSeg and CMU-1 (``benchmarks/mpp_estimate.py``): see the
table there; expect errors of tens of percent on a single tile.

The reference median was measured with :func:`measure_area` at the true scale
(see :data:`REFERENCE_AREA_UM2`). The result
is an estimate and says so with a warning; pass the true value when known.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .slide import Slide

logger = logging.getLogger(__name__)

# Median nucleus area (um2) that the classical segmenter (default parameters)
# finds at the true scale, with the tile sampling below (n_tiles=8, 1024 px),
# measured by benchmarks/mpp_estimate.py: MoNuSeg 2018 train + test, 44 tiles
# at their XML MicronsPerPixel (0.246-0.253), 16,805 nuclei pooled: 29.25 um2;
# CMU-1-Small-Region.svs at 0.499 um/px, 934 nuclei: 25.4 um2. The constant is
# their geometric mean.
REFERENCE_AREA_UM2 = 27.3
START_MPP = 0.35  # assumed scale of the first pass, between 40x and 20x
TILE_PX = 1024  # side of a sampled tile, level-0 px
MIN_TISSUE = 0.5  # least tissue share of a sampled tile
MIN_NUCLEI = 50  # fewer nuclei than this give no estimate


@dataclass(frozen=True)
class MppEstimate:
    """A pixel size estimated from nucleus size.

    Attributes
    ----------
    mpp : float
        Estimated level-0 microns per pixel.
    n_nuclei : int
        Nuclei measured in the last pass.
    spread : float
        Relative standard deviation of the per-tile estimates (0 for one tile).
    tile_mpp : tuple of float
        The estimate from each sampled tile alone.
    """

    mpp: float
    n_nuclei: int
    spread: float
    tile_mpp: tuple[float, ...]


def estimate_mpp(
    slide: Slide,
    n_tiles: int = 8,
    tile_px: int = TILE_PX,
    seed: int = 0,
    reference_area_um2: float = REFERENCE_AREA_UM2,
) -> MppEstimate:
    """Estimate the level-0 microns per pixel of ``slide`` from nucleus size.

    Parameters
    ----------
    slide : Slide
        An open slide; its own ``mpp``, if any, is not used.
    n_tiles : int
        Most tissue tiles sampled.
    tile_px : int
        Side of a sampled tile in level-0 pixels.
    seed : int
        Seed of the tile sampling.
    reference_area_um2 : float
        Median nucleus area the estimate reproduces.

    Returns
    -------
    MppEstimate

    Raises
    ------
    ValueError
        When the slide shows no tissue, or too few nuclei to measure.
    """
    if n_tiles < 1 or tile_px < 64:
        raise ValueError(
            f"n_tiles={n_tiles!r} and tile_px={tile_px!r} must be at least 1 and 64"
        )
    tiles = [
        slide.read_region(box[:2], 0, box[2:])
        for box in tissue_tiles(slide, n_tiles, tile_px, seed)
    ]

    # one pass at the assumed scale, rescaled to the reference median
    # FIXME: not iterated: the classical segmenter finds more, smaller nuclei
    # the coarser the scale it assumes, so passes repeated at the new scale
    # run away (to 1 um/px on CMU-1); a segmenter whose nuclei do not change
    # with the assumed scale would let the passes converge
    mpp = START_MPP
    areas = [measure_area(tile, mpp) for tile in tiles]
    pooled = np.concatenate(areas)
    _check_enough(slide, pooled, mpp)
    estimate = _clip(mpp * math.sqrt(reference_area_um2 / np.median(pooled)))

    # per-tile estimates give the spread
    per_tile = tuple(
        _clip(mpp * math.sqrt(reference_area_um2 / np.median(a)))
        for a in areas
        if len(a)
    )
    mpp = estimate
    spread = float(np.std(per_tile) / np.mean(per_tile)) if len(per_tile) > 1 else 0.0
    warnings.warn(
        f"'{slide.path.name}' records no usable pixel size; estimated "
        f"{mpp:.3f} um/px from the size of {len(pooled)} nuclei (spread "
        f"{spread:.0%}); pass the true mpp when it is known",
        stacklevel=2,
    )
    return MppEstimate(mpp, len(pooled), spread, per_tile)


def measure_area(image: np.ndarray, mpp: float) -> np.ndarray:
    """Areas (um2) of the nuclei the classical segmenter finds at ``mpp``.

    Returns
    -------
    ndarray of shape (n_nuclei,), float64
    """
    from .segment import segment_classical

    return segment_classical(image, mpp).area_um2


def tissue_tiles(
    slide: Slide, n_tiles: int, tile_px: int = TILE_PX, seed: int = 0
) -> list[tuple[int, int, int, int]]:
    """Up to ``n_tiles`` level-0 boxes ``(x, y, width, height)`` on tissue.

    The boxes come from a grid of ``tile_px`` squares (the whole image when it
    is smaller), keeping those at least :data:`MIN_TISSUE` tissue on the
    thumbnail (else the best tenth), drawn with ``seed``, in row-major order.
    """
    from .tissue import tissue_pixels

    width, height = slide.dimensions
    tile_w, tile_h = min(tile_px, width), min(tile_px, height)
    thumb = tissue_pixels(slide.thumbnail(1024))
    scale = thumb.shape[1] / width

    # tissue share of every grid box, measured on the thumbnail
    boxes, shares = [], []
    for y in range(0, height - tile_h + 1, tile_h):
        for x in range(0, width - tile_w + 1, tile_w):
            r0, c0 = int(y * scale), int(x * scale)
            r1, c1 = (
                max(r0 + 1, int((y + tile_h) * scale)),
                max(c0 + 1, int((x + tile_w) * scale)),
            )
            boxes.append((x, y, tile_w, tile_h))
            shares.append(float(thumb[r0:r1, c0:c1].mean()))
    shares_ = np.asarray(shares)
    if shares_.max() < 0.05:
        raise ValueError(
            f"no tissue found in '{slide.path.name}' (largest tissue share of a "
            f"{tile_px} px tile: {shares_.max():.0%}); an mpp cannot be estimated "
            "from nuclei; pass the mpp"
        )

    # tiles mostly on tissue, else the most tissue-rich tenth
    eligible = np.flatnonzero(shares_ >= min(MIN_TISSUE, np.quantile(shares_, 0.9)))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(eligible, size=min(n_tiles, len(eligible)), replace=False)
    return [boxes[i] for i in sorted(chosen)]


def _check_enough(slide: Slide, areas: np.ndarray, mpp: float) -> None:
    if len(areas) < MIN_NUCLEI:
        raise ValueError(
            f"only {len(areas)} nuclei found in the tissue of '{slide.path.name}' "
            f"(at an assumed {mpp:.3g} um/px; {MIN_NUCLEI} needed); an mpp cannot "
            "be estimated from nuclei; pass the mpp"
        )


def _clip(mpp: float) -> float:
    """``mpp`` within the scales at which the segmenter can run."""
    from .segment.nuclei import MPP_RANGE

    return float(np.clip(mpp, *MPP_RANGE))
