"""Small pictures of single nuclei, for grids of examples beside the viewer.

A thumbnail is ``size`` x ``size`` pixels covering ``field_um`` microns around a
nucleus centre (by default 48 px at 0.25 um/px: 12 um, a nucleus and its
surroundings). Unlike :func:`napari_lemon.crops.crop_nuclei_from_slide`, which
reads one region around a tile's nuclei, each nucleus here gets its own small
window, so the nuclei may lie anywhere on a whole slide (the members of a
cluster, the neighbours of a nucleus in embedding space).

Each window is read from the coarsest pyramid level whose pixels are no larger
than the thumbnail's (``field_um / size``), with a margin, and resampled by
:func:`napari_lemon.crops.crop_nuclei` (bilinear, smoothed first when
shrinking). The windows of a batch are stacked into one strip so that a single
resampling call serves them all; the margin keeps each thumbnail's samples and
smoothing inside its own window.

Edges: the part of a thumbnail beyond the slide or image edge is white, as
:meth:`napari_lemon.slide.Slide.read_region` reads it, so a thumbnail shows where
the tissue ends instead of a mirrored copy of tissue that is not there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .crops import crop_nuclei
from .slide import require_mpp

if TYPE_CHECKING:
    from .slide import Slide

BATCH = 256  # windows resampled in one call
WHITE = 255

# reads a (rows, cols, 3) uint8 window of level pixels; (col0, row0, side)
ReadWindow = Callable[[int, int, int], np.ndarray]


def nucleus_thumbnails(
    slide: Slide,
    centroids_xy: np.ndarray,
    mpp: float = 0.25,
    size: int = 48,
    field_um: float | None = None,
) -> np.ndarray:
    """Thumbnails of nuclei anywhere on a slide, one small read per nucleus.

    Parameters
    ----------
    slide : Slide
        An open slide with a known ``mpp``.
    centroids_xy : ndarray of shape (n, 2), float
        Nucleus centres in level-0 pixels ``(x, y)``.
    mpp : float
        Microns per pixel of the thumbnails when ``field_um`` is not given.
    size : int
        Thumbnail side in pixels.
    field_um : float, optional
        Side of the square shown, in microns; default ``size * mpp``. The
        thumbnails then have ``field_um / size`` microns per pixel.

    Returns
    -------
    ndarray of shape (n, size, size, 3), uint8
        White beyond the slide's edge.
    """
    # check the request
    slide_mpp = require_mpp(slide)
    centroids_xy = _checked_centroids(centroids_xy, slide.dimensions, slide.path.name)
    out_mpp = _thumbnail_mpp(mpp, size, field_um)

    # the level to read, and the centres in its pixels
    level = slide.best_level_for_mpp(out_mpp)
    downsample = slide.level_downsamples[level]
    local = _to_level(centroids_xy, downsample)

    def read(col0: int, row0: int, side: int) -> np.ndarray:
        location = (col0 * downsample, row0 * downsample)  # exactly col0, row0
        return slide.read_region(location, level, (side, side))

    return _thumbnails(read, local, slide_mpp * downsample, out_mpp, size)


def thumbnails_from_image(
    image: np.ndarray,
    centroids_xy: np.ndarray,
    image_mpp: float,
    mpp: float = 0.25,
    size: int = 48,
    field_um: float | None = None,
) -> np.ndarray:
    """Thumbnails of nuclei of an in-memory RGB image (a layer without a file).

    Parameters
    ----------
    image : array-like of shape (rows, cols, 3 or 4), uint8
        The image; a numpy or dask array (only the windows are read). Alpha is
        dropped.
    centroids_xy : ndarray of shape (n, 2), float
        Nucleus centres ``(x, y)`` = ``(col, row)`` in pixels of ``image``.
    image_mpp : float
        Microns per pixel of ``image``.
    mpp, size, field_um
        As for :func:`nucleus_thumbnails`.

    Returns
    -------
    ndarray of shape (n, size, size, 3), uint8
        White beyond the image's edge.
    """
    # check the request
    shape = tuple(image.shape)
    if len(shape) != 3 or shape[2] not in (3, 4):
        raise ValueError(f"image has shape {shape}; expected (rows, cols, 3 or 4)")
    image_mpp = _positive("image_mpp", image_mpp)
    centroids_xy = _checked_centroids(centroids_xy, (shape[1], shape[0]), "the image")
    out_mpp = _thumbnail_mpp(mpp, size, field_um)

    def read(col0: int, row0: int, side: int) -> np.ndarray:
        window = np.full((side, side, 3), WHITE, dtype=np.uint8)
        c0, r0 = max(col0, 0), max(row0, 0)
        c1, r1 = min(col0 + side, shape[1]), min(row0 + side, shape[0])
        if c1 > c0 and r1 > r0:
            inside = np.asarray(image[r0:r1, c0:c1, :3])
            window[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = inside
        return window

    return _thumbnails(read, centroids_xy, image_mpp, out_mpp, size)


def _thumbnails(
    read: ReadWindow, centres: np.ndarray, level_mpp: float, out_mpp: float, size: int
) -> np.ndarray:
    """Resample a window around each centre (in the pixels ``read`` serves)."""
    # a window wide enough for the field, the bilinear support and the smoothing
    scale = out_mpp / level_mpp  # level pixels per thumbnail pixel
    sigma = max(0.0, (scale - 1.0) / 2.0)  # crop_nuclei's anti-aliasing sigma
    half = math.ceil(size * scale / 2) + 2 + math.ceil(4 * sigma)
    side = 2 * half + 1

    out = np.empty((len(centres), size, size, 3), dtype=np.uint8)
    for start in range(0, len(centres), BATCH):
        batch = centres[start : start + BATCH]
        corners = np.floor(batch).astype(np.int64) - half

        # one strip of windows, each centre moved into its own window
        strip = np.concatenate([read(int(c), int(r), side) for c, r in corners])
        local = batch - corners
        local[:, 1] += side * np.arange(len(batch))
        out[start : start + len(batch)] = crop_nuclei(
            strip, local, level_mpp, out_mpp, size
        )
    return out


def _to_level(centroids_xy: np.ndarray, downsample: float) -> np.ndarray:
    """Level-0 pixel coordinates (pixel ``i`` centred on ``i``) in a level's."""
    return (centroids_xy + 0.5) / downsample - 0.5


