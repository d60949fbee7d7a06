"""U-Net segmenter: network, weights files, tiled inference, watershed, bad input.

Most tests use a tiny randomly initialised network; the bundled weights are
used where the answer depends on a trained model (a blank image has no nuclei).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from skimage.draw import disk

from napari_lemon.segment import create_segmenter, segment_nuclei
from napari_lemon.segment.unet import (
    UNetParams,
    maps_to_labels,
    predict_maps,
    segment_unet,
)
from napari_lemon.segment.unet_model import (
    WEIGHTS_DIR,
    UNetCard,
    create_unet,
    load_unet,
    save_unet,
)

TINY = UNetCard(name="tiny-test", widths=(4, 8))
HAS_BUNDLED = (WEIGHTS_DIR / "segmenter_unet.safetensors").is_file()


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny random U-Net saved as safetensors + card."""
    import torch

    torch.manual_seed(0)
    model = create_unet(TINY)
    return save_unet(model, TINY, tmp_path_factory.mktemp("unet") / "tiny")


@pytest.fixture()
def tiny(tiny_weights):
    return UNetParams(weights=str(tiny_weights), device="cpu", tile_px=64)


def he_field(side: int = 96, seed: int = 0) -> np.ndarray:
    """Pink background with a few purple discs, uint8 RGB."""
    rng = np.random.default_rng(seed)
    image = np.empty((side, side, 3))
    image[:] = (235, 160, 205)
    for row, col in rng.integers(10, side - 10, (6, 2)):
        image[disk((row, col), 5, shape=image.shape[:2])] = (85, 45, 125)
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# --- network and weights ------------------------------------------------------------


def test_network_maps_rgb_to_two_maps_of_the_same_size():
    import torch

    model = create_unet(TINY).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 48))
    assert out.shape == (2, 2, 32, 48)


def test_bundled_size_network_is_small():
    n = sum(p.numel() for p in create_unet(UNetCard()).parameters())
    assert n * 2 < 5e6  # under 5 MB in fp16


def test_weights_round_trip_in_fp16(tiny_weights):
    import torch

    model, card = load_unet(tiny_weights)
    assert card.widths == (4, 8) and card.name == "tiny-test"
    assert tiny_weights.with_suffix(".json").is_file()
    torch.manual_seed(0)
    original = create_unet(TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(model(x), original(x), atol=2e-2)


def test_missing_weights_and_card_are_explained(tmp_path, tiny_weights):
    with pytest.raises(FileNotFoundError, match=r"weights=.*nothing.safetensors"):
        load_unet(tmp_path / "nothing.safetensors")
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(tiny_weights.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"lone.json not found beside"):
        load_unet(lone)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("tile_px", 100, r"tile_px=100 must be a multiple of 16"),
        ("overlap_px", 40, r"overlap_px=40 must be a multiple of 16 in 0..496"),
        ("overlap_px", 512, r"overlap_px=512 must be a multiple of 16 in 0..496"),
        ("marker_height", 1.0, r"marker_height=1.0 must be in \(0, 1\)"),
        ("batch_size", 0, r"batch_size=0 must be at least 1"),
        ("min_area_um2", 500.0, r"min_area_um2=500.0 and max_area_um2=400.0"),
    ],
)
def test_bad_parameters_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        UNetParams(**{field: value})


# --- tiled inference and instances ------------------------------------------------


def test_tiles_stitch_into_the_whole_image_prediction(tiny_weights):
    model, card = load_unet(tiny_weights)
    image = he_field(150).astype(np.float32) / 255
    whole = predict_maps(model, card, image, UNetParams(tile_px=256, overlap_px=32))
    tiled = predict_maps(model, card, image, UNetParams(tile_px=64, overlap_px=32))
    assert whole[0].shape == tiled[0].shape == (150, 150)
    np.testing.assert_allclose(tiled[0], whole[0], atol=1e-5)
    np.testing.assert_allclose(tiled[1], whole[1], atol=1e-5)


