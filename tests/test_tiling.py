"""The tile grid, and seams that neither lose nor double a nucleus."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_lemon.segment import create_segmenter
from napari_lemon.slide import open_slide
from napari_lemon.tiling import Tile, owned_by, tile_grid
from napari_lemon.whole_slide import owned_nuclei, read_tile, segment_tile

# --- the grid ---------------------------------------------------------------


def test_cores_partition_the_region_and_reads_hold_the_margin():
    tiles = tile_grid((1000, 700), tile_px=256, margin_px=40)
    assert [t.tile_id for t in tiles] == list(range(4 * 3))
    cover = np.zeros((700, 1000), int)
    for tile in tiles:
        x, y, w, h = tile.core
        cover[y : y + h, x : x + w] += 1
        rx, ry, rw, rh = tile.read
        assert rx == max(x - 40, 0) and ry == max(y - 40, 0)
        assert rx + rw == min(x + w + 40, 1000) and ry + rh == min(y + h + 40, 700)
    assert (cover == 1).all()
    assert tiles[-1].core == (768, 512, 232, 188)


def test_region_grid_is_clipped_to_the_region():
    tiles = tile_grid((1000, 1000), 100, 30, region=(150, 220, 250, 120))
    assert [t.core for t in tiles] == [
        (150, 220, 100, 100),
        (250, 220, 100, 100),
        (350, 220, 50, 100),
        (150, 320, 100, 20),
        (250, 320, 100, 20),
        (350, 320, 50, 20),
    ]
    assert tiles[0].read == (150, 220, 130, 120)
    assert tiles[4].read == (220, 290, 160, 50)


def test_tiles_off_tissue_are_dropped_but_keep_their_ids():
    mask = np.zeros((10, 10), bool)  # 40 level-0 px per mask px
    mask[1, 1] = True  # level-0 x, y in 40..80
    tiles = tile_grid((400, 400), 100, 0, mask=mask, mask_downsample=40.0)
    assert [t.tile_id for t in tiles] == [0, 1, 4, 5]  # dilated by one mask px
    mask[:] = False
    assert tile_grid((400, 400), 100, 0, mask=mask, mask_downsample=40.0) == []


def test_tissue_is_grown_by_the_margin():
    mask = np.zeros((10, 10), bool)
    mask[5, 5] = True  # level-0 x, y in 200..220 (20 px per mask px)
    near = tile_grid((200, 200), 50, 0, mask=mask, mask_downsample=20.0)
    far = tile_grid((200, 200), 50, 60, mask=mask, mask_downsample=20.0)
    assert len(far) > len(near)


def test_owned_by_is_half_open():
    xy = np.array([[10, 10], [19.999, 10], [20, 10], [10, 25], [9.999, 12]])
    np.testing.assert_array_equal(
        owned_by((10, 5, 10, 20), xy), [True, True, False, False, False]
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tile_px=0, margin_px=4), "tile_px=0"),
        (dict(tile_px=2.5, margin_px=4), "tile_px=2.5"),
        (dict(tile_px=64, margin_px=-1), "margin_px=-1"),
        (dict(tile_px=64, margin_px=4, region=(0, 0, 10)), "4 numbers"),
        (dict(tile_px=64, margin_px=4, region=(90, 0, 20, 20)), "inside the 100x100"),
        (dict(tile_px=64, margin_px=4, region=(0, 0, 0, 20)), "width and height"),
        (dict(tile_px=64, margin_px=4, mask=np.ones((3, 3, 3))), "expected"),
        (dict(tile_px=64, margin_px=4, mask=np.ones((3, 3))), "mask_downsample=None"),
    ],
)
def test_bad_grid_requests_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tile_grid((100, 100), **kwargs)


def test_tile_is_hashable_and_frozen():
    tile = Tile(3, (0, 0, 4, 4), (0, 0, 6, 6))
    with pytest.raises(AttributeError):
        tile.tile_id = 4
    assert len({tile, Tile(3, (0, 0, 4, 4), (0, 0, 6, 6))}) == 1


# --- seams with a known answer ----------------------------------------------

TILE, MARGIN = 128, 24  # level-0 px; discs up to 20 px across


def seam_discs(size=512, radius=8.0, seed=0):
    """Disc centres on, next to and across every seam and corner of the grid.

    Along each seam, in every tile it borders, a few discs sit at offsets from
    -7.3 to +8 px across it; one more sits on each corner. None touch.
    """
    rng = np.random.default_rng(seed)
    seams = np.arange(TILE, size, TILE)
    offsets = np.array([-7.3, -2.5, -0.5, 0.0, 0.5, 3.1, 8.0])
    pad, step = 3 * radius + 10, 2 * radius + 4
    per_tile = int((TILE - 2 * pad) // step) + 1
    centres = []
    for i, seam in enumerate(seams):
        for k in range(size // TILE):
            for j in range(per_tile):
                off = offsets[(i + 2 * k + 3 * j) % len(offsets)]
                along = TILE * k + pad + j * step
                centres += [(seam + off, along), (along, seam + off)]
    for sx in seams:
        for sy in seams:
            centres.append((sx + rng.uniform(-1, 1), sy + rng.uniform(-1, 1)))
    return np.array(centres)


def draw_discs(centres, size=512, radius=8.0):
    rows, cols = np.mgrid[:size, :size]
    image = np.zeros((size, size), bool)
    for x, y in centres:
        image |= (cols - x) ** 2 + (rows - y) ** 2 <= radius**2
    return image


def threshold_centroids(mask):
    """Centroids ``(x, y)`` of the connected pieces of a boolean image."""
    labels, n = ndimage.label(mask)
    rows_cols = ndimage.center_of_mass(mask, labels, range(1, n + 1))
    return np.array(rows_cols).reshape(-1, 2)[:, ::-1]


def test_threshold_segmentation_tiled_equals_single_pass():
    centres = seam_discs()
    image = draw_discs(centres)
    labels, n = ndimage.label(image)
    assert n == len(centres)  # no two discs touch: the known answer is exact
    whole = threshold_centroids(image)

    # tile by tile: label the read area, keep what the core owns
    found = []
    for tile in tile_grid((512, 512), TILE, MARGIN):
        rx, ry, rw, rh = tile.read
        local = threshold_centroids(image[ry : ry + rh, rx : rx + rw]) + (rx, ry)
        found.append(local[owned_by(tile.core, local)])
    found = np.concatenate(found)

    # the same set: none lost, none doubled, centroids identical
    assert len(found) == len(whole) == len(centres)
    order = np.lexsort(found.T), np.lexsort(whole.T)
    np.testing.assert_allclose(found[order[0]], whole[order[1]], atol=1e-9)
    distance, _ = cKDTree(centres).query(found)
    assert distance.max() < 0.5


def test_margin_smaller_than_nuclei_does_lose_or_double_them():
    """The check above can fail: with no margin, seam discs are cut in two."""
    centres = seam_discs()
    image = draw_discs(centres)
    found = []
    for tile in tile_grid((512, 512), TILE, 0):
        rx, ry, rw, rh = tile.read
        local = threshold_centroids(image[ry : ry + rh, rx : rx + rw]) + (rx, ry)
        found.append(local[owned_by(tile.core, local)])
    assert len(np.concatenate(found)) != len(centres)


def he_discs(centres, size=512, seed=1):
    """Pink background with purple discs (6 um across at 0.25 um/px), noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (236, 196, 220)
    image[draw_discs(centres, size, radius=12.0)] = (78, 42, 136)
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_tiff(path, image, mpp, levels=2):
    options = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    tags = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, **tags, **options)
        for level in range(1, levels):
            step = 2**level
            rows, cols = (s // step * step for s in image.shape[:2])
            block = image[:rows, :cols].reshape(
                rows // step, step, cols // step, step, 3
            )
            half = np.rint(block.mean((1, 3))).astype(np.uint8)
            tiff.write(half, subfiletype=1, **options)
    return path


def tiled_nuclei(slide, tiles, segmenter="classical", seg_mpp=0.5, params=None):
    """Level-0 centroids and tile ids of the nuclei each tile keeps."""
    segment = create_segmenter(segmenter, **(params or {}))
    xy, ids = [], []
    for tile in tiles:
        seg = segment_tile(read_tile(slide, tile, seg_mpp), tile, segment, slide.mpp)
        obs, _ = owned_nuclei(seg, tile, segmenter)
        xy.append(obs[["x", "y"]].to_numpy())
        ids.append(obs["tile_id"].to_numpy())
    return np.concatenate(xy), np.concatenate(ids)


def test_classical_segmenter_on_seams_finds_each_disc_once(tmp_path):
    centres = seam_discs(radius=12.0)
    path = write_tiff(tmp_path / "seams.tif", he_discs(centres), mpp=0.25)
    with open_slide(path) as slide:
        tiles = tile_grid(slide.dimensions, TILE, 48)
        found, tile_ids = tiled_nuclei(slide, tiles)

    # one nucleus per disc, within a pixel of its centre, each in its own tile
    distance, nearest = cKDTree(centres).query(found)
    assert len(found) == len(centres) > 40
    assert len(np.unique(nearest)) == len(centres)
    assert distance.max() < 1.0
    cores = {t.tile_id: t.core for t in tiles}
    for (x, y), tile_id in zip(found, tile_ids, strict=True):
        assert owned_by(cores[tile_id], np.array([[x, y]]))[0]


# --- seams on real tissue: a 2x2 mosaic of MoNuSeg tiles ----------------------


def monuseg_mosaic(shared_data):
    names = sorted((shared_data / "monuseg" / "test" / "images").glob("*.tif"))[:4]
    tiles = [tifffile.imread(name)[:1000, :1000, :3] for name in names]
    top, bottom = np.hstack(tiles[:2]), np.hstack(tiles[2:])
    return np.vstack([top, bottom])


@pytest.fixture(scope="module")
def mosaic_path(shared_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("mosaic") / "mosaic.tif"
    return write_tiff(path, monuseg_mosaic(shared_data), mpp=0.25)


def tiled_and_single_pass(path, params, tile_px=512, margin_px=96):
    """Level-0 centroids of the single pass and of the tiled pass, and tiles."""
    from napari_lemon.pipeline import run_steps, segmentation_steps

    with open_slide(path) as slide:
        steps = segmentation_steps(slide, None, "classical", 0.5, params)
        seg = run_steps(steps)
        whole = seg.to_level0(seg.nuclei.centroids_xy)
        tiles = tile_grid(slide.dimensions, tile_px, margin_px)
        tiled, _ = tiled_nuclei(slide, tiles, params=params)
    return whole, tiled, tiles


@pytest.mark.slow
def test_real_mosaic_tiles_equal_single_pass_at_a_fixed_threshold(mosaic_path):
    """With the global threshold fixed, every step of the classical segmenter is
    local (smoothing, 20 um background, watershed) and 24 um margins hold it:
    the tiled nuclei are the single pass's, to the last digit."""
    fixed = dict(threshold_scale=1e-6, min_hematoxylin=0.045)
    whole, tiled, tiles = tiled_and_single_pass(mosaic_path, fixed)
    assert len(tiles) == 16 and len(whole) > 1500
    assert len(tiled) == len(whole)
    distance, _ = cKDTree(whole).query(tiled)
    assert distance.max() < 1e-6


@pytest.mark.slow
def test_real_mosaic_tiled_agrees_with_single_pass(mosaic_path):
    """With its default threshold, picked per image, the classical segmenter sees
    each tile's own tissue: a few nuclei differ (most far from any seam), a
    nucleus on a seam is seldom doubled."""
    whole, tiled, tiles = tiled_and_single_pass(mosaic_path, {})
    recall, precision, near_seam_doubles = seam_agreement(whole, tiled, tiles)
    # measured: recall 0.982, precision 0.952, 1 double of 1,899 nuclei
    assert recall > 0.97 and precision > 0.93, (recall, precision)
    assert near_seam_doubles <= 0.002 * len(whole), near_seam_doubles


def seam_agreement(whole, tiled, tiles, radius=8.0):
    """Recall and precision of tiled against single-pass nuclei, and doubles.

    A double is a pair of tiled nuclei within ``radius`` of each other and of a
    seam that the single pass found as one.
    """
    from scipy.optimize import linear_sum_assignment

    distance = np.linalg.norm(whole[:, None] - tiled[None], axis=2)
    cost = np.where(distance <= radius, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    matched = int((cost[rows, cols] <= radius).sum())

    # pairs of close tiled nuclei straddling a seam
    seams_x = {t.core[0] for t in tiles} - {0}
    seams_y = {t.core[1] for t in tiles} - {0}
    pairs = cKDTree(tiled).query_pairs(radius, output_type="ndarray")
    near = [
        any(abs(tiled[i, 0] - s) < radius for s in seams_x)
        or any(abs(tiled[i, 1] - s) < radius for s in seams_y)
        for i in pairs[:, 0]
    ]
    return matched / len(whole), matched / len(tiled), int(np.sum(near))
