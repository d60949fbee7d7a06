"""Augmentation policies and their example grid."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from lemon_training.augment.grid import (
    CELL,
    GAP,
    HEADER,
    LABEL_WIDTH,
    add_augment_grid_arguments,
    read_crops,
    render_policy_grid,
    run_augment_grid,
)
from lemon_training.augment.policies import (
    POLICIES,
    TwoViews,
    create_policy,
    create_view_policies,
    fit_policy_statistics,
    needs_statistics,
)
from lemon_training.augment.stain import StainStatistics


def textured_crops(n: int, seed: int = 0, size: int = 60) -> np.ndarray:
    """Pink-purple crops with texture, uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 130, 190]) + rng.normal(0, 8, (n, 1, 1, 3))
    texture = rng.normal(0, 25, (n, size, size, 1))
    return np.clip(base + texture, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def statistics() -> dict[str, StainStatistics]:
    crops = textured_crops(40)
    return {name: fit_policy_statistics(name, crops) for name in POLICIES}


def batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    crops = torch.from_numpy(textured_crops(n, seed))
    return crops.permute(0, 3, 1, 2).float() / 255


def test_rotation_crop_leaves_no_black_corners():
    import kornia.augmentation as K

    torch.manual_seed(0)
    flat = torch.full((16, 3, 60, 60), 0.6)
    rotate_crop = K.AugmentationSequential(
        K.RandomRotation(degrees=180.0, p=1.0), K.CenterCrop(40)
    )

    out = rotate_crop(flat)

    assert out.shape == (16, 3, 40, 40)
    assert torch.allclose(out, torch.full_like(out, 0.6), atol=1e-4)


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_maps_60px_crops_to_40px_views_in_range(name, statistics):
    policy = create_policy(name, stain_statistics=statistics[name])
    torch.manual_seed(0)

    out = policy(batch())

    assert out.shape == (8, 3, 40, 40)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_is_deterministic_under_a_seed(name, statistics):
    policy = create_policy(name, stain_statistics=statistics[name])
    x = batch(4)

    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(policy(x))

    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("name", ["a0", "a1", "a1+macenko"])
def test_small_local_crops_follow_out_size_and_crop_scale(name):
    policy = create_policy(name, out_size=16, crop_scale=(0.05, 0.4))
    torch.manual_seed(0)

    out = policy(batch(4))

    assert out.shape == (4, 3, 16, 16)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", ["a1", "a1+gray"])
def test_policy_makes_two_different_normalised_views(name):
    torch.manual_seed(0)
    crops = torch.randint(0, 256, (8, 60, 60, 3), dtype=torch.uint8)
    views = TwoViews(create_policy(name), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    v1, v2 = views(crops)

    assert v1.shape == v2.shape == (8, 3, 40, 40)
    assert v1.min() >= -2.0 - 1e-5 and v1.max() <= 2.0 + 1e-5
    assert not torch.allclose(v1, v2)


def test_a0_view_policies_follow_mocov3():
    import kornia.augmentation as K

    first, second = create_view_policies("a0")

    def probability(policy, kind):
        return [op.p for op in policy.ops.children() if isinstance(op, kind)]

    assert probability(first, K.RandomGaussianBlur) == [1.0]
    assert probability(second, K.RandomGaussianBlur) == [0.1]
    assert probability(first, K.RandomSolarize) == []
    assert probability(second, K.RandomSolarize) == [0.2]


def test_two_views_can_use_a_policy_per_view():
    first, second = create_view_policies("a0")
    views = TwoViews(first, (0.5,) * 3, (0.25,) * 3, policy2=second)
    crops = torch.from_numpy(textured_crops(4))
    torch.manual_seed(0)

    v1, v2 = views(crops)

    assert v1.shape == v2.shape == (4, 3, 40, 40)


def test_solarize_at_threshold_zero_inverts_above_one_half():
    import kornia.augmentation as K

    x = torch.tensor([0.4, 0.7]).view(1, 1, 1, 2).expand(1, 3, 1, 2)

    out = K.RandomSolarize(thresholds=0.0, additions=0.0, p=1.0)(x)

    assert torch.allclose(out[0, 0, 0], torch.tensor([0.4, 0.3]))


def test_grayscale_policy_makes_more_grey_views():
    def grey_fraction(name):
        torch.manual_seed(0)
        out = create_policy(name)(batch(64))
        return (out.std(dim=1).amax(dim=(1, 2)) < 1e-4).float().mean()

    assert grey_fraction("a1+gray") > grey_fraction("a1") + 0.15


def test_needs_statistics_only_for_gmm_policies():
    assert [needs_statistics(n) for n in POLICIES] == [
        False, False, False, True, True, False,
    ]  # fmt: skip


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="augmentation='a9'"):
        create_policy("a9")


def test_unknown_policy_lists_close_matches():
    with pytest.raises(ValueError, match="did you mean 'a1\\+gmm1'"):
        needs_statistics("a1+gmm")


def test_gmm_policy_without_statistics_is_refused():
    with pytest.raises(ValueError, match="'a1\\+gmm10' needs stain statistics"):
        create_policy("a1+gmm10")


def test_gmm_policy_with_the_wrong_mixture_is_refused(statistics):
    with pytest.raises(ValueError, match="needs a 10-component mixture but"):
        create_policy("a1+gmm10", stain_statistics=statistics["a1+gmm1"])


def test_statistics_for_a_policy_without_stain_step_warn(statistics):
    with pytest.warns(UserWarning, match="stain_statistics is ignored"):
        create_policy("a1", stain_statistics=statistics["a1+gmm1"])


def test_bad_out_size_is_refused():
    with pytest.raises(ValueError, match="out_size=0 must be"):
        create_policy("a1", out_size=0)


def test_bad_crop_scale_is_refused():
    with pytest.raises(ValueError, match=r"crop_scale=\(0.5, 0.2\) must be"):
        create_policy("a1", crop_scale=(0.5, 0.2))


def test_too_small_input_for_rotation_is_refused():
    with pytest.raises(ValueError, match="h, w >= 57"):
        create_policy("a1")(torch.rand(2, 3, 40, 40))


# ------------------------------------------------------------------------ grid
def test_grid_has_one_row_per_policy_and_the_original_first(tmp_path):
    crops = textured_crops(12)

    path = render_policy_grid(crops, ["a1", "a1+gmm1"], 3, tmp_path / "g.png", 0)

    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (HEADER + 2 * (CELL + GAP), LABEL_WIDTH + 4 * (CELL + GAP), 3)
    # the first column is the first crop, enlarged with nearest-neighbour sampling
    cell = image[HEADER : HEADER + CELL, LABEL_WIDTH : LABEL_WIDTH + CELL]
    assert np.array_equal(cell[:: CELL // 60, :: CELL // 60], crops[0])


def test_grid_refuses_a_misspelt_policy(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'a1\\+gray'"):
        render_policy_grid(textured_crops(2), ["a1+grey"], 2, tmp_path / "g.png")


def test_grid_refuses_crops_of_the_wrong_size(tmp_path):
    with pytest.raises(ValueError, match=r"expected \(n, 60, 60, 3\)"):
        render_policy_grid(textured_crops(2, size=40), ["a1"], 2, tmp_path / "g.png")


def test_grid_refuses_an_empty_policy_list(tmp_path):
    with pytest.raises(ValueError, match="policies=\\[\\] is empty"):
        render_policy_grid(textured_crops(2), [], 2, tmp_path / "g.png")


def test_grid_refuses_more_crops_than_given(tmp_path):
    with pytest.raises(ValueError, match="n_crops=3 and n_examples=2"):
        render_policy_grid(textured_crops(2), ["a1"], 2, tmp_path / "g.png", n_crops=3)


def _write_image(tmp_path):
    from skimage import io

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    path = tmp_path / "tile.png"
    io.imsave(path, image, check_contrast=False)
    return path


def test_crops_from_an_image_file_and_centres_csv(tmp_path):
    image = _write_image(tmp_path)
    csv = tmp_path / "centres.csv"
    csv.write_text("image,x,y\ntile.png,50,60\ntile.png,120,100\nother.png,5,5\n")

    crops = read_crops([image], n=10, centres_csv=csv, mpp=0.25)

    assert crops.shape == (2, 60, 60, 3) and crops.dtype == np.uint8


def test_crops_from_a_dataset_folder(tmp_path):
    from lemon_training.data.dataset import save_dataset

    folder = save_dataset(tmp_path / "dataset", textured_crops(30))

    crops = read_crops([folder], n=8, seed=1)

    assert crops.shape == (8, 60, 60, 3)


def test_image_without_centres_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no nucleus centres for 'tile.png'"):
        read_crops([_write_image(tmp_path)], n=4, mpp=0.25)


def test_image_without_pixel_size_is_refused(tmp_path):
    csv = tmp_path / "centres.csv"
    csv.write_text("x,y\n50,60\n")

    with pytest.raises(ValueError, match="pass --mpp"):
        read_crops([_write_image(tmp_path)], n=4, centres_csv=csv)


def test_centres_csv_without_x_and_y_is_refused(tmp_path):
    csv = tmp_path / "centres.csv"
    csv.write_text("col,row\n50,60\n")

    with pytest.raises(ValueError, match="expected x and y"):
        read_crops([_write_image(tmp_path)], n=4, centres_csv=csv, mpp=0.25)


def test_missing_data_path_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_crops([tmp_path / "nothing"], n=4)


def test_augment_grid_command_on_a_real_monuseg_tile(shared_data, tmp_path):
    tile = shared_data / "monuseg/train/images/TCGA-21-5784-01Z-00-DX1.tif"
    parser = argparse.ArgumentParser()
    add_augment_grid_arguments(parser)
    out = tmp_path / "grid.png"
    args = parser.parse_args(
        ["--data", str(tile), "--policies", "a1,a1+macenko", "--out", str(out)]
        + ["--sample", "50", "--examples", "3"]
    )

    path = run_augment_grid(args)

    assert path == out and 10_000 < out.stat().st_size < 500_000
