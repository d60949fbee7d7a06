"""Augmentation policies: shapes, value range and no black corners."""

from __future__ import annotations

import pytest
import torch

from lemon_training.augment.policies import TwoViews, create_policy


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


@pytest.mark.parametrize("name", ["a1", "a1+gray"])
def test_policy_makes_two_different_normalised_views(name):
    torch.manual_seed(0)
    crops = torch.randint(0, 256, (8, 60, 60, 3), dtype=torch.uint8)
    views = TwoViews(create_policy(name), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

    v1, v2 = views(crops)

    assert v1.shape == v2.shape == (8, 3, 40, 40)
    assert v1.min() >= -2.0 - 1e-5 and v1.max() <= 2.0 + 1e-5
    assert not torch.allclose(v1, v2)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="augmentation='a9'"):
        create_policy("a9")
