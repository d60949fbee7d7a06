"""Augmentation policies for nucleus crops, batched on the training device (kornia).

Input is a batch of 60x60 crops at the encoder's mpp as a float tensor in 0-1,
shape (b, 3, 60, 60); output is (b, 3, 40, 40). Because every op works on the
whole batch, the policy runs on the GPU when training does, and the data loader
only moves uint8 crops.

Policies (LEMON paper, appendix):

- ``a1``: rotation 0-360 deg of the 60x60 crop, then its central 40x40 (which a
  rotated 60x60 square always covers: 40 * sqrt(2) < 60, so no black corners);
  random resized crop 0.32-1; flips; colour jitter (0.6, 0.7, 0.5, 0.2) p=0.8;
  grayscale p=0.2; random erasing scale 0.1-0.3 ratio 0.8-1.2 p=0.3; Gaussian
  blur sigma 0.1-2.
- ``a1+gray``: ``a1`` with grayscale at p=0.5.

# NOTE: our reading of "+gray" is a higher grayscale probability, which pushes
# the encoder towards shape and texture over stain colour.
"""

from __future__ import annotations

import torch
from torch import nn

OUT_SIZE = 40


def _a1(gray_p: float, out_size: int = OUT_SIZE) -> nn.Module:
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomRotation(degrees=180.0, p=1.0),
        K.CenterCrop(out_size),
        K.RandomResizedCrop((out_size, out_size), scale=(0.32, 1.0)),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.ColorJitter(0.6, 0.7, 0.5, 0.2, p=0.8),
        K.RandomGrayscale(p=gray_p),
        K.RandomGaussianBlur(5, (0.1, 2.0), p=0.5),
        K.RandomErasing(scale=(0.1, 0.3), ratio=(0.8, 1.2), p=0.3),
    )


POLICIES = {
    "a1": lambda: _a1(gray_p=0.2),
    "a1+gray": lambda: _a1(gray_p=0.5),
}


def create_policy(name: str) -> nn.Module:
    """Build the augmentation policy ``name`` (a module mapping batches to views)."""
    if name not in POLICIES:
        raise ValueError(
            f"augmentation={name!r} is not known; choose one of {sorted(POLICIES)}"
        )
    return POLICIES[name]()


class TwoViews(nn.Module):
    """Two independent augmentations of each crop, normalised for the encoder.

    Parameters
    ----------
    policy : nn.Module
        From :func:`create_policy`.
    mean, std : sequence of 3 floats
        The encoder card's normalisation.
    """

    def __init__(self, policy: nn.Module, mean, std):
        super().__init__()
        self.policy = policy
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # uint8 (b, h, w, 3) -> float (b, 3, h, w) in 0-1
        x = crops.permute(0, 3, 1, 2).float().div_(255.0)
        v1 = (self.policy(x).clamp_(0, 1) - self.mean) / self.std
        v2 = (self.policy(x).clamp_(0, 1) - self.mean) / self.std
        return v1, v2
