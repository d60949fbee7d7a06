"""Stain augmentations: Macenko estimate and jitter, RandStainNA mixture statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lemon_training.augment.stain import (
    REFERENCE_STAINS,
    GmmStainAugment,
    MacenkoAugment,
    StainStatistics,
    from_optical_density,
    lab_statistics,
    macenko_stains,
    optical_density,
)

# haematoxylin (Ruifrok and Johnston) and eosin (Macenko's reference) directions
H = torch.nn.functional.normalize(torch.tensor([0.65, 0.70, 0.29]), dim=0)
E = torch.nn.functional.normalize(torch.tensor([0.2159, 0.8012, 0.5581]), dim=0)


def two_stain_image(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 60x60 image mixed from H and E with known concentrations.

    Returns the image (1, 3, 60, 60) in 0-1 and the concentrations (2, 60, 60):
    pure haematoxylin on the left, pure eosin on the right, both in the middle,
    a background strip at the top.
    """
    g = torch.Generator().manual_seed(seed)
    conc = torch.zeros(2, 60, 60)
    conc[0, :, :25] = torch.rand(60, 25, generator=g) * 1.2 + 0.3
    conc[1, :, 35:] = torch.rand(60, 25, generator=g) * 0.8 + 0.4
    conc[:, :, 25:35] = torch.rand(2, 60, 10, generator=g) * 0.8 + 0.2
    conc[:, :5] = 0.0
    od = H[:, None, None] * conc[0] + E[:, None, None] * conc[1]
    return from_optical_density(od)[None], conc


def synthetic_crops(colour, n: int, seed: int) -> np.ndarray:
    """``n`` textured uint8 crops (n, 60, 60, 3) around an RGB colour (0-255)."""
    rng = np.random.default_rng(seed)
    shift = rng.normal(0, 6, (n, 1, 1, 3))
    texture = rng.normal(0, 20, (n, 60, 60, 1))
    return np.clip(np.asarray(colour) + shift + texture, 0, 255).astype(np.uint8)


def test_optical_density_round_trips():
    x = torch.rand(2, 3, 8, 8)

    assert torch.allclose(from_optical_density(optical_density(x)), x, atol=1e-5)


def test_macenko_finds_the_stains_of_a_two_stain_image():
    x, _ = two_stain_image()

    stains = macenko_stains(x)[0]

    assert stains[:, 0] @ H > 0.999  # haematoxylin first
    assert stains[:, 1] @ E > 0.999


def test_macenko_falls_back_to_reference_stains_on_a_blank_crop():
    blank = torch.ones(2, 3, 60, 60)

    assert torch.equal(macenko_stains(blank), REFERENCE_STAINS.expand(2, 3, 2))


def test_unperturbed_macenko_reconstructs_the_crop():
    synthetic, _ = two_stain_image()
    torch.manual_seed(0)
    noise = torch.rand(4, 3, 60, 60)
    x = torch.cat([synthetic, noise])

    out = MacenkoAugment(sigma=0.0, bias=0.0)(x)

    assert torch.allclose(out, x, atol=1e-5)


def test_macenko_rescales_each_stain_concentration_by_one_factor():
    x, conc = two_stain_image()
    torch.manual_seed(3)

    out = MacenkoAugment(sigma=0.3, bias=0.0, stride=1)(x)

    # unmix the result with the known stains: each stain scaled by one alpha
    od = optical_density(out)[0].flatten(1)
    new = torch.linalg.lstsq(torch.stack([H, E], 1), od).solution
    for stain in range(2):
        tissue = conc[stain].flatten() > 0.3
        ratio = new[stain, tissue] / conc[stain].flatten()[tissue]
        assert 0.7 <= ratio.median() <= 1.3
        assert abs(ratio.median() - 1.0) > 1e-3  # it did change
        assert ratio.std() < 0.02


def test_macenko_output_is_a_valid_image_that_differs_from_the_source():
    torch.manual_seed(0)
    x = two_stain_image()[0].expand(8, -1, -1, -1)

    out = MacenkoAugment()(x)

    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(out, x, atol=1e-3)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # per-crop draws


def test_macenko_refuses_an_out_of_range_sigma():
    with pytest.raises(ValueError, match="sigma=2.0 must lie in 0-1"):
        MacenkoAugment(sigma=2.0)