@pytest.mark.parametrize("length", [1, 15, 16, 150, 480, 481, 1500, 4099])
def test_tiles_share_each_axis_evenly(length):
    from napari_lemon.segment.unet import _even_stride

    stride = _even_stride(length, 480)
    steps = -(-length // stride)
    assert stride % 16 == 0 and stride <= 480
    assert steps == -(-length // 480)  # no more tiles than the largest allow
    assert steps * stride - length < 16 * steps  # overshoot under 16 px a tile


def test_watershed_splits_touching_nuclei_at_their_distance_peaks():
    foreground = np.zeros((40, 60), np.float32)
    distance = np.zeros_like(foreground)
    for col in (20, 33):  # two discs of radius 8 whose edges overlap
        rows, cols = disk((20, col), 8)
        foreground[rows, cols] = 1
        d = 1 - np.hypot(rows - 20, cols - col) / 8
        distance[rows, cols] = np.maximum(distance[rows, cols], d)
    foreground[2:5, 50:54] = 1  # a small blob with no marker: still a nucleus
    labels = maps_to_labels(foreground, distance, UNetParams(min_area_um2=1), 0.5)
    assert labels.max() == 3
    assert labels[20, 20] != labels[20, 33] and labels[3, 52] > 0
    too_small = maps_to_labels(foreground, distance, UNetParams(min_area_um2=4), 0.5)
    assert too_small.max() == 2  # the 12-pixel blob is 3 um2


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_output_follows_the_nuclei_contract_at_20x_and_40x(tiny, mpp):
    image = he_field(128)
    nuclei = segment_unet(image, mpp, tiny)
    assert nuclei.labels.shape == (128, 128) and nuclei.labels.dtype == np.int32
    np.testing.assert_array_equal(np.unique(nuclei.labels)[1:], nuclei.label_ids)
    counts = np.bincount(nuclei.labels.ravel())[nuclei.label_ids]
    np.testing.assert_allclose(nuclei.area_um2, counts * mpp**2)
    assert len(nuclei.outlines) == len(nuclei)


def test_registry_builds_the_unet_segmenter(tiny_weights):
    segment = create_segmenter("unet", weights=str(tiny_weights), device="cpu")
    assert segment(he_field(64), 0.5).labels.shape == (64, 64)
    with pytest.raises(ValueError, match="segmenter 'unet'.*marker_threshold"):
        create_segmenter("unet", marker_threshold=0.3)


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (17, 3)])
def test_images_smaller_than_a_tile(tiny, shape):
    image = np.full(shape + (3,), 200, np.uint8)
    assert segment_unet(image, 0.5, tiny).labels.shape == shape


def test_rgba_and_grey_inputs(tiny):
    image = he_field(64)
    rgb = segment_unet(image, 0.5, tiny).labels
    rgba = np.dstack([image, np.full((64, 64), 255, np.uint8)])
    np.testing.assert_array_equal(segment_unet(rgba, 0.5, tiny).labels, rgb)
    grey = image.mean(axis=2).astype(np.uint8)
    with pytest.warns(UserWarning, match="grey image"):
        assert segment_unet(grey, 0.5, tiny).labels.shape == (64, 64)


def test_16_bit_tiff_gives_the_8_bit_result(tiny, tmp_path):
    import tifffile

    from napari_lemon.slide import open_slide

    image = he_field(64)
    image[0, 0] = 255  # the slide reader scales 16-bit files by their peak value
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, image.astype(np.uint16) * 257, photometric="rgb")
    with pytest.warns(UserWarning, match="uint16"), open_slide(path, 0.5) as slide:
        read = slide.read_region((0, 0), 0, slide.dimensions)
    np.testing.assert_array_equal(read, image)
    deep = segment_unet(image.astype(np.uint16) * 257, 0.5, tiny).labels
    np.testing.assert_array_equal(deep, segment_unet(image, 0.5, tiny).labels)


@pytest.mark.parametrize(("mpp", "match"), [(2.0, "much coarser"), (0.05, "check")])
def test_a_scale_far_from_the_trained_one_warns(tiny, mpp, match):
    with pytest.warns(UserWarning, match=match):
        segment_unet(he_field(48), mpp, tiny)


def test_usual_scales_do_not_warn(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segment_unet(he_field(48), 0.25, tiny)
        segment_unet(he_field(48), 0.5, tiny)


@pytest.mark.parametrize(
    ("image", "mpp", "match"),
    [
        (np.zeros((8, 8, 3), np.float64), 0.5, "dtype float64; expected uint8"),
        (np.zeros((8, 8, 5), np.uint8), 0.5, r"shape \(8, 8, 5\)"),
        (np.zeros((8, 8, 3), np.uint8), 0.0, r"mpp=0.0 must be a positive"),
    ],
)
def test_bad_images_are_refused(tiny, image, mpp, match):
    with pytest.raises(ValueError, match=match):
        segment_unet(image, mpp, tiny)


@pytest.mark.skipif(not HAS_BUNDLED, reason="bundled U-Net weights not built")
@pytest.mark.parametrize("colour", [(255, 255, 255), (235, 160, 205)])
def test_bundled_model_finds_nothing_without_nuclei(colour):
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(colour, 4, (200, 200, 3)), 0, 255).astype(np.uint8)
    nuclei = segment_nuclei(image, 0.5, segmenter="unet", device="cpu")
    assert len(nuclei) == 0 and not nuclei.labels.any()
    assert nuclei.centroids_xy.shape == (0, 2)


@pytest.mark.skipif(not HAS_BUNDLED, reason="bundled U-Net weights not built")
def test_bundled_model_finds_drawn_nuclei():
    image = he_field(128)
    nuclei = segment_nuclei(image, 0.5, segmenter="unet", device="cpu")
    assert 3 <= len(nuclei) <= 8


