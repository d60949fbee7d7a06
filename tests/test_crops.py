"""Fixed-physical-size crops: scale, centring, borders and errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lemon.crops import crop_grid, crop_nuclei


def disc_image(rows, cols, centre_xy, radius_px, value=(40, 20, 90)):
    image = np.full((rows, cols, 3), 230, np.uint8)
    rr, cc = np.ogrid[:rows, :cols]
    inside = (cc - centre_xy[0]) ** 2 + (rr - centre_xy[1]) ** 2 <= radius_px**2
    image[inside] = value
    return image


def dark_fraction(crop):
    return (crop[..., 0] < 128).mean()


def test_crop_grid_is_symmetric_about_the_centre():
    offsets = crop_grid(40, 0.5)

    np.testing.assert_allclose(offsets, -offsets[::-1])
    assert offsets[1] - offsets[0] == pytest.approx(0.5)


def test_same_disc_at_two_scales_gives_the_same_crop():
    # a disc of radius 3 um drawn at 0.25 and at 0.5 um/px
    fine = disc_image(200, 200, (100, 100), 12)
    coarse = disc_image(100, 100, (50, 50), 6)

    crop_fine = crop_nuclei(fine, [[100, 100]], image_mpp=0.25)[0]
    crop_coarse = crop_nuclei(coarse, [[50, 50]], image_mpp=0.5)[0]

    # the disc covers pi * 12^2 / 40^2 = 28% of a 10 um crop at both scales
    assert dark_fraction(crop_fine) == pytest.approx(np.pi * 144 / 1600, abs=0.02)
    assert dark_fraction(crop_coarse) == pytest.approx(np.pi * 144 / 1600, abs=0.03)


def test_crop_is_centred_on_the_centroid():
    image = disc_image(120, 120, (70.0, 40.0), 6)

    crop = crop_nuclei(image, [[70.0, 40.0]], image_mpp=0.25, size=40)[0]

    dark_rows, dark_cols = np.nonzero(crop[..., 0] < 128)
    assert dark_rows.mean() == pytest.approx(19.5, abs=0.3)
    assert dark_cols.mean() == pytest.approx(19.5, abs=0.3)


def test_downsampling_smooths_instead_of_aliasing():
    # pixel noise at 0.125 um/px is averaged, not picked, at 0.25 um/px
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (200, 200, 3)).astype(np.uint8)

    crop = crop_nuclei(noise, [[100, 100]], image_mpp=0.125)[0]

    assert crop.std() < 0.7 * noise.std()
    assert crop.mean() == pytest.approx(noise.mean(), abs=5)


def test_crop_at_the_border_mirrors_the_image():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :10] = 200  # a bright band on the left edge

    # centred on the edge of the first pixel, so that the mirror line is the crop's
    crop = crop_nuclei(image, [[-0.5, 50.0]], image_mpp=0.25)[0]

    # both halves see the band: the left half is the right half's mirror image
    assert crop[:, 10:20].mean() > 150 and crop[:, 20:30].mean() > 150
    assert np.array_equal(crop[:, :20], crop[:, 20:][:, ::-1])


def test_many_crops_are_batched_in_order():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    centres = rng.uniform(20, 280, size=(5000, 2))

    crops = crop_nuclei(image, centres, image_mpp=0.25)

    assert crops.shape == (5000, 40, 40, 3) and crops.dtype == np.uint8
    x, y = np.rint(centres[4321]).astype(int)
    single = crop_nuclei(image, [[x, y]], image_mpp=0.25)[0]
    again = crop_nuclei(image, [centres[4321]], image_mpp=0.25)[0]
    np.testing.assert_array_equal(crops[4321], again)
    assert single.shape == (40, 40, 3)


def test_no_centroids_give_no_crops():
    crops = crop_nuclei(np.zeros((10, 10, 3), np.uint8), np.empty((0, 2)), 0.25)

    assert crops.shape == (0, 40, 40, 3)


def test_centroid_outside_the_image_is_refused():
    with pytest.raises(ValueError, match="outside the 50x40 image"):
        crop_nuclei(np.zeros((40, 50, 3), np.uint8), [[75.0, 10.0]], 0.25)


@pytest.mark.parametrize("mpp", [0, -0.5, None])
def test_bad_mpp_is_refused(mpp):
    with pytest.raises(ValueError, match="image_mpp="):
        crop_nuclei(np.zeros((40, 40, 3), np.uint8), [[20.0, 20.0]], mpp)


def test_grayscale_image_is_refused():
    with pytest.raises(ValueError, match=r"expected \(rows, cols, 3\)"):
        crop_nuclei(np.zeros((40, 40), np.uint8), [[20.0, 20.0]], 0.25)