def _checked_centroids(centroids_xy, dimensions: tuple[int, int], where: str):
    """Centroids as float64 (n, 2), refused when not finite or off the image."""
    centroids_xy = np.asarray(centroids_xy, dtype=np.float64)
    if centroids_xy.size == 0:
        return centroids_xy.reshape(0, 2)
    if centroids_xy.ndim != 2 or centroids_xy.shape[1] != 2:
        raise ValueError(
            f"centroids_xy has shape {centroids_xy.shape}; expected (n, 2) as (x, y)"
        )
    width, height = dimensions
    outside = ~(
        (centroids_xy[:, 0] >= -1)
        & (centroids_xy[:, 0] <= width)
        & (centroids_xy[:, 1] >= -1)
        & (centroids_xy[:, 1] <= height)
    )
    if outside.any():
        bad = tuple(float(v) for v in centroids_xy[np.argmax(outside)])
        raise ValueError(
            f"{int(outside.sum())} centroids lie outside {where} ({width}x{height} "
            f"px), e.g. (x, y)={bad}; give level-0 pixel coordinates of this image"
        )
    return centroids_xy


def _thumbnail_mpp(mpp: float, size: int, field_um: float | None) -> float:
    """Microns per thumbnail pixel, after checking the parameters."""
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size={size!r} must be a whole number >= 1 of pixels")
    mpp = _positive("mpp", mpp)
    if field_um is None:
        return mpp
    return _positive("field_um", field_um, "microns") / int(size)


def _positive(name: str, value: float, unit: str = "microns per pixel") -> float:
    if value is None or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive number of {unit}")
    return float(value)
