"""Handcrafted nucleus features: shape, colour and texture of each nucleus crop.

The classical baseline the LEMON paper compares its embeddings with, and a set of
readable per-nucleus measurements for the plugin. For each crop (40x40 at
0.25 um/px by default) and the mask of its nucleus:

- **shape**, in microns: area, perimeter, equivalent diameter, major and minor
  axis, eccentricity, solidity, extent and circularity (``4 pi area /
  perimeter**2``), measured by :func:`skimage.measure.regionprops_table`;
- **colour**: mean and standard deviation of R, G, B and of the hematoxylin (H)
  and eosin (E) optical densities (colour deconvolution, Ruifrok & Johnston,
  Anal. Quant. Cytol. Histol. 23(4), 2001; :func:`skimage.color.rgb2hed`), inside
  the nucleus and in a ring around it;
- **texture**: grey-level co-occurrence (Haralick et al., IEEE Trans. SMC 3(6),
  1973; :func:`skimage.feature.graycomatrix`) contrast, homogeneity, energy and
  correlation of the grey levels inside the nucleus and over the whole crop,
  averaged over four directions and two distances.

Without a mask, the nucleus is segmented in its crop: the hematoxylin channel is
thresholded by Otsu's method and the connected component at (or nearest to) the
crop centre is kept.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

SHAPE_FEATURES = (
    "area_um2",
    "perimeter_um",
    "equivalent_diameter_um",
    "major_axis_um",
    "minor_axis_um",
    "eccentricity",
    "solidity",
    "extent",
    "circularity",
)
CHANNELS = ("r", "g", "b", "h", "e")
COLOUR_FEATURES = tuple(
    f"{channel}_{stat}_{where}"
    for where in ("nucleus", "ring")
    for channel in CHANNELS
    for stat in ("mean", "std")
)
TEXTURE_PROPS = ("contrast", "homogeneity", "energy", "correlation")
TEXTURE_FEATURES = tuple(
    f"glcm_{prop}_{where}" for where in ("nucleus", "crop") for prop in TEXTURE_PROPS
)
FEATURE_NAMES = SHAPE_FEATURES + COLOUR_FEATURES + TEXTURE_FEATURES

RING_UM = 1.5  # width of the ring around the nucleus whose colour is measured
FALLBACK_RADIUS_UM = 2.0  # disc used when no nucleus is found in a crop
GLCM_DISTANCES_UM = (0.25, 0.5)
GLCM_LEVELS = 32
CHUNK = 1024  # crops measured at once


def _in_plane(footprint: np.ndarray) -> np.ndarray:
    """A 2-D footprint as a 3-D one that never connects two crops of a stack."""
    empty = np.zeros_like(footprint)
    return np.stack([empty, footprint, empty])


def _disk(radius_px: int) -> np.ndarray:
    rows, cols = np.mgrid[-radius_px : radius_px + 1, -radius_px : radius_px + 1]
    return rows**2 + cols**2 <= radius_px**2


def _check_crops(crops: np.ndarray, masks: np.ndarray | None, mpp: float) -> None:
    if crops.ndim != 4 or crops.shape[3] != 3 or crops.dtype != np.uint8:
        raise ValueError(
            f"crops have shape {crops.shape} and dtype {crops.dtype}; expected "
            "uint8 of shape (n, rows, cols, 3), e.g. from crop_nuclei"
        )
    if masks is not None and masks.shape != crops.shape[:3]:
        raise ValueError(
            f"masks have shape {masks.shape}; expected {crops.shape[:3]}, one "
            "(rows, cols) mask per crop"
        )
    if not mpp or mpp <= 0:
        raise ValueError(f"mpp={mpp!r} must be positive microns per pixel, e.g. 0.25")


def segment_crops(crops: np.ndarray, mpp: float = 0.25) -> np.ndarray:
    """Segment the nucleus at the centre of each crop.

    Hematoxylin optical density by colour deconvolution, Otsu threshold per
    crop, a small opening and hole filling, then the connected component at or
    nearest to the crop centre. A crop with no foreground at all gets a disc of
    ``FALLBACK_RADIUS_UM`` at its centre, with a warning.

    Parameters
    ----------
    crops : ndarray of shape (n, rows, cols, 3), uint8
        Nucleus-centred crops.
    mpp : float
        Microns per pixel of the crops.

    Returns
    -------
    ndarray of shape (n, rows, cols), bool
    """
    from skimage.color import rgb2hed

    crops = np.asarray(crops)
    _check_crops(crops, None, mpp)
    masks = _segment_hematoxylin(rgb2hed(crops)[..., 0], mpp)
    _warn_empty(_fill_empty(masks, mpp), len(masks))
    return masks


def _segment_hematoxylin(hema: np.ndarray, mpp: float) -> np.ndarray:
    """Masks of the central nucleus from hematoxylin densities (n, rows, cols)."""
    from skimage.filters import threshold_otsu

    n, rows, cols = hema.shape
    if n == 0:
        return np.zeros(hema.shape, dtype=bool)

    # above each crop's Otsu threshold, opened and filled in each crop's plane
    thresholds = np.array([threshold_otsu(h) for h in hema])
    foreground = hema > thresholds[:, None, None]
    square = _in_plane(np.ones((3, 3), dtype=bool))
    foreground = ndimage.binary_opening(foreground, structure=square)
    cross = _in_plane(ndimage.generate_binary_structure(2, 1))
    foreground = ndimage.binary_fill_holes(foreground, structure=cross)
    labels, _ = ndimage.label(foreground, structure=cross)

    # the component whose pixel lies nearest the centre
    r, c = np.mgrid[:rows, :cols]
    distance = np.hypot(r + 0.5 - rows / 2, c + 0.5 - cols / 2)
    distance = np.where(labels > 0, distance[None], np.inf).reshape(n, -1)
    chosen = labels.reshape(n, -1)[np.arange(n), distance.argmin(axis=1)]
    return (labels == chosen[:, None, None]) & (chosen[:, None, None] > 0)


def _fill_empty(masks: np.ndarray, mpp: float) -> int:
    """Put a central disc in every empty mask, in place; returns how many."""
    empty = ~masks.any(axis=(1, 2))
    if empty.any():
        rows, cols = masks.shape[1:]
        r, c = np.mgrid[:rows, :cols]
        radius_px = max(FALLBACK_RADIUS_UM / mpp, 1.0)
        masks[empty] = np.hypot(r + 0.5 - rows / 2, c + 0.5 - cols / 2) <= radius_px
    return int(empty.sum())


def _warn_empty(n_empty: int, n: int) -> None:
    if n_empty:
        warnings.warn(
            f"no nucleus found in {n_empty} of {n} crops; measured a "
            f"{2 * FALLBACK_RADIUS_UM:g} um disc at their centre instead",
            stacklevel=3,
        )


def shape_features(masks: np.ndarray, mpp: float = 0.25) -> np.ndarray:
    """Shape of each mask, in microns, measured in one regionprops pass.

    The masks are laid out as tiles of one label image (crop ``i`` as label
    ``i + 1``), so scikit-image measures every nucleus in a single call.

    Returns
    -------
    ndarray of shape (n, len(SHAPE_FEATURES)), float64
    """
    from skimage.measure import regionprops_table

    n, rows, cols = masks.shape
    per_row = int(np.ceil(np.sqrt(n)))
    grid_rows = int(np.ceil(n / per_row))

    # tile the masks, each with its own label
    tiles = np.zeros((grid_rows * per_row, rows, cols), dtype=np.int32)
    tiles[:n] = masks * np.arange(1, n + 1, dtype=np.int32)[:, None, None]
    mosaic = tiles.reshape(grid_rows, per_row, rows, cols).swapaxes(1, 2)
    mosaic = mosaic.reshape(grid_rows * rows, per_row * cols)

    props = regionprops_table(
        mosaic,
        properties=(
            "label",
            "area",
            "perimeter",
            "equivalent_diameter_area",
            "axis_major_length",
            "axis_minor_length",
            "eccentricity",
            "solidity",
            "extent",
        ),
    )
    return _shape_in_microns(props, n, mpp)


def _shape_in_microns(props: dict, n: int, mpp: float) -> np.ndarray:
    out = np.zeros((n, len(SHAPE_FEATURES)))
    index = props["label"] - 1
    out[index, 0] = props["area"] * mpp**2
    out[index, 1] = props["perimeter"] * mpp
    out[index, 2] = props["equivalent_diameter_area"] * mpp
    out[index, 3] = props["axis_major_length"] * mpp
    out[index, 4] = props["axis_minor_length"] * mpp
    out[index, 5] = props["eccentricity"]
    out[index, 6] = props["solidity"]
    out[index, 7] = props["extent"]
    perimeter = np.maximum(props["perimeter"], 1.0)
    out[index, 8] = 4 * np.pi * props["area"] / perimeter**2
    return out


def colour_features(
    crops: np.ndarray,
    masks: np.ndarray,
    mpp: float = 0.25,
    hed: np.ndarray | None = None,
) -> np.ndarray:
    """Mean and standard deviation of R, G, B, H and E inside and around nuclei.

    RGB is scaled to 0-1; H and E are optical densities from
    :func:`skimage.color.rgb2hed`. The ring is the mask dilated by ``RING_UM``,
    minus the mask. ``hed`` (``rgb2hed(crops)``, shape (n, rows, cols, 3)) saves
    computing it again.

    Returns
    -------
    ndarray of shape (n, len(COLOUR_FEATURES)), float64
    """
    from skimage.color import rgb2hed

    # five channels per pixel: (n, rows, cols, 5)
    hed = rgb2hed(crops) if hed is None else hed
    channels = np.concatenate([crops / 255.0, hed[..., :2]], axis=-1)

    # nucleus and ring masks
    ring_px = max(int(round(RING_UM / mpp)), 1)
    grown = ndimage.binary_dilation(masks, structure=_in_plane(_disk(ring_px)))
    regions = (masks, grown & ~masks)

    columns = []
    for region in regions:
        weight = region[..., None].astype(np.float64)
        count = np.maximum(weight.sum(axis=(1, 2)), 1.0)  # (n, 1)
        mean = (channels * weight).sum(axis=(1, 2)) / count
        square = (channels**2 * weight).sum(axis=(1, 2)) / count
        std = np.sqrt(np.maximum(square - mean**2, 0.0))
        columns.append(np.stack([mean, std], axis=-1).reshape(len(crops), -1))
    return np.concatenate(columns, axis=1)


def texture_features(
    crops: np.ndarray, masks: np.ndarray, mpp: float = 0.25
) -> np.ndarray:
    """Grey-level co-occurrence statistics inside the nucleus and over the crop.

    Grey levels (luminance) are quantised to ``GLCM_LEVELS``; the nucleus
    matrix counts only pairs of pixels that both lie in the mask.

    Returns
    -------
    ndarray of shape (n, len(TEXTURE_FEATURES)), float64
    """
    from skimage.color import rgb2gray
    from skimage.feature import graycomatrix

    grey = np.minimum(rgb2gray(crops) * GLCM_LEVELS, GLCM_LEVELS - 1).astype(np.uint8)
    # level 0 marks pixels outside the nucleus; nuclear levels are shifted by one
    in_nucleus = np.where(masks, grey + 1, 0).astype(np.uint8)
    distances = sorted({max(int(round(d / mpp)), 1) for d in GLCM_DISTANCES_UM})
    angles = (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)

    out = np.zeros((len(crops), len(TEXTURE_FEATURES)))
    for i in range(len(crops)):
        nucleus = graycomatrix(
            in_nucleus[i], distances, angles, GLCM_LEVELS + 1, symmetric=True
        )[1:, 1:]
        whole = graycomatrix(grey[i], distances, angles, GLCM_LEVELS, symmetric=True)
        out[i] = np.concatenate([_glcm_props(nucleus), _glcm_props(whole)])
    return out


def _glcm_props(matrix: np.ndarray) -> np.ndarray:
    """The four Haralick properties averaged over distances and angles."""
    from skimage.feature import graycoprops

    if matrix.sum() == 0:  # a nucleus too small to hold a pair of pixels
        return np.zeros(len(TEXTURE_PROPS))
    matrix = matrix.astype(np.float64)
    return np.array([graycoprops(matrix, prop).mean() for prop in TEXTURE_PROPS])


def nucleus_features(
    crops: np.ndarray,
    masks: np.ndarray | None = None,
    mpp: float = 0.25,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> pd.DataFrame:
    """Shape, colour and texture features of the nucleus in each crop.

    Parameters
    ----------
    crops : ndarray of shape (n, rows, cols, 3), uint8
        Nucleus-centred crops, e.g. 40x40 at 0.25 um/px from
        :func:`napari_lemon.crops.crop_nuclei`.
    masks : ndarray of shape (n, rows, cols), bool, optional
        The nucleus's pixels in each crop; segmented with :func:`segment_crops`
        when not given. An empty mask is replaced by a central disc (warning).
    mpp : float
        Microns per pixel of the crops: shape features are in microns.
    progress : callable, optional
        Wraps the iterable of chunks (``tqdm``, ``napari.utils.progress``).

    Returns
    -------
    pandas.DataFrame of shape (n, len(FEATURE_NAMES)), float32
        One row per crop, columns :data:`FEATURE_NAMES`.

    Examples
    --------
    >>> crops = np.full((2, 40, 40, 3), 230, np.uint8)
    >>> crops[:, 15:25, 15:25] = (60, 40, 120)  # a dark square nucleus
    >>> table = nucleus_features(crops)
    >>> round(float(table.area_um2[0]), 2)  # 10 x 10 px at 0.25 um/px
    6.25
    """
    import pandas as pd
    from skimage.color import rgb2hed

    crops = np.asarray(crops)
    masks = None if masks is None else np.asarray(masks, dtype=bool)
    _check_crops(crops, masks, mpp)

    out = np.zeros((len(crops), len(FEATURE_NAMES)), dtype=np.float32)
    n_empty = 0
    starts = range(0, len(crops), CHUNK)
    for start in progress(starts) if progress else starts:
        chunk = crops[start : start + CHUNK]
        hed = rgb2hed(chunk)
        if masks is None:
            mask = _segment_hematoxylin(hed[..., 0], mpp)
        else:
            mask = masks[start : start + CHUNK].copy()
        n_empty += _fill_empty(mask, mpp)
        out[start : start + len(chunk)] = np.concatenate(
            [
                shape_features(mask, mpp),
                colour_features(chunk, mask, mpp, hed),
                texture_features(chunk, mask, mpp),
            ],
            axis=1,
        )
    _warn_empty(n_empty, len(crops))
    return pd.DataFrame(np.nan_to_num(out), columns=list(FEATURE_NAMES))
