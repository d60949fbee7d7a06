"""The analysis pipeline on synthetic H&E-like slides with nuclei at known places."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_lemon import pipeline
from napari_lemon.pipeline import (
    AnalysisResult,
    analysis_steps,
    analyze,
    resolve_region,
)
from napari_lemon.points import embed_points
from napari_lemon.segment import DEFAULT_SEGMENTER, PARAMS
from napari_lemon.slide import SlideError, open_slide
from napari_lemon.store import outlines_of

MPP = 0.25  # level 0, as a 40x scan; level 1 is 0.5 um/px
WIDTH, HEIGHT = 840, 720
SPACING, FIRST = 120, 100  # disc centres at FIRST + SPACING * i, level-0 px
BACKGROUND = (236, 196, 220)  # eosin-pink
NUCLEUS = (78, 42, 136)  # haematoxylin-purple


def disc_centres() -> np.ndarray:
    """Level-0 ``(x, y)`` of every synthetic nucleus, ndarray (n, 2)."""
    xs = np.arange(FIRST, WIDTH - 60, SPACING)
    ys = np.arange(FIRST, HEIGHT - 60, SPACING)
    return np.array([(x, y) for y in ys for x in xs], dtype=np.float64)


def make_he_image(seed: int = 0) -> np.ndarray:
    """Pink background with purple discs of radius 3 or 5 um, light noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((HEIGHT, WIDTH, 3), np.float32)
    image[:] = BACKGROUND
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    for i, (x, y) in enumerate(disc_centres()):
        radius_px = (3.0 if i % 2 else 5.0) / MPP
        image[(cols - x) ** 2 + (rows - y) ** 2 <= radius_px**2] = NUCLEUS
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_two_level_tiff(path, image, mpp=MPP):
    """A tiled pyramid: level 0 and a 2x2-averaged level 1, mpp in the tags."""
    rows, cols = (s // 2 * 2 for s in image.shape[:2])
    half = image[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2, 3).mean((1, 3))
    options = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    tags = {}
    if mpp:
        tags = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, **tags, **options)
        tiff.write(np.rint(half).astype(np.uint8), subfiletype=1, **options)
    return path


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "synthetic.tif"
    return write_two_level_tiff(path, make_he_image())


