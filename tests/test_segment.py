"""Nucleus segmentation: synthetic discs of known size, blank images, real tiles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from skimage.color import rgb2hed
from skimage.draw import disk, polygon

from napari_lemon.segment import (
    SEGMENTERS,
    ClassicalParams,
    Nuclei,
    create_segmenter,
    segment_classical,
    segment_nuclei,
)
from napari_lemon.segment.classical import hematoxylin_density
from napari_lemon.segment.imagescope import rasterise, read_imagescope_xml
from napari_lemon.segment.nuclei import nuclei_from_labels, star_outlines

PINK, PURPLE = (235, 160, 205), (85, 45, 125)
FIELD_UM = 100.0
# (x_um, y_um, radius_um): six separate nuclei and a touching pair
NUCLEI_UM = [(15, 15, 3.0), (45, 15, 3.5), (75, 15, 4.0), (15, 45, 3.0), (45, 45, 4.5),
             (75, 45, 3.5), (40, 80, 3.5), (46.5, 80, 3.5)]  # fmt: skip
TOO_SMALL_UM = (85, 85, 1.2)  # 4.5 um2, below min_area_um2
TOO_LARGE_UM = (15, 78, 13.0)  # 531 um2, above max_area_um2


def draw_field(mpp: float, seed: int = 0) -> np.ndarray:
    """Pink tissue with dark purple discs, drawn at ``mpp`` microns per pixel."""
    side = round(FIELD_UM / mpp)
    rng = np.random.default_rng(seed)
    image = np.empty((side, side, 3), np.float64)
    image[:] = PINK
    for x, y, r in NUCLEI_UM + [TOO_SMALL_UM, TOO_LARGE_UM]:
        # pixel centres within r of the disc centre, both in pixel units
        rows, cols = disk(
            (y / mpp - 0.5, x / mpp - 0.5), r / mpp, shape=image.shape[:2]
        )
        image[rows, cols] = PURPLE
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def expected_centres_px(mpp: float) -> np.ndarray:
    return np.array([(x / mpp - 0.5, y / mpp - 0.5) for x, y, _ in NUCLEI_UM])


def pair_up(found_xy: np.ndarray, expected_xy: np.ndarray) -> np.ndarray:
    """Index of the found centroid nearest to each expected one."""
    distances = np.linalg.norm(found_xy[None, :] - expected_xy[:, None], axis=2)
    return distances.argmin(axis=1)


# --- synthetic discs ------------------------------------------------------------


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_discs_are_found_split_and_filtered(mpp):
    nuclei = segment_classical(draw_field(mpp), mpp)
    expected = expected_centres_px(mpp)

    assert len(nuclei) == len(NUCLEI_UM)
    nearest = pair_up(nuclei.centroids_xy, expected)
    assert len(set(nearest)) == len(NUCLEI_UM)  # the touching pair is two nuclei
    offsets = np.linalg.norm(nuclei.centroids_xy[nearest] - expected, axis=1)
    assert offsets[:6].max() < 1.0  # separate discs: within one pixel
    assert offsets[6:].max() < 0.6 / mpp  # the split pair: within 0.6 um


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_disc_areas_are_right_in_square_microns(mpp):
    """Equivalent radii within 0.4 um of the drawn ones (the smoothed edge of a
    perfectly sharp disc is cut a little outside it)."""
    nuclei = segment_classical(draw_field(mpp), mpp)
    nearest = pair_up(nuclei.centroids_xy, expected_centres_px(mpp))
    radius_um = np.sqrt(nuclei.area_um2[nearest] / np.pi)
    true_radius = np.array([r for _, _, r in NUCLEI_UM])
    np.testing.assert_allclose(radius_um[:6], true_radius[:6], atol=0.4)
    # the touching pair: split into halves of about equal size, together about
    # two discs (they overlap by under 1 um2), with the same edge allowance
    left, right = nuclei.area_um2[nearest][6:]
    assert 0.95 * 2 * np.pi * 3.5**2 < left + right < 2 * np.pi * 3.9**2
    assert abs(left - right) < 0.15 * (left + right) / 2


def test_same_physical_field_at_two_scales_gives_the_same_nuclei():
    fine = segment_classical(draw_field(0.25), 0.25)
    coarse = segment_classical(draw_field(0.5), 0.5)
    assert len(fine) == len(coarse) == len(NUCLEI_UM)
    order_fine = pair_up(fine.centroids_xy * 0.25, expected_centres_px(0.25) * 0.25)
    order_coarse = pair_up(coarse.centroids_xy * 0.5, expected_centres_px(0.5) * 0.5)
    np.testing.assert_allclose(
        fine.area_um2[order_fine], coarse.area_um2[order_coarse], rtol=0.12
    )


def test_result_is_consistent_with_its_labels():
    mpp = 0.25
    nuclei = segment_classical(draw_field(mpp), mpp)
    assert nuclei.labels.shape == (400, 400) and nuclei.labels.dtype == np.int32
    assert nuclei.label_ids.dtype == np.int32
    np.testing.assert_array_equal(np.unique(nuclei.labels)[1:], nuclei.label_ids)
    for label, (x, y) in zip(nuclei.label_ids, nuclei.centroids_xy, strict=True):
        assert nuclei.labels[round(y), round(x)] == label
    counts = np.bincount(nuclei.labels.ravel())[nuclei.label_ids]
    np.testing.assert_allclose(nuclei.area_um2, counts * mpp**2)


def test_outlines_enclose_their_nuclei():
    mpp = 0.25
    nuclei = segment_classical(draw_field(mpp), mpp)
    assert len(nuclei.outlines) == len(nuclei)
    for outline, area in zip(nuclei.outlines, nuclei.area_um2, strict=True):
        assert outline.ndim == 2 and outline.shape[1] == 2 and len(outline) >= 3
        x, y = outline[:, 0], outline[:, 1]
        shoelace = abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2
        assert shoelace * mpp**2 == pytest.approx(area, rel=0.2)


@pytest.mark.parametrize(
    "colour", [(255, 255, 255), PINK, (250, 200, 225)], ids=["white", "pink", "pale"]
)
def test_no_tissue_or_no_hematoxylin_gives_no_nuclei(colour):
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(colour, 4, (300, 300, 3)), 0, 255).astype(np.uint8)
    nuclei = segment_classical(image, 0.5)
    assert len(nuclei) == 0
    assert nuclei.labels.shape == (300, 300) and not nuclei.labels.any()
    assert nuclei.centroids_xy.shape == (0, 2) and nuclei.outlines == []


def test_rgba_input_gives_the_rgb_result():
    image = draw_field(0.5)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(
        segment_classical(rgba, 0.5).labels, segment_classical(image, 0.5).labels
    )


def test_hematoxylin_lookup_matches_rgb2hed():
    image = np.random.default_rng(2).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        hematoxylin_density(image), np.maximum(rgb2hed(image)[..., 0], 0), atol=1e-5
    )


# --- measurements from labels ---------------------------------------------------


def test_nuclei_from_labels_measures_centroids_and_areas():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:9] = 4  # 4 x 6 block: centre (x, y) = (5.5, 3.5)
    labels[10:19, 20:23] = 9  # 9 x 3 block: centre (21, 14)
    nuclei = nuclei_from_labels(labels, mpp=0.5)
    np.testing.assert_array_equal(nuclei.label_ids, [4, 9])
    np.testing.assert_allclose(nuclei.centroids_xy, [[5.5, 3.5], [21.0, 14.0]])
    np.testing.assert_allclose(nuclei.area_um2, [24 * 0.25, 27 * 0.25])


def test_star_outline_of_a_disc_follows_its_edge():
    labels = np.zeros((60, 60), np.int32)
    labels[disk((30, 25), 12)] = 1
    (outline,) = star_outlines(labels, np.array([1]), np.array([[25.0, 30.0]]))
    radii = np.hypot(outline[:, 0] - 25, outline[:, 1] - 30)
    assert outline.shape == (32, 2)
    np.testing.assert_allclose(radii, 12.5, atol=0.8)


def test_star_outline_scales_to_the_output_grid():
    labels = np.zeros((40, 40), np.int32)
    labels[disk((20, 20), 8)] = 1
    (fine,) = star_outlines(labels, np.array([1]), np.array([[20.0, 20.0]]), scale=2)
    np.testing.assert_allclose(fine.mean(axis=0), [40.5, 40.5], atol=0.3)


def test_crescent_whose_centroid_lies_outside_gets_a_traced_outline():
    labels = np.zeros((50, 50), np.int32)
    labels[disk((25, 25), 15)] = 1
    labels[disk((25, 30), 14)] = 0  # bite out the middle: a thin crescent
    nuclei = nuclei_from_labels(labels, 0.5)
    (x, y) = nuclei.centroids_xy[0]
    assert labels[round(y), round(x)] == 0
    outline = nuclei.outlines[0]
    rows, cols = polygon(outline[:, 1], outline[:, 0], labels.shape)
    assert (labels[rows, cols] == 1).mean() > 0.9


def test_empty_nuclei():
    empty = Nuclei.empty((7, 9, 3))
    assert len(empty) == 0 and empty.labels.shape == (7, 9)
    assert empty.centroids_xy.shape == (0, 2) and empty.area_um2.shape == (0,)
    assert len(nuclei_from_labels(np.zeros((5, 5), int), 0.5)) == 0


# --- registry and errors --------------------------------------------------------


def test_registry_and_segment_nuclei():
    assert "classical" in SEGMENTERS
    image = draw_field(0.5)
    segment = create_segmenter("classical", min_area_um2=58.0)
    assert (
        len(segment(image, 0.5)) == 1
    )  # only the 4.5 um disc (64 um2) is left; the next is 50 um2
    assert len(segment_nuclei(image, 0.5)) == len(NUCLEI_UM)


def test_unknown_segmenter_lists_the_choices():
    with pytest.raises(
        ValueError, match=r"segmenter='watershed' is unknown.*classical"
    ):
        create_segmenter("watershed")


def test_unknown_parameter_is_refused():
    with pytest.raises(ValueError, match="min_size"):
        create_segmenter("classical", min_size=3)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("threshold_method", "magic", r"threshold_method='magic' is not one of"),
        ("working_mpp", 0.0, r"working_mpp=0.0 must be positive"),
        ("min_area_um2", 500.0, r"min_area_um2=500.0 and max_area_um2=400.0"),
    ],
)
def test_bad_parameters_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        ClassicalParams(**{field: value})


@pytest.mark.parametrize("mpp", [0, -0.25, float("nan"), None])
def test_nonpositive_mpp_is_refused(mpp):
    with pytest.raises(ValueError, match=r"mpp=.* must be a positive number"):
        segment_classical(draw_field(0.5), mpp)


@pytest.mark.parametrize("name", ["classical", "unet"])
@pytest.mark.parametrize("mpp", [0.01, 5.0])
def test_an_implausible_mpp_is_refused_before_any_resampling(name, mpp):
    # a wrong --mpp would blow a tile up 10x per axis, or shrink nuclei to dots
    with pytest.raises(ValueError, match=r"outside 0.05-2 um/px.*check the pixel"):
        segment_nuclei(draw_field(0.5), mpp, segmenter=name)


def test_grey_image_is_refused():
    with pytest.raises(ValueError, match=r"shape \(20, 20\).*needs an RGB"):
        segment_classical(np.zeros((20, 20), np.uint8), 0.5)


def test_float_image_is_refused():
    with pytest.raises(ValueError, match="dtype float64.*uint8"):
        segment_classical(np.zeros((20, 20, 3)), 0.5)


# --- real data ------------------------------------------------------------------


def test_monuseg_test_tile_gives_hundreds_of_mostly_true_nuclei(shared_data):
    from napari_lemon.slide import open_slide

    folder = shared_data / "monuseg" / "test"
    name = "TCGA-2Z-A9J9-01A-01-TS1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truth = read_imagescope_xml(folder / "annotations" / f"{name}.xml")
    image = open_slide(folder / "images" / f"{name}.tif").read_region(
        (0, 0), 0, (1000, 1000)
    )
    nuclei = segment_classical(image, truth.mpp)

    # a plausible count, and most centroids inside a drawn nucleus
    assert 0.6 * len(truth.polygons) < len(nuclei) < 1.5 * len(truth.polygons)
    inside = np.zeros((1000, 1000), bool)
    for points in truth.polygons:
        inside[polygon(points[:, 1], points[:, 0], inside.shape)] = True
    x, y = np.rint(nuclei.centroids_xy).astype(int).T
    assert inside[y.clip(0, 999), x.clip(0, 999)].mean() > 0.7


def test_rasterise_numbers_outlines_and_draws_later_ones_on_top():
    square = np.array([[0, 0], [9, 0], [9, 9], [0, 9]], float)  # (x, y) vertices
    labels = rasterise([square, square + (5, 0)], (12, 20))
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1, 2}
    assert labels[4, 2] == 1 and labels[4, 7] == 2  # the overlap is the later one
    assert labels[4, 16] == 0 and labels[11, 2] == 0
