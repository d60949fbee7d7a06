"""Fixed-physical-size crops around nucleus centroids.

A crop of ``size`` x ``size`` pixels at ``target_mpp`` microns per pixel is centred
on each centroid (40 x 40 at 0.25 um/px = 10 um a side, the encoder's scale, read
from its card). Crops are resampled bilinearly from the pyramid level closest to,
and not coarser than, ``target_mpp``; when the source is finer than the target it is
smoothed first so that downsampling does not alias.

Border handling: a crop that reaches past the image edge is filled by mirroring
the image at its edge (``mode="reflect"``), so the encoder never sees black
corners. Centroids more than one pixel outside the image are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .slide import Slide

CHUNK = 2048  # nuclei resampled at once: bounds the coordinate arrays to ~100 MB


def crop_grid(size: int, scale: float) -> np.ndarray:
    """Offsets of the crop's pixel centres from its centre, in source pixels.

    Returns
    -------
    ndarray of shape (size,), float64
    """
    return (np.arange(size) + 0.5 - size / 2) * scale


def crop_nuclei(
    image: np.ndarray,
    centroids_xy: np.ndarray,
    image_mpp: float,
    target_mpp: float = 0.25,
    size: int = 40,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> np.ndarray:
    """Cut square crops at a fixed physical scale from an in-memory image.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3), uint8
        RGB image whose pixel size is ``image_mpp``.
    centroids_xy : ndarray of shape (n, 2), float
        Crop centres as ``(x, y)`` = ``(col, row)`` in pixels of ``image``.
    image_mpp, target_mpp : float
        Microns per pixel of ``image`` and of the crops.
    size : int
        Crop side in pixels at ``target_mpp``.

    Returns
    -------
    ndarray of shape (n, size, size, 3), uint8

    Examples
    --------
    >>> image = np.zeros((100, 100, 3), np.uint8)
    >>> crop_nuclei(image, np.array([[50.0, 50.0]]), image_mpp=0.5).shape
    (1, 40, 40, 3)
    """
    centroids_xy = np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"image has shape {image.shape}; expected (rows, cols, 3)")
    if not image_mpp or image_mpp <= 0 or not target_mpp or target_mpp <= 0:
        raise ValueError(
            f"image_mpp={image_mpp!r} and target_mpp={target_mpp!r} must be positive "
            "microns per pixel"
        )
    rows, cols = image.shape[:2]
    outside = (
        (centroids_xy[:, 0] < -1)
        | (centroids_xy[:, 0] > cols)
        | (centroids_xy[:, 1] < -1)
        | (centroids_xy[:, 1] > rows)
    )
    if outside.any():
        bad = centroids_xy[np.argmax(outside)]
        raise ValueError(
            f"{int(outside.sum())} centroids lie outside the {cols}x{rows} image, "
            f"e.g. (x, y)={tuple(bad)}"
        )

    # smooth before downsampling (skimage's anti-aliasing sigma)
    scale = target_mpp / image_mpp
    image = image[..., :3]
    if scale > 1.0:
        sigma = (scale - 1.0) / 2.0
        image = ndimage.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0))

    out = np.empty((len(centroids_xy), size, size, 3), dtype=np.uint8)
    offsets = crop_grid(size, scale)
    starts = range(0, len(centroids_xy), CHUNK)
    for start in progress(starts) if progress else starts:
        chunk = centroids_xy[start : start + CHUNK]
        out[start : start + len(chunk)] = _sample(image, chunk, offsets)
    return out


def _sample(image: np.ndarray, centroids_xy: np.ndarray, offsets: np.ndarray):
    """Bilinear samples of ``image`` on the crop grid around each centroid."""
    n, size = len(centroids_xy), len(offsets)
    # (n, size, size) row and column coordinates
    row = centroids_xy[:, 1, None, None] + offsets[None, :, None]
    col = centroids_xy[:, 0, None, None] + offsets[None, None, :]
    row, col = np.broadcast_arrays(row, col)
    coords = np.stack([row.ravel(), col.ravel()])

    crops = np.empty((n * size * size, 3), dtype=np.uint8)
    for channel in range(3):
        values = ndimage.map_coordinates(
            image[..., channel], coords, order=1, mode="reflect"
        )
        crops[:, channel] = np.clip(np.rint(values), 0, 255)
    return crops.reshape(n, size, size, 3)


def crop_nuclei_from_slide(
    slide: Slide,
    centroids_xy: np.ndarray,
    target_mpp: float = 0.25,
    size: int = 40,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> np.ndarray:
    """Cut crops around level-0 centroids of a slide, from its best pyramid level.

    The level is the coarsest one whose pixels are not larger than ``target_mpp``;
    one region covering all centroids (plus a margin) is read from it.

    Parameters
    ----------
    slide : Slide
        An open slide with a known ``mpp``.
    centroids_xy : ndarray of shape (n, 2), float
        Centres in level-0 pixels ``(x, y)``.

    Returns
    -------
    ndarray of shape (n, size, size, 3), uint8
    """
    centroids_xy = np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2)
    if len(centroids_xy) == 0:
        return np.empty((0, size, size, 3), dtype=np.uint8)
    if slide.mpp is None:
        raise ValueError(f"{slide.path}: mpp unknown; pass mpp when opening the slide")

    # the level to resample from, and the region it must cover
    level = slide.best_level_for_mpp(target_mpp)
    downsample = slide.level_downsamples[level]
    margin = size * target_mpp / slide.mpp  # level-0 px, a full crop side
    x0, y0 = np.floor(centroids_xy.min(axis=0) - margin).astype(int)
    x1, y1 = np.ceil(centroids_xy.max(axis=0) + margin).astype(int)

    # read, clipped to the slide so that the crops mirror at its real edge
    width, height = slide.dimensions
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, width), min(y1, height)
    region_size = (
        max(1, int(round((x1 - x0) / downsample))),
        max(1, int(round((y1 - y0) / downsample))),
    )
    region = slide.read_region((x0, y0), level, region_size)

    local = (centroids_xy - (x0, y0)) / downsample
    local = np.clip(local, -0.5, np.array(region_size) - 0.5)
    level_mpp = slide.mpp * downsample
    return crop_nuclei(region, local, level_mpp, target_mpp, size, progress)