def test_lab_statistics_of_a_flat_crop():
    from kornia.color import rgb_to_lab

    grey = torch.full((1, 3, 10, 10), 0.5)

    stats = lab_statistics(rgb_to_lab(grey))

    assert stats.shape == (1, 6)
    assert torch.allclose(stats[0, 3:], torch.zeros(3), atol=1e-4)
    assert 50 < stats[0, 0] < 56 and abs(stats[0, 1]) < 0.1  # L of 50% grey, a ~ 0


def test_statistics_round_trip_through_json():
    stats = StainStatistics.fit(synthetic_crops((200, 120, 180), 40, 0), 3, seed=1)

    restored = StainStatistics.from_dict(json.loads(json.dumps(stats.to_dict())))

    assert restored.n_components == 3 and restored.n_crops == 40 and restored.seed == 1
    for key in ("weights", "means", "covariances", "std_floor"):
        assert np.array_equal(getattr(restored, key), getattr(stats, key))


def test_round_tripped_statistics_augment_identically():
    stats = StainStatistics.fit(synthetic_crops((200, 120, 180), 40, 0), 2, seed=0)
    restored = StainStatistics.from_dict(json.loads(json.dumps(stats.to_dict())))
    x = torch.rand(4, 3, 60, 60)

    torch.manual_seed(5)
    first = GmmStainAugment(stats)(x)
    torch.manual_seed(5)
    second = GmmStainAugment(restored)(x)

    assert torch.equal(first, second)


def test_gmm_moves_crops_to_the_sampled_stain_statistics():
    from kornia.color import rgb_to_lab

    pink = synthetic_crops((215, 140, 190), 60, seed=0)
    blue = synthetic_crops((90, 80, 170), 8, seed=1)
    augment = GmmStainAugment(StainStatistics.fit(pink, 1, seed=0))
    x = torch.from_numpy(blue).permute(0, 3, 1, 2).float() / 255

    # the forward pass draws the same targets as sample() under the same seed
    torch.manual_seed(0)
    targets = augment.sample(8)
    torch.manual_seed(0)
    out = augment(x)

    before, after = lab_statistics(rgb_to_lab(x)), lab_statistics(rgb_to_lab(out))
    assert (before - targets).abs()[:, :3].max() > 20  # far at first
    assert (after - targets).abs().max() < 1.5  # at the drawn statistics after
    assert not torch.allclose(targets[0], targets[1])  # each crop its own draw


def test_gmm_samples_respect_the_std_floor():
    stats = StainStatistics.fit(synthetic_crops((200, 120, 180), 30, 0), 1, seed=0)
    torch.manual_seed(0)

    draws = GmmStainAugment(stats).sample(2000)

    floor = torch.as_tensor(stats.std_floor).float()
    assert draws.shape == (2000, 6) and (draws[:, 3:] >= floor).all()


def test_fitting_on_an_empty_sample_is_refused():
    empty = np.zeros((0, 60, 60, 3), np.uint8)

    with pytest.raises(ValueError, match="holds 0 crops"):
        StainStatistics.fit(empty, 1)


def test_fitting_fewer_crops_than_components_is_refused():
    with pytest.raises(ValueError, match="10-component mixture needs at least 10"):
        StainStatistics.fit(synthetic_crops((200, 120, 180), 5, 0), 10)


def test_fitting_float_crops_is_refused():
    with pytest.raises(ValueError, match=r"expected \(n, rows, cols, 3\) uint8"):
        StainStatistics.fit(np.zeros((4, 60, 60, 3), np.float32), 1)


def test_fitting_zero_components_is_refused():
    with pytest.raises(ValueError, match="n_components=0 must be a positive integer"):
        StainStatistics.fit(synthetic_crops((200, 120, 180), 5, 0), 0)


def test_statistics_from_a_foreign_dict_are_refused():
    with pytest.raises(ValueError, match="lack keys"):
        StainStatistics.from_dict({"means": [[0.0] * 6]})


def test_statistics_with_wrong_shapes_are_refused():
    data = StainStatistics.fit(synthetic_crops((200, 120, 180), 10, 0), 1).to_dict()
    data["means"] = [[0.0] * 5]

    with pytest.raises(ValueError, match="expected"):
        StainStatistics.from_dict(data)