# --- training pieces ----------------------------------------------------------------


def test_distance_target_peaks_at_one_inside_each_touching_nucleus():
    from napari_lemon.segment.train_unet import distance_target

    instances = np.zeros((20, 30), np.int32)
    instances[5:15, 5:15] = 1
    instances[5:15, 15:25] = 2  # touches the first
    target = distance_target(instances)
    assert target.dtype == np.float32 and target[instances == 0].max() == 0
    for label in (1, 2):
        assert target[instances == label].max() == pytest.approx(1.0)
    assert target[10, 14] == 0 and target[10, 15] == 0  # the shared edge


def test_only_convex_and_small_mask_components_count_as_single_nuclei():
    from napari_lemon.segment.train_unet import single_nuclei

    mask = np.zeros((100, 100), bool)
    mask[disk((10, 80), 8)] = True  # one nucleus: 12 um2, convex
    for centre in ((40, 22), (40, 37), (26, 22)):  # three merged in an L
        mask[disk(centre, 8)] = True
    mask[disk((71, 71), 28)] = True  # 154 um2: larger than one nucleus
    singles = single_nuclei(mask, mpp=0.25)
    assert singles[10, 80] > 0
    assert singles[40, 22] == 0 and singles[71, 71] == 0


def write_training_folder(root, side: int = 96) -> None:
    """A MoNuSeg-like train folder: one tile with outlines, one with a mask."""
    import tifffile
    from PIL import Image

    folder = root / "monuseg" / "train"
    for sub in ("images", "annotations", "binary_masks"):
        (folder / sub).mkdir(parents=True)
    image = he_field(side)
    tifffile.imwrite(folder / "images" / "outlined.tif", image)
    tifffile.imwrite(folder / "images" / "masked.tif", image)
    vertices = "".join(
        f'<Vertex X="{20 + 6 * np.cos(a)}" Y="{30 + 6 * np.sin(a)}"/>'
        for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)
    )
    (folder / "annotations" / "outlined.xml").write_text(
        '<Annotations MicronsPerPixel="0.25"><Annotation><Regions><Region>'
        f"<Vertices>{vertices}</Vertices></Region></Regions></Annotation>"
        "</Annotations>"
    )
    mask = (image[..., 1] < 100).astype(np.uint8)
    Image.fromarray(mask).save(folder / "binary_masks" / "masked.png")


def test_crops_keep_targets_on_their_nuclei(tmp_path):
    from napari_lemon.segment.train_unet import load_tiles, random_crop

    write_training_folder(tmp_path)
    masked, outlined = load_tiles(tmp_path / "monuseg" / "train")  # by name
    assert outlined.distance_weight.all() and outlined.instances.max() == 1
    rng = np.random.default_rng(0)
    for tile in (outlined, masked):
        image, foreground, distance, fg_weight, dist_weight = random_crop(
            tile, 32, 0.5, rng
        )
        assert image.shape == (32, 32, 3) and foreground.shape == (32, 32)
        assert set(np.unique(fg_weight)) <= {0.0, 1.0}
        assert (distance <= foreground).all()  # distance only inside nuclei
        assert (dist_weight <= fg_weight).all()


def test_a_short_training_run_writes_weights_and_card(tmp_path):
    import json

    from napari_lemon.segment.train_unet import TrainConfig, train

    write_training_folder(tmp_path)
    config = TrainConfig(minutes=0.01, crop_px=32, batch_size=2, widths=(4, 8))
    path = train(tmp_path, tmp_path / "run", config)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["training"]["steps"] >= 1 and card["training"]["tiles"] == 2
    assert card["training"]["crop_px"] == 32 and card["widths"] == [4, 8]
    _, loaded = load_unet(path)
    assert loaded.mean == tuple(card["mean"])


def test_training_continues_from_the_weights_of_a_run(tmp_path):
    import json

    from safetensors.torch import load_file

    from napari_lemon.segment.train_unet import TrainConfig, train

    write_training_folder(tmp_path)
    config = TrainConfig(minutes=0.01, crop_px=32, batch_size=2, widths=(4, 8))
    first = train(tmp_path, tmp_path / "first", config)
    config.init = first
    second = train(tmp_path, tmp_path / "second", config)

    # the same trainable layout (batch norms unfolded), and the history kept
    assert load_file(second).keys() == load_file(first).keys()
    card = json.loads(second.with_suffix(".json").read_text())
    assert card["training"]["continued_from"]["steps"] >= 1
    assert load_unet(second)[1].widths == (4, 8)


def test_training_from_missing_weights_is_refused(tmp_path):
    from napari_lemon.segment.train_unet import TrainConfig, train

    write_training_folder(tmp_path)
    config = TrainConfig(minutes=0.01, init=tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match=r"init=.*nothing.safetensors"):
        train(tmp_path, tmp_path / "run", config)
