"""Handcrafted nucleus features: segmentation in the crop, shape, colour, texture."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lemon.handcrafted import (
    COLOUR_FEATURES,
    FEATURE_NAMES,
    colour_features,
    nucleus_features,
    segment_crops,
    texture_features,
)

BACKGROUND = (235, 205, 225)
NUCLEUS = (80, 50, 140)


def disc(radius_px: float, centre_rc=(20.0, 20.0), size: int = 40) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows + 0.5 - centre_rc[0]) ** 2 + (cols + 0.5 - centre_rc[1]) ** 2 <= (
        radius_px**2
    )


def paint(masks: list[np.ndarray], colour=NUCLEUS, seed: int = 0) -> np.ndarray:
    """Crops of a noisy pink background with ``colour`` where each mask is set."""
    rng = np.random.default_rng(seed)
    crops = np.empty((len(masks), 40, 40, 3), dtype=np.float64)
    crops[:] = BACKGROUND
    for crop, mask in zip(crops, masks, strict=True):
        crop[mask] = colour
    crops += rng.normal(0, 3, crops.shape)
    return np.clip(np.rint(crops), 0, 255).astype(np.uint8)


def test_features_have_one_named_column_each():
    table = nucleus_features(paint([disc(8)]))

    assert list(table.columns) == list(FEATURE_NAMES)
    assert table.shape == (1, len(FEATURE_NAMES)) and table.dtypes.iloc[0] == "float32"


def test_area_and_diameter_of_a_given_mask_are_in_microns():
    mask = disc(8)
    table = nucleus_features(paint([mask, mask]), masks=np.stack([mask, mask]))

    assert table.area_um2[0] == pytest.approx(mask.sum() * 0.25**2)
    assert table.equivalent_diameter_um[0] == pytest.approx(4.0, rel=0.03)
    assert table.circularity[0] == pytest.approx(1.0, abs=0.12)
    assert table.eccentricity[0] < 0.2
    # the same pixels at 0.5 um/px cover four times the area
    coarse = nucleus_features(paint([mask]), masks=mask[None], mpp=0.5)
    assert coarse.area_um2[0] == pytest.approx(4 * table.area_um2[0])


def test_segmentation_keeps_the_central_nucleus_not_its_neighbour():
    # the neighbour is the larger one: size must not decide
    central, neighbour = disc(4.5), disc(6, centre_rc=(7.0, 32.0))
    masks = segment_crops(paint([central | neighbour]))

    assert masks[0, 20, 20] and not masks[0, 7, 32]
    overlap = (masks[0] & central).sum() / (masks[0] | central).sum()
    assert overlap > 0.85


def test_segmentation_takes_the_nearest_nucleus_when_the_centre_is_empty():
    off_centre = disc(4, centre_rc=(10.0, 10.0))
    far = disc(6, centre_rc=(33.0, 33.0))  # larger, but farther from the centre
    masks = segment_crops(paint([off_centre | far]))

    assert masks[0, 10, 10] and not masks[0, 33, 33]


def test_features_separate_small_from_large_nuclei():
    rng = np.random.default_rng(1)
    radii = np.r_[rng.uniform(4, 6, 10), rng.uniform(10, 13, 10)]
    table = nucleus_features(paint([disc(r) for r in radii], seed=2))

    small, large = table.area_um2[:10], table.area_um2[10:]
    assert small.max() < large.min()
    np.testing.assert_allclose(table.area_um2, np.pi * (radii * 0.25) ** 2, rtol=0.2)


def test_colour_inside_and_around_the_nucleus():
    mask = disc(8)
    crops = paint([mask])
    measured = colour_features(crops, mask[None])[0]
    values = dict(zip(COLOUR_FEATURES, measured, strict=True))

    assert values["r_mean_nucleus"] == pytest.approx(NUCLEUS[0] / 255, abs=0.01)
    assert values["r_mean_ring"] == pytest.approx(BACKGROUND[0] / 255, abs=0.01)
    assert values["h_mean_nucleus"] > 3 * values["h_mean_ring"]  # hematoxylin-dark
    assert values["g_std_nucleus"] == pytest.approx(3 / 255, rel=0.3)  # the noise


def test_texture_contrast_is_higher_for_a_grainy_nucleus():
    mask = disc(10)
    flat = paint([mask])
    grainy = flat.copy()
    checker = (np.indices((40, 40)).sum(axis=0) % 2).astype(bool) & mask
    grainy[0][checker] = (20, 10, 60)

    flat_tex = texture_features(flat, mask[None])[0]
    grainy_tex = texture_features(grainy, mask[None])[0]

    assert grainy_tex[0] > 10 * flat_tex[0]  # glcm_contrast_nucleus
    assert grainy_tex[1] < flat_tex[1]  # homogeneity


def test_a_blank_crop_gets_a_central_disc_and_a_warning():
    blank = np.full((1, 40, 40, 3), 230, dtype=np.uint8)

    with pytest.warns(UserWarning, match="no nucleus found in 1 of 1 crops"):
        table = nucleus_features(blank)
    assert table.area_um2[0] == pytest.approx(np.pi * 2.0**2, rel=0.15)


@pytest.mark.parametrize(
    ("crops", "masks", "mpp", "message"),
    [
        (np.zeros((2, 40, 40), np.uint8), None, 0.25, "expected uint8 of shape"),
        (np.zeros((2, 40, 40, 3), np.float32), None, 0.25, "dtype float32"),
        (np.zeros((2, 40, 40, 3), np.uint8), np.zeros((2, 30, 30)), 0.25, "masks"),
        (np.zeros((2, 40, 40, 3), np.uint8), None, 0, "mpp=0 must be positive"),
    ],
)
def test_bad_inputs_are_refused(crops, masks, mpp, message):
    with pytest.raises(ValueError, match=message):
        nucleus_features(crops, masks, mpp)


@pytest.mark.realdata
def test_crc_nuclei_have_plausible_areas(shared_data):
    import pandas as pd
    from skimage import io

    from napari_lemon.crops import crop_nuclei

    points = pd.read_csv(shared_data / "crc" / "nuclei.csv")
    points = points[points.image == "img1"]
    image = io.imread(shared_data / "crc" / "images" / "img1.png")[..., :3]
    crops = crop_nuclei(image, points[["x", "y"]].to_numpy(), image_mpp=0.5)

    table = nucleus_features(crops)

    # colorectal nuclei: a few tens of square microns, darker than their ring
    assert 10 < table.area_um2.median() < 60
    assert (table.h_mean_nucleus > table.h_mean_ring).mean() > 0.9
