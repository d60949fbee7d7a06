"""Nucleus thumbnails: dark discs on a synthetic pyramid, and a real slide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_lemon.slide import Slide, SlideError, open_slide
from napari_lemon.thumbnails import nucleus_thumbnails, thumbnails_from_image

WIDTH, HEIGHT, MPP = 800, 600, 0.25
RADIUS_PX = 12  # 3 um at 0.25 um/px
DISCS = np.array([[100.0, 120.0], [421.3, 305.7], [700.0, 500.0], [3.0, 300.0]])


def disc_image(centres=DISCS, radius=RADIUS_PX) -> np.ndarray:
    """White RGB image with a dark disc around each ``(x, y)`` centre."""
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    for x, y in centres:
        image[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2] = (60, 20, 120)
    return image


def write_pyramid(path, image, mpp=MPP, levels=3):
    """A tiled pyramidal TIFF with ``levels`` levels halving each time."""
    options = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    # a resolution in inches records no pixel size
    unit, resolution = ("INCH", 72) if mpp is None else ("CENTIMETER", 1e4 / mpp)
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, resolution=(resolution,) * 2, resolutionunit=unit, **options)
        for level in range(1, levels):
            tiff.write(image[:: 2**level, :: 2**level], subfiletype=1, **options)
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return disc_image()


@pytest.fixture
def slide(tmp_path, image):
    with open_slide(write_pyramid(tmp_path / "discs.tif", image)) as opened:
        yield opened


@pytest.fixture
def levels_read(monkeypatch):
    """The pyramid level of every ``read_region`` call."""
    levels: list[int] = []
    original = Slide.read_region

    def spy(self, location, level, size):
        levels.append(level)
        return original(self, location, level, size)

    monkeypatch.setattr(Slide, "read_region", spy)
    return levels


def dark_centre(thumbnail: np.ndarray) -> np.ndarray:
    """``(x, y)`` centre of mass of the dark pixels, in thumbnail pixels."""
    rows, cols = np.nonzero(thumbnail.mean(axis=2) < 128)
    return np.array([cols.mean(), rows.mean()])


def test_each_thumbnail_is_centred_on_its_nucleus(slide, levels_read):
    thumbs = nucleus_thumbnails(slide, DISCS[:3])

    assert thumbs.shape == (3, 48, 48, 3) and thumbs.dtype == np.uint8
    assert set(levels_read) == {0} and len(levels_read) == 3  # one read each
    for thumb in thumbs:
        np.testing.assert_allclose(dark_centre(thumb), (23.5, 23.5), atol=0.3)
        # 12 um field, 3 um radius: about pi * 12**2 dark pixels, white corners
        assert abs((thumb.mean(axis=2) < 128).sum() - np.pi * 12**2) < 40
        assert thumb[:4, :4].min() == 255 and thumb[-4:, -4:].min() == 255


def test_a_coarser_thumbnail_reads_the_coarsest_fine_enough_level(slide, levels_read):
    thumbs = nucleus_thumbnails(slide, DISCS[:3], mpp=0.5)
    assert set(levels_read) == {1}
    for thumb in thumbs:
        np.testing.assert_allclose(dark_centre(thumb), (23.5, 23.5), atol=0.4)
        assert abs((thumb.mean(axis=2) < 128).sum() - np.pi * 6**2) < 20


def test_field_um_sets_the_scale_and_the_level(slide, levels_read):
    # 6 um over 48 px = 0.125 um/px: level 0 upsampled, the disc fills the middle
    thumb = nucleus_thumbnails(slide, DISCS[1:2], size=48, field_um=6.0)[0]
    assert set(levels_read) == {0}
    np.testing.assert_allclose(dark_centre(thumb), (23.5, 23.5), atol=0.3)
    assert thumb[20:28, 20:28].max() < 128 and thumb[0, 0].min() == 255

    # 48 um over 48 px = 1 um/px: level 2 (1 um/px)
    levels_read.clear()
    nucleus_thumbnails(slide, DISCS[1:2], field_um=48.0)
    assert set(levels_read) == {2}


def test_beyond_the_slide_edge_is_white_not_mirrored(slide):
    # the disc at x=3 is cut by the left edge; a mirror would show it again
    thumb = nucleus_thumbnails(slide, DISCS[3:])[0]
    left_of_the_edge = thumb[:, :20]  # x < 3 - 24 + 20 = -1 level-0 px
    assert left_of_the_edge.min() == 255
    assert (thumb[:, 22:34].mean(axis=2) < 128).sum() > 200  # the visible part


def test_slide_and_in_memory_thumbnails_agree(slide, image):
    from_slide = nucleus_thumbnails(slide, DISCS)
    from_image = thumbnails_from_image(image, DISCS, image_mpp=MPP)
    np.testing.assert_array_equal(from_slide, from_image)


def test_in_memory_thumbnails_drop_alpha_and_read_dask_arrays(image):
    import dask.array as da

    rgba = np.concatenate([image, np.zeros_like(image[..., :1])], axis=2)
    lazy = da.from_array(rgba, chunks=(128, 128, 4))
    thumbs = thumbnails_from_image(lazy, DISCS, image_mpp=MPP, mpp=0.5, size=32)
    assert thumbs.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(
        thumbs, thumbnails_from_image(image, DISCS, image_mpp=MPP, mpp=0.5, size=32)
    )
    np.testing.assert_allclose(dark_centre(thumbs[1]), (15.5, 15.5), atol=0.4)


def test_no_centroids_give_no_thumbnails(slide):
    assert nucleus_thumbnails(slide, np.empty((0, 2))).shape == (0, 48, 48, 3)


def test_a_slide_without_mpp_is_refused(tmp_path, image):
    path = write_pyramid(tmp_path / "no_mpp.tif", image, mpp=None)
    with open_slide(path) as slide, pytest.raises(SlideError, match="no pixel size"):
        nucleus_thumbnails(slide, DISCS)


@pytest.mark.parametrize(
    "centroids, match",
    [
        (np.array([[900.0, 10.0]]), r"1 centroids lie outside .* \(800x600 px\)"),
        (np.array([[np.nan, 10.0]]), "1 centroids lie outside"),
        (np.ones((2, 3)), r"shape \(2, 3\); expected \(n, 2\)"),
    ],
)
def test_bad_centroids_are_refused(slide, image, centroids, match):
    with pytest.raises(ValueError, match=match):
        nucleus_thumbnails(slide, centroids)
    with pytest.raises(ValueError, match=match):
        thumbnails_from_image(image, centroids, image_mpp=MPP)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(size=0), "size=0 must be a whole number"),
        (dict(size=4.5), "size=4.5 must be a whole number"),
        (dict(mpp=0), "mpp=0 must be a positive number of microns per pixel"),
        (dict(field_um=-2.0), "field_um=-2.0 must be a positive number of microns"),
    ],
)
def test_bad_parameters_are_refused(slide, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nucleus_thumbnails(slide, DISCS, **kwargs)


def test_bad_images_are_refused(image):
    with pytest.raises(ValueError, match=r"shape \(600, 800\); expected"):
        thumbnails_from_image(image[..., 0], DISCS, image_mpp=MPP)
    with pytest.raises(ValueError, match="image_mpp=None must be a positive"):
        thumbnails_from_image(image, DISCS, image_mpp=None)


# --- a real slide ---------------------------------------------------------------


def test_real_nuclei_are_darker_at_the_thumbnail_centre(shared_data):
    from napari_lemon.segment.classical import hematoxylin_density, segment_classical

    path = shared_data / "wsi" / "CMU-1-Small-Region_pyramid_DERIVED.tiff"
    if not path.exists():
        pytest.skip(f"{path.name} not in the shared data")
    with open_slide(path) as slide:
        # nuclei of one tile, in level-0 px
        origin = np.array([800, 1200])
        tile = slide.read_region(tuple(origin), 0, (400, 400))
        nuclei = segment_classical(tile, mpp=slide.mpp)
        assert len(nuclei) > 20
        centroids = nuclei.centroids_xy + origin

        thumbs = nucleus_thumbnails(slide, centroids)  # 0.499 um/px slide: upsampled

    # hematoxylin in the middle 2 um against the ring at 5-6 um from the centre
    assert thumbs.shape == (len(centroids), 48, 48, 3)
    rows, cols = np.mgrid[:48, :48]
    radius_um = np.hypot(rows - 23.5, cols - 23.5) * 0.25
    density = np.stack([hematoxylin_density(t) for t in thumbs])
    centre = density[:, radius_um < 1].mean(axis=1)
    ring = density[:, (radius_um > 5) & (radius_um < 6)].mean(axis=1)
    assert np.mean(centre > ring) > 0.9
