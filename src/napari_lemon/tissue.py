"""Where the tissue is: a boolean mask of a slide at low resolution.

The mask is made from the coarsest pyramid level that is at least as fine as the
requested ``mpp``, read in bands of rows and block-averaged by a whole factor, so
that a fine level is never held in memory whole. A pixel is tissue when it is
coloured (HSV saturation above a threshold picked by Otsu's method and kept
within fixed bounds) or moderately dark and grey (optical density); plain white
or light-grey background, black padding and specks smaller than
``min_area_um2`` are not tissue, and holes up to ``max_hole_um2`` inside tissue
are filled.

Coordinates: mask pixel ``(row, col)`` covers level-0 pixels
``[col * d, (col + 1) * d) x [row * d, (row + 1) * d)`` with ``d`` the returned
downsample.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .slide import Slide

logger = logging.getLogger(__name__)

MASK_MPP = 8.0  # microns per mask pixel by default
BAND_BYTES = 64 << 20  # level pixels read at once while building the mask
SATURATION_BOUNDS = (0.04, 0.08)  # Otsu's saturation threshold is kept inside these
GREY_DENSITY = (0.12, 1.0)  # mean optical density of grey tissue (not black)
MIN_AREA_UM2 = 5_000.0  # tissue pieces smaller than this (~70 um a side) are dropped
MAX_HOLE_UM2 = 5_000.0  # holes inside tissue up to this size are filled


def tissue_mask(
    slide: Slide,
    mpp: float = MASK_MPP,
    min_area_um2: float = MIN_AREA_UM2,
    max_hole_um2: float = MAX_HOLE_UM2,
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of a slide at about ``mpp`` microns per pixel.

    Parameters
    ----------
    slide : Slide
        An open slide with a known mpp.
    mpp : float
        Wanted microns per mask pixel; the mask is at most this coarse and, unless
        the slide is coarser, at least half as fine.
    min_area_um2, max_hole_um2 : float
        Tissue pieces up to ``min_area_um2`` are removed, holes up to
        ``max_hole_um2`` filled.

    Returns
    -------
    mask : ndarray of shape (rows, cols), bool
        True on tissue; all False when the slide holds none.
    downsample : float
        Level-0 px per mask px.
    """
    from .slide import require_mpp

    slide_mpp = require_mpp(slide)
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise ValueError(
            f"mpp={mpp!r} must be a positive number of microns per mask pixel "
            f"(e.g. {MASK_MPP:g})"
        )

    # the level to read and the whole factor that brings it near mpp
    level = slide.best_level_for_mpp(mpp)
    level_downsample = slide.level_downsamples[level]
    factor = max(1, math.floor(mpp / (slide_mpp * level_downsample)))
    downsample = level_downsample * factor

    # colour -> tissue -> clean up
    image = _read_reduced(slide, level, factor)
    mask = tissue_pixels(image)
    pixel_um2 = (slide_mpp * downsample) ** 2
    mask = _clean(mask, min_area_um2 / pixel_um2, max_hole_um2 / pixel_um2)
    logger.debug(
        "tissue: %.1f%% of %s at %.3g um/px (level %d / %d)",
        100 * mask.mean() if mask.size else 0.0,
        mask.shape,
        slide_mpp * downsample,
        level,
        factor,
    )
    return mask, float(downsample)


def tissue_pixels(image: np.ndarray) -> np.ndarray:
    """Which pixels of a low-resolution RGB image look like stained tissue.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3), uint8 or float
        RGB, 0..255.

    Returns
    -------
    ndarray of shape (rows, cols), bool
    """
    from skimage.filters import threshold_otsu

    rgb = np.asarray(image, dtype=np.float32) / 255.0
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)

    # Otsu splits background from stain; bounded so that an all-tissue or
    # all-background image is neither split in two nor kept whole
    lower, upper = SATURATION_BOUNDS
    spread = saturation.size > 1 and np.ptp(saturation) > 0
    threshold = threshold_otsu(saturation) if spread else upper
    coloured = saturation > min(max(threshold, lower), upper)

    # dark grey tissue (dense hematoxylin) that is not black padding
    density = -np.log10(np.clip(rgb.mean(axis=2), 1 / 255, 1.0))
    grey = (density > GREY_DENSITY[0]) & (density < GREY_DENSITY[1])
    return coloured | grey


def _clean(mask: np.ndarray, min_px: float, max_hole_px: float) -> np.ndarray:
    """Drop small pieces, fill small holes."""
    from skimage.morphology import remove_small_holes, remove_small_objects

    mask = remove_small_objects(mask, max_size=int(min_px))
    return remove_small_holes(mask, max_size=int(max_hole_px))


def _read_reduced(slide: Slide, level: int, factor: int) -> np.ndarray:
    """A whole level block-averaged by ``factor``, read in bands of rows.

    Returns
    -------
    ndarray of shape (ceil(height / factor), ceil(width / factor), 3), float32
    """
    from skimage.measure import block_reduce

    width, height = slide.level_dimensions[level]
    rows_per_band = max(1, BAND_BYTES // (3 * width * factor)) * factor
    downsample = slide.level_downsamples[level]
    bands = []
    for row in range(0, height, rows_per_band):
        rows = min(rows_per_band, height - row)
        location = (0, int(round(row * downsample)))
        band = slide.read_region(location, level, (width, rows))
        # NOTE: the last partial block is averaged with white (cval), as background
        bands.append(
            block_reduce(band, (factor, factor, 1), np.mean, cval=255).astype(
                np.float32
            )
        )
    return np.concatenate(bands, axis=0)