@pytest.fixture(scope="module")
def encoder(random_encoder_path):
    from napari_lemon.checkpoint import load_encoder

    return load_encoder(random_encoder_path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def whole(slide_path, encoder) -> AnalysisResult:
    with open_slide(slide_path) as slide:
        return analyze(slide, encoder=encoder, n_clusters=3)


def nearest_distances(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(found[:, None] - truth[None], axis=2).min(axis=1)


def test_whole_slide_finds_every_nucleus_at_its_level0_place(whole):
    truth = disc_centres()
    adata = whole.adata
    assert adata.n_obs == len(truth)
    assert nearest_distances(adata.obsm["spatial"], truth).max() < 1.0
    assert whole.region == (0, 0, WIDTH, HEIGHT)


def test_result_shapes_scale_and_areas(whole):
    adata = whole.adata
    assert adata.obsm["X_lemon"].shape == (len(disc_centres()), 384)
    assert np.isfinite(adata.obsm["X_lemon"]).all()
    # segmented on level 1 (0.5 um/px), the native level nearest 0.5
    assert whole.seg_mpp == pytest.approx(0.5)
    assert whole.image.shape == (HEIGHT // 2, WIDTH // 2, 3)
    assert whole.labels.shape == whole.image.shape[:2]
    # discs of radius 3 and 5 um, matched to the nearest true centre
    truth = disc_centres()
    found = adata.obsm["spatial"]
    nearest = np.linalg.norm(found[:, None] - truth[None], axis=2).argmin(axis=1)
    expected = np.pi * np.where(nearest % 2, 3.0, 5.0) ** 2
    np.testing.assert_allclose(adata.obs["area_um2"], expected, rtol=0.4)


def test_clusters_and_provenance_are_recorded(whole, random_encoder_path):
    adata = whole.adata
    assert adata.obs["cluster"].dtype == "category"
    assert set(adata.obs["cluster"].astype(int)) <= {0, 1, 2}
    lemon = adata.uns["lemon"]
    assert lemon["source"]["name"] == "synthetic.tif"
    assert lemon["encoder"]["name"] == "random-test"
    assert lemon["region"] == [0, 0, WIDTH, HEIGHT]
    assert lemon["seg_mpp"] == pytest.approx(0.5)
    assert (adata.obs["segmenter"] == DEFAULT_SEGMENTER).all()
    # every parameter of the segmenter, defaults included
    params = lemon["segmenter"]["params"]
    assert params == PARAMS[DEFAULT_SEGMENTER]().as_dict()


def test_outlines_are_in_level0_pixels_around_each_nucleus(whole):
    adata = whole.adata
    for (x, y), outline, area in zip(
        adata.obsm["spatial"], outlines_of(adata), adata.obs["area_um2"], strict=True
    ):
        radius_px = np.sqrt(area / np.pi) / MPP
        distances = np.hypot(outline[:, 0] - x, outline[:, 1] - y)
        assert len(outline) >= 3
        assert np.abs(distances - radius_px).max() < 3.0


def test_region_offset_gives_level0_coordinates(slide_path, encoder):
    region = (160, 160, 360, 240)  # holds the discs at x 220..460, y 220..340
    with open_slide(slide_path) as slide:
        result = analyze(slide, region, encoder=encoder, n_clusters=2)
    truth = disc_centres()
    inside = (truth[:, 0] > 160) & (truth[:, 0] < 520)
    inside &= (truth[:, 1] > 160) & (truth[:, 1] < 400)
    assert result.adata.n_obs == inside.sum() == 6
    assert nearest_distances(result.adata.obsm["spatial"], truth[inside]).max() < 1.0
    assert result.image.shape == (120, 180, 3)


def test_resampled_segmentation_maps_back_to_level0(slide_path, encoder):
    # 0.4 um/px is no pyramid level: the region is resampled
    region = (40, 40, 480, 384)  # whole pixels at 0.4 um/px
    with open_slide(slide_path) as slide:
        result = analyze(slide, region, encoder=encoder, n_clusters=2, seg_mpp=0.4)
    truth = disc_centres()
    assert result.seg_mpp == pytest.approx(0.4)
    assert result.adata.n_obs == 12
    assert nearest_distances(result.adata.obsm["spatial"], truth).max() < 1.0


def test_region_without_nuclei_gives_an_empty_result(slide_path, encoder):
    with open_slide(slide_path) as slide:
        result = analyze(slide, (130, 130, 60, 60), encoder=encoder)
    adata = result.adata
    assert adata.n_obs == 0
    assert adata.obsm["X_lemon"].shape == (0, 384)
    assert adata.obsm["spatial"].shape == (0, 2)
    assert len(adata.obs["cluster"].cat.categories) == 0
    assert result.labels.shape == (30, 30) and result.labels.max() == 0


def test_steps_report_each_stage_and_stop_when_closed(slide_path, encoder):
    with open_slide(slide_path) as slide:
        steps = analysis_steps(slide, (0, 0, 400, 400), encoder=encoder, batch_size=4)
        seen = []
        for stage, done, total in steps:
            seen.append((stage, done, total))
            if stage == "embed" and done == 4:
                steps.close()
    stages = [s for s, _, _ in seen]
    assert stages[:3] == ["read", "read", "segment"]
    assert "crop" in stages and "cluster" not in stages
    assert seen[-1] == ("embed", 4, 9)


def test_progress_callback_sees_every_batch(slide_path, encoder):
    calls = []
    with open_slide(slide_path) as slide:
        analyze(
            slide,
            (0, 0, 400, 400),
            encoder=encoder,
            batch_size=4,
            progress=lambda *step: calls.append(step),
        )
    embeds = [done for stage, done, _ in calls if stage == "embed"]
    assert embeds == [0, 4, 8, 9]
    assert calls[-1] == ("cluster", 1, 1)


def test_partly_outside_region_is_clipped_with_a_warning(slide_path):
    with open_slide(slide_path) as slide:
        with pytest.warns(UserWarning, match=r"clipped to \(800, 0, 40, 100\)"):
            assert resolve_region(slide, (800, -50, 100, 150)) == (800, 0, 40, 100)


@pytest.mark.parametrize(
    "region, message",
    [
        ((900, 0, 100, 100), r"entirely outside the 840x720 slide 'synthetic.tif'"),
        ((-500, 0, 100, 100), r"entirely outside"),
        ((0, 0, 0, 100), r"width or height <= 0.*840x720"),
        ((0, 0, 10), r"must be 4 numbers"),
    ],
)
def test_bad_regions_are_refused(slide_path, region, message):
    with open_slide(slide_path) as slide:
        with pytest.raises(ValueError, match=message):
            resolve_region(slide, region)


def test_too_large_region_asks_for_a_smaller_one(slide_path, encoder, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_SEG_PIXELS", 1000)
    with open_slide(slide_path) as slide:
        with pytest.raises(ValueError, match=r"more than the 0 Mpx.*--region"):
            analyze(slide, encoder=encoder)


def test_slide_without_mpp_asks_for_it(tmp_path, encoder):
    path = write_two_level_tiff(tmp_path / "nompp.tif", make_he_image(), mpp=None)
    with open_slide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(SlideError, match="--mpp"):
            analyze(slide, encoder=encoder)
    with open_slide(path, mpp=MPP) as slide:
        result = analyze(slide, (160, 160, 360, 240), encoder=encoder, n_clusters=3)
        assert result.adata.n_obs == 6


def test_bad_n_clusters_and_batch_size_are_refused(slide_path, encoder):
    with open_slide(slide_path) as slide:
        with pytest.raises(ValueError, match="n_clusters=0"):
            analyze(slide, encoder=encoder, n_clusters=0)
        with pytest.raises(ValueError, match="batch_size=0"):
            analyze(slide, encoder=encoder, batch_size=0)


def test_embed_points_keeps_extra_columns(slide_path, encoder):
    points = disc_centres()[:5]
    extra = pd.DataFrame({"cell_type": list("abcab"), "score": np.arange(5.0)})
    with open_slide(slide_path) as slide:
        adata = embed_points(slide, points, encoder=encoder, extra_obs=extra)
    assert adata.obsm["X_lemon"].shape == (5, 384)
    np.testing.assert_array_equal(adata.obsm["spatial"], points)
    assert adata.obs["cell_type"].tolist() == list("abcab")
    assert (adata.obs["segmenter"] == "points").all()
    assert all(len(o) == 0 for o in outlines_of(adata))


def test_embed_points_matches_the_pipeline_embeddings(whole, slide_path, encoder):
    xy = whole.adata.obsm["spatial"][:3]
    with open_slide(slide_path) as slide:
        adata = embed_points(slide, xy, encoder=encoder)
    np.testing.assert_allclose(
        adata.obsm["X_lemon"], whole.adata.obsm["X_lemon"][:3], atol=1e-4
    )


def test_embed_points_refuses_points_outside_the_slide(slide_path, encoder):
    with open_slide(slide_path) as slide:
        with pytest.raises(ValueError, match=r"1 of 2 points lie outside the 840x720"):
            embed_points(slide, [[10, 10], [900, 10]], encoder=encoder)
        with pytest.raises(ValueError, match=r"expected \(n, 2\)"):
            embed_points(slide, [1, 2, 3], encoder=encoder)


def test_embed_points_refuses_clashing_or_misaligned_extra_columns(slide_path, encoder):
    with open_slide(slide_path) as slide:
        clash = pd.DataFrame({"x": [1.0]})
        with pytest.raises(ValueError, match=r"columns \['x'\] clash"):
            embed_points(slide, [[10, 10]], encoder=encoder, extra_obs=clash)
        short = pd.DataFrame({"a": [1, 2]})
        with pytest.raises(ValueError, match="2 rows for 1 points"):
            embed_points(slide, [[10, 10]], encoder=encoder, extra_obs=short)


def test_coarse_segmentation_warns_once(slide_path, encoder):
    with open_slide(slide_path) as slide:
        with pytest.warns(UserWarning) as caught:
            analyze(slide, (0, 0, 120, 120), encoder=encoder, seg_mpp=1.2)
    coarse = [str(w.message) for w in caught if "coarse" in str(w.message)]
    assert len(coarse) == 1 and "at 1.2 um/px: nuclei are barely" in coarse[0]
