"""Augmentation policies for nucleus crops, batched on the training device (kornia).

Input is a batch of 60x60 crops at the encoder's mpp as a float tensor in 0-1,
shape (b, 3, 60, 60); output is (b, 3, out_size, out_size) in 0-1 (40 by
default). Every op works on the whole batch, so a policy runs on the GPU when
training does and the data loader only moves uint8 crops.

Policies (LEMON paper, appendix), by name (:data:`POLICIES`):

- ``a0``, the MoCo v3 default: random resized crop 0.08-1 of the whole 60x60 crop;
  horizontal flip; colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8; grayscale p=0.2;
  Gaussian blur sigma 0.1-2 p=0.5; solarize p=0.1.
- ``a1``: rotation 0-360 deg of the 60x60 crop, then its central 40x40 (which a
  rotated 60x60 square always covers: 40 * sqrt(2) < 60, so no black corners);
  random resized crop 0.32-1; horizontal and vertical flips; colour jitter
  (0.6, 0.7, 0.5, 0.2) p=0.8; grayscale p=0.2; Gaussian blur sigma 0.1-2 p=0.5;
  random erasing scale 0.1-0.3 ratio 0.8-1.2 p=0.3.
- ``a1+gray``: ``a1`` with grayscale at p=0.5.
- ``a1+gmm1``, ``a1+gmm10``: RandStainNA stain augmentation with a 1- or
  10-component Gaussian mixture over per-crop LAB statistics fitted on the
  training crops (:class:`~.stain.StainStatistics`), then ``a1``.
- ``a1+macenko``: Macenko stain augmentation (each stain's concentration times
  U(0.8, 1.2) plus U(-0.05, 0.05) optical density), then ``a1``.

# NOTE: our reading of "+gray" is a higher grayscale probability, which pushes
# the encoder towards shape and texture over stain colour.
# NOTE: MoCo v3 blurs view 1 always and view 2 with p=0.1, and solarizes view 2
# with p=0.2. ``create_policy("a0")`` is one policy for both views, at the mean of
# the two (blur p=0.55 rounded to 0.5, solarize p=0.1); ``create_view_policies``
# gives the asymmetric pair.
# NOTE: the stain policies keep a1's full colour jitter after the stain step: the
# names say "a1 plus", and the stain step adds realistic stain shifts that the
# jitter's independent brightness/contrast/saturation/hue draws do not produce.
# NOTE: Gaussian blur uses a fixed kernel of about a tenth of the output side (5
# for 40x40, as in SimCLR's rule), so sigma above ~1.5 is truncated; a1 blurs
# with p=0.5, our choice where the appendix gives only sigma.
"""

from __future__ import annotations

import difflib
import math
import warnings

import torch
from torch import nn

from .stain import GmmStainAugment, MacenkoAugment, StainStatistics

OUT_SIZE = 40
INPUT_SIZE = 60
ROTATION_FIELD = 40  # central square kept after rotation: 40 * sqrt(2) < 60

POLICIES = ["a0", "a1", "a1+gray", "a1+gmm1", "a1+gmm10", "a1+macenko"]
_GMM_COMPONENTS = {"a1+gmm1": 1, "a1+gmm10": 10}
_DEFAULT_SCALE = {"a0": (0.08, 1.0)}  # every a1 variant: (0.32, 1.0)
# a0's (blur p, solarize p): one policy for both views, or MoCo v3's view 1 / 2
_A0_VIEW_PROBABILITIES = {None: (0.5, 0.1), 1: (1.0, 0.0), 2: (0.1, 0.2)}


class Policy(nn.Module):
    """A named augmentation: optional stain step, then kornia geometry and colour.

    Call it on a float batch (b, 3, h, w) in 0-1; it returns
    (b, 3, out_size, out_size) in 0-1.
    """

    def __init__(self, name: str, stain: nn.Module, ops: nn.Module, min_size: int):
        super().__init__()
        self.name, self.min_size = name, min_size
        self.stain, self.ops = stain, ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"augmentation={self.name!r} got a batch of shape {tuple(x.shape)}; "
                f"expected (b, 3, h, w) float in 0-1 with h, w >= {self.min_size} "
                f"(crops are cut at {INPUT_SIZE}x{INPUT_SIZE})"
            )
        # fp32 even inside the trainer's autocast: stain unmixing needs it
        with torch.autocast(x.device.type, enabled=False):
            return self.ops(self.stain(x.float())).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _blur_kernel(out_size: int) -> int:
    """Odd Gaussian kernel side of about a tenth of the output side, at least 3."""
    return max(3, int(0.1 * out_size) // 2 * 2 + 1)


def _a0_ops(out_size, scale, view: int | None = None) -> nn.Module:
    import kornia.augmentation as K

    blur_p, solarize_p = _A0_VIEW_PROBABILITIES[view]
    ops = [
        K.RandomResizedCrop((out_size, out_size), scale=scale),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur(_blur_kernel(out_size), (0.1, 2.0), p=blur_p),
    ]
    if solarize_p > 0:  # solarize at a fixed threshold of 0.5, as PIL's at 128
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    return K.AugmentationSequential(*ops)


def _a1_ops(out_size, scale, gray_p) -> nn.Module:
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomRotation(degrees=180.0, p=1.0),
        K.CenterCrop(ROTATION_FIELD),
        K.RandomResizedCrop((out_size, out_size), scale=scale),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.ColorJitter(0.6, 0.7, 0.5, 0.2, p=0.8),
        K.RandomGrayscale(p=gray_p),
        K.RandomGaussianBlur(_blur_kernel(out_size), (0.1, 2.0), p=0.5),
        K.RandomErasing(scale=(0.1, 0.3), ratio=(0.8, 1.2), p=0.3),
    )


