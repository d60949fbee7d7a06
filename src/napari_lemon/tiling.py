"""A grid of tiles over a slide's tissue, with margins that make seams clean.

The cores of the tiles partition the analysed region: a regular grid of squares
of ``tile_px`` level-0 px (the last row and column are cut at the region's edge).
Each tile is read with a margin around its core, and keeps only the nuclei whose
centroid lies in its core (:func:`owned_by`). When the margin is larger than the
largest nucleus, a nucleus whose centroid lies in a core is whole inside that
tile's read area, and a nucleus cut by the read area's edge has its centroid
outside the core, so every nucleus is found by exactly one tile.

Tile ids are row-major indices in the full grid of the region (tiles without
tissue leave gaps), so the same region and tile size give the same ids on every
run and a resumed run can skip the tiles it has done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Box = tuple[int, int, int, int]  # (x, y, width, height) in level-0 px


@dataclass(frozen=True)
class Tile:
    """One tile of the grid.

    Attributes
    ----------
    tile_id : int
        Row-major index in the full grid of the region.
    core : tuple of 4 int
        ``(x, y, width, height)`` in level-0 px; the cores partition the region.
    read : tuple of 4 int
        The core grown by the margin on every side, clipped to the region.
    """

    tile_id: int
    core: Box
    read: Box


def tile_grid(
    slide_dims: Sequence[int],
    tile_px: int,
    margin_px: int,
    region: Sequence[int] | None = None,
    mask: np.ndarray | None = None,
    mask_downsample: float | None = None,
) -> list[Tile]:
    """The tiles of a region whose core touches tissue.

    Parameters
    ----------
    slide_dims : (int, int)
        ``(width, height)`` of level 0.
    tile_px : int
        Side of a core in level-0 px.
    margin_px : int
        Level-0 px read around each core; at least the largest nucleus diameter.
    region : sequence of 4 int, optional
        ``(x, y, width, height)`` in level-0 px inside the slide; default the whole
        slide.
    mask : ndarray of shape (rows, cols), bool, optional
        Tissue mask of the whole slide (:func:`napari_lemon.tissue.tissue_mask`);
        default every tile is kept.
    mask_downsample : float, optional
        Level-0 px per mask px; required with ``mask``.

    Returns
    -------
    list of Tile
        In row-major order.
    """
    tile_px, margin_px = _check_sizes(tile_px, margin_px)
    width, height = (int(v) for v in slide_dims)
    x0, y0, w, h = _check_region(region, width, height)
    touches = _tissue_test(mask, mask_downsample, margin_px)

    # every core of the full grid, kept when it touches tissue
    n_cols, n_rows = math.ceil(w / tile_px), math.ceil(h / tile_px)
    tiles = []
    for row in range(n_rows):
        for col in range(n_cols):
            cx, cy = x0 + col * tile_px, y0 + row * tile_px
            core = (cx, cy, min(tile_px, x0 + w - cx), min(tile_px, y0 + h - cy))
            if touches is None or touches(core):
                read = _grow(core, margin_px, (x0, y0, w, h))
                tiles.append(Tile(row * n_cols + col, core, read))
    return tiles


def owned_by(core: Sequence[int], xy_level0: np.ndarray) -> np.ndarray:
    """Which points lie in a core, half-open: ``x0 <= x < x0 + w``, same for y.

    Parameters
    ----------
    core : sequence of 4 int
        ``(x, y, width, height)`` in level-0 px.
    xy_level0 : ndarray of shape (n, 2), float
        Points ``(x, y)`` in level-0 px.

    Returns
    -------
    ndarray of shape (n,), bool
    """
    x, y, w, h = core
    xy = np.asarray(xy_level0, dtype=np.float64).reshape(-1, 2)
    inside_x = (xy[:, 0] >= x) & (xy[:, 0] < x + w)
    return inside_x & (xy[:, 1] >= y) & (xy[:, 1] < y + h)


def _check_sizes(tile_px: int, margin_px: int) -> tuple[int, int]:
    """Whole, positive tile side and non-negative margin."""
    if int(tile_px) != tile_px or tile_px < 1:
        raise ValueError(f"tile_px={tile_px!r} must be a whole number of px >= 1")
    if int(margin_px) != margin_px or margin_px < 0:
        raise ValueError(f"margin_px={margin_px!r} must be a whole number of px >= 0")
    return int(tile_px), int(margin_px)


def _check_region(region: Sequence[int] | None, width: int, height: int) -> Box:
    """``region`` as 4 ints inside the slide (default the whole slide)."""
    if region is None:
        return (0, 0, width, height)
    if len(region) != 4:
        raise ValueError(
            f"region={region!r} must be 4 numbers (x, y, width, height) in level-0 px"
        )
    x, y, w, h = (int(v) for v in region)
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(
            f"region={tuple(region)!r} must have width and height >= 1 and lie "
            f"inside the {width}x{height} slide; clip it first "
            "(napari_lemon.pipeline.resolve_region)"
        )
    return (x, y, w, h)


def _grow(core: Box, margin: int, bounds: Box) -> Box:
    """``core`` grown by ``margin`` on every side, clipped to ``bounds``."""
    bx, by, bw, bh = bounds
    x0, y0 = max(core[0] - margin, bx), max(core[1] - margin, by)
    x1 = min(core[0] + core[2] + margin, bx + bw)
    y1 = min(core[1] + core[3] + margin, by + bh)
    return (x0, y0, x1 - x0, y1 - y0)


def _tissue_test(mask, mask_downsample, margin_px):
    """A test ``core -> bool``: does the core touch (dilated) tissue? None = all."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask has shape {mask.shape}; expected (rows, cols)")
    if mask_downsample is None or not mask_downsample > 0:
        raise ValueError(
            f"mask_downsample={mask_downsample!r} must be the level-0 px per mask "
            "px returned with the mask by tissue_mask"
        )

    # grow tissue by the margin (and a mask pixel) so edge nuclei are kept
    from scipy import ndimage

    reach = int(math.ceil(margin_px / mask_downsample)) + 1
    grown = ndimage.binary_dilation(mask, np.ones((2 * reach + 1,) * 2, bool))

    def touches(core: Box) -> bool:
        c0, r0 = (math.floor(v / mask_downsample) for v in core[:2])
        c1 = math.ceil((core[0] + core[2]) / mask_downsample)
        r1 = math.ceil((core[1] + core[3]) / mask_downsample)
        return bool(grown[max(r0, 0) : r1, max(c0, 0) : c1].any())

    return touches
