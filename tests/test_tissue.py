"""Tissue masks of synthetic slides with tissue at known places, and of real tiles."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_lemon.slide import SlideError, open_slide
from napari_lemon.tissue import tissue_mask, tissue_pixels

MPP = 0.5
WHITE = (244, 244, 242)
PINK = (226, 170, 205)


def write_pyramid(path, image, mpp=MPP, levels=4):
    """A tiled pyramid halving each level, mpp in the resolution tags."""
    options = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    tags = {}
    if mpp:
        tags = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, **tags, **options)
        for level in range(1, levels):
            tiff.write(image[:: 2**level, :: 2**level], subfiletype=1, **options)
    return path


def two_pieces(rows=1536, cols=2048, seed=0):
    """White slide, two pink rectangles of tissue and a black speck of dust."""
    rng = np.random.default_rng(seed)
    image = np.empty((rows, cols, 3), np.float32)
    image[:] = WHITE
    image[200:700, 300:900] = PINK  # 250 x 300 um
    image[900:1400, 1200:1900] = PINK
    image[100:106, 1800:1806] = 0  # 3 um of black dust
    image += rng.normal(0, 3, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def two_pieces_path(tmp_path_factory):
    return write_pyramid(tmp_path_factory.mktemp("tissue") / "pieces.tif", two_pieces())


def level0_mask(mask, downsample, shape):
    """The mask blown up to level-0 px, for comparison with the drawn tissue."""
    rows = (np.arange(shape[0]) // downsample).astype(int)
    cols = (np.arange(shape[1]) // downsample).astype(int)
    return mask[np.minimum(rows, mask.shape[0] - 1)][
        :, np.minimum(cols, mask.shape[1] - 1)
    ]


def test_mask_covers_the_tissue_and_not_the_background(two_pieces_path):
    with open_slide(two_pieces_path) as slide:
        mask, downsample = tissue_mask(slide, mpp=8.0)
    assert mask.dtype == bool
    assert 8.0 / 2 < downsample * MPP <= 8.0
    truth = np.zeros((1536, 2048), bool)
    truth[200:700, 300:900] = truth[900:1400, 1200:1900] = True
    found = level0_mask(mask, downsample, truth.shape)
    # every tissue pixel is covered but one mask pixel at the edges; background not
    assert found[truth].mean() > 0.97
    assert found[~truth].mean() < 0.02
    assert not found[90:120, 1790:1820].any()  # the dust speck is removed


def test_mask_uses_a_coarse_level_not_level_0(two_pieces_path, monkeypatch):
    from napari_lemon.slide import Slide

    levels_read = []
    read = Slide.read_region

    def spy(self, location, level, size):
        levels_read.append(level)
        return read(self, location, level, size)

    monkeypatch.setattr(Slide, "read_region", spy)
    with open_slide(two_pieces_path) as slide:
        tissue_mask(slide, mpp=4.0)
    assert set(levels_read) == {3}  # 0.5 * 8 = 4 um/px


def test_single_level_slide_is_read_in_bands(tmp_path, monkeypatch):
    from napari_lemon import tissue

    path = write_pyramid(tmp_path / "flat.tif", two_pieces(), levels=1)
    monkeypatch.setattr(tissue, "BAND_BYTES", 2048 * 3 * 16 * 100)
    with open_slide(path) as slide:
        banded, downsample = tissue_mask(slide, mpp=8.0)
    monkeypatch.setattr(tissue, "BAND_BYTES", 1 << 30)
    with open_slide(path) as slide:
        whole, _ = tissue_mask(slide, mpp=8.0)
    assert downsample == 16
    assert banded.shape == (96, 128)
    np.testing.assert_array_equal(banded, whole)


def test_blank_white_slide_has_no_tissue(tmp_path):
    image = np.full((512, 512, 3), 245, np.uint8)
    with open_slide(write_pyramid(tmp_path / "blank.tif", image, levels=2)) as slide:
        mask, _ = tissue_mask(slide)
    assert mask.size and not mask.any()


def test_black_padding_and_light_grey_are_not_tissue():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 20:40] = 215  # light grey glass
    image[:, 40:] = PINK
    found = tissue_pixels(image)
    assert not found[:, :40].any()
    assert found[:, 40:].all()


def test_all_tissue_tile_is_not_split_in_two(shared_data):
    from napari_lemon.slide import Slide

    tiles = sorted((shared_data / "monuseg" / "train" / "images").glob("*.tif"))
    for tile in tiles[:3]:
        with Slide(tile, mpp=0.25) as slide:
            mask, _ = tissue_mask(slide, mpp=4.0)
        assert mask.mean() > 0.95, tile.name


def test_mosaic_white_background_is_excluded(shared_data, tmp_path):
    tile = next((shared_data / "monuseg" / "train" / "images").glob("*.tif"))
    image = np.full((3000, 3000, 3), 241, np.uint8)
    image[1000:2000, 1000:2000] = tifffile.imread(tile)[..., :3]
    with open_slide(write_pyramid(tmp_path / "mosaic.tif", image, 0.25)) as slide:
        mask, downsample = tissue_mask(slide, mpp=8.0)
    found = level0_mask(mask, downsample, image.shape[:2])
    assert found[1000:2000, 1000:2000].mean() > 0.95
    inside = np.zeros(image.shape[:2], bool)
    inside[1000:2000, 1000:2000] = True
    assert found[~inside].mean() < 0.01


def test_mask_needs_the_slide_mpp(tmp_path):
    path = write_pyramid(tmp_path / "nompp.tif", two_pieces(256, 256), mpp=None)
    with open_slide(path) as slide, pytest.raises(SlideError, match="--mpp"):
        tissue_mask(slide)


@pytest.mark.parametrize("mpp", [0, -1.0, float("nan"), "8"])
def test_bad_mask_mpp_is_refused(two_pieces_path, mpp):
    with open_slide(two_pieces_path) as slide:
        with pytest.raises(ValueError, match="microns per mask pixel"):
            tissue_mask(slide, mpp=mpp)