def _stain_step(name: str, statistics: StainStatistics | None) -> nn.Module:
    """The stain augmentation a policy starts with (identity for most)."""
    if name == "a1+macenko":
        return MacenkoAugment(sigma=0.2, bias=0.05)
    if name not in _GMM_COMPONENTS:
        if statistics is not None:
            warnings.warn(
                f"augmentation={name!r} uses no stain statistics; "
                "stain_statistics is ignored",
                stacklevel=4,
            )
        return nn.Identity()
    return GmmStainAugment(_check_statistics(name, statistics))


def _check_statistics(name: str, statistics) -> StainStatistics:
    k = _GMM_COMPONENTS[name]
    if statistics is None:
        raise ValueError(
            f"augmentation={name!r} needs stain statistics fitted on the training "
            f"crops; pass stain_statistics=StainStatistics.fit(crops, n_components={k})"
        )
    if statistics.n_components != k:
        raise ValueError(
            f"augmentation={name!r} needs a {k}-component mixture but "
            f"stain_statistics has {statistics.n_components}; refit with "
            f"n_components={k}"
        )
    return statistics


def _check_name(name: str) -> None:
    if name not in POLICIES:
        close = difflib.get_close_matches(name, POLICIES, n=3, cutoff=0.4)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"augmentation={name!r} is not known; {hint}choose one of {POLICIES}"
        )


def _check_geometry(out_size, crop_scale) -> tuple[float, float]:
    if not isinstance(out_size, int) or not 1 <= out_size <= INPUT_SIZE:
        raise ValueError(
            f"out_size={out_size!r} must be an integer side in pixels, 1-{INPUT_SIZE}"
        )
    lo, hi = crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(
            f"crop_scale={crop_scale!r} must be (low, high) with 0 < low <= high <= 1, "
            "fractions of the crop's area, e.g. (0.05, 0.4)"
        )
    return float(lo), float(hi)


def create_policy(
    name: str,
    *,
    out_size: int = OUT_SIZE,
    crop_scale: tuple[float, float] | None = None,
    stain_statistics: StainStatistics | None = None,
) -> nn.Module:
    """Build the augmentation policy ``name``.

    Parameters
    ----------
    name : str
        One of :data:`POLICIES`.
    out_size : int
        Side of the output views in pixels (40 for the encoder; smaller for
        DINOv2's local crops).
    crop_scale : (float, float), optional
        Area fractions of the random resized crop; default (0.08, 1) for ``a0``,
        (0.32, 1) otherwise.
    stain_statistics : StainStatistics, optional
        Required by the ``gmm`` policies (see :func:`needs_statistics`).

    Returns
    -------
    nn.Module
        Maps a float batch (b, 3, 60, 60) in 0-1 to (b, 3, out_size, out_size).
    """
    return _build(name, out_size, crop_scale, stain_statistics)


def create_view_policies(
    name: str,
    *,
    out_size: int = OUT_SIZE,
    crop_scale: tuple[float, float] | None = None,
    stain_statistics: StainStatistics | None = None,
) -> tuple[nn.Module, nn.Module]:
    """The policies of view 1 and view 2 (parameters as :func:`create_policy`).

    Two independent copies of one policy, except for ``a0``, which gets MoCo v3's
    asymmetric pair: blur p=1 on view 1; blur p=0.1 and solarize p=0.2 on view 2.
    """
    args = (name, out_size, crop_scale, stain_statistics)
    return _build(*args, view=1), _build(*args, view=2)


def _build(name, out_size, crop_scale, statistics, view=None) -> Policy:
    _check_name(name)
    scale = _check_geometry(
        out_size, crop_scale or _DEFAULT_SCALE.get(name, (0.32, 1.0))
    )
    stain = _stain_step(name, statistics)
    if name == "a0":
        return Policy(name, stain, _a0_ops(out_size, scale, view), min_size=1)
    ops = _a1_ops(out_size, scale, gray_p=0.5 if name == "a1+gray" else 0.2)
    return Policy(name, stain, ops, min_size=math.ceil(ROTATION_FIELD * math.sqrt(2)))


def needs_statistics(name: str) -> bool:
    """Whether policy ``name`` needs :class:`~.stain.StainStatistics` to be built."""
    _check_name(name)
    return name in _GMM_COMPONENTS


def fit_policy_statistics(
    name: str, crops_uint8, seed: int = 0
) -> StainStatistics | None:
    """Stain statistics for policy ``name`` fitted on crops (n, h, w, 3) uint8.

    Returns None for a policy that needs none (see :func:`needs_statistics`).
    """
    if not needs_statistics(name):
        return None
    return StainStatistics.fit(crops_uint8, _GMM_COMPONENTS[name], seed)


class TwoViews(nn.Module):
    """Two independent augmentations of each crop, normalised for the encoder.

    Parameters
    ----------
    policy : nn.Module
        From :func:`create_policy`.
    mean, std : sequence of 3 floats
        The encoder card's normalisation.
    policy2 : nn.Module, optional
        A different policy for the second view (see :func:`create_view_policies`);
        default ``policy``.
    """

    def __init__(self, policy: nn.Module, mean, std, policy2: nn.Module | None = None):
        super().__init__()
        self.policy, self.policy2 = policy, policy2
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # uint8 (b, h, w, 3) -> float (b, 3, h, w) in 0-1
        x = crops.permute(0, 3, 1, 2).float().div_(255.0)
        v1 = (self.policy(x).clamp_(0, 1) - self.mean) / self.std
        second = self.policy if self.policy2 is None else self.policy2
        v2 = (second(x).clamp_(0, 1) - self.mean) / self.std
        return v1, v2
