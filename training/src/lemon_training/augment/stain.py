"""Stain augmentations of H&E crops, batched in torch: RandStainNA-style and Macenko.

Both take a float batch ``(b, 3, h, w)`` in 0-1 on any device and return one of
the same shape, so they run on the GPU when training does.

**RandStainNA with a Gaussian mixture** (Shen et al., "RandStainNA: Learning
stain-agnostic features from histology slides by bridging stain augmentation and
normalization", MICCAI 2022). Each crop is described by the mean and standard
deviation of its three CIELAB channels (6 numbers). :class:`StainStatistics` fits a
Gaussian mixture (scikit-learn, full covariances) to these vectors over the
training crops; :class:`GmmStainAugment` draws one target vector per crop from the
mixture and shifts and scales the crop's LAB channels to it (Reinhard et al. 2001).

# NOTE: LAB, not HED. LAB separates lightness from the two colour axes, so a
# per-channel shift and scale changes brightness and stain hue independently and
# stays mostly in gamut; it is the space of Reinhard's transfer that RandStainNA
# builds on. HED channels come from one fixed stain matrix (Ruifrok and Johnston),
# which fits some scanners poorly, and their third (DAB) channel is noise in H&E.

**Macenko stain augmentation** (Macenko et al., "A method for normalizing
histology slides for quantitative analysis", ISBI 2009; concentration jitter as in
Tellez et al., Medical Image Analysis 2019). :class:`MacenkoAugment` estimates each
crop's two stain vectors from its optical density, completes them to a basis with
their cross product (the residual direction), unmixes every pixel exactly,
multiplies each stain's concentration by ``alpha ~ U(1 - sigma, 1 + sigma)`` and adds
``beta ~ U(-bias, bias)``, and mixes back. The residual is kept, so with
``alpha = 1, beta = 0`` the crop comes back unchanged.

# NOTE: torchstain (MIT) has a Macenko augmentor, but for one image at a time with
# a ragged tissue mask; torch-staintools is batched but under a non-commercial
# licence and pins an older kornia. Hence this batched version: the tissue mask
# becomes per-pixel weights and the percentiles a masked sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "GmmStainAugment",
    "MacenkoAugment",
    "REFERENCE_STAINS",
    "StainStatistics",
    "FEATURES",
    "lab_statistics",
    "macenko_stains",
    "optical_density",
    "from_optical_density",
]

# Macenko's reference H&E vectors (columns: haematoxylin, eosin), unit length;
# used for a crop with too little stained tissue to estimate its own.
REFERENCE_STAINS = torch.tensor(
    [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]], dtype=torch.float32
)


def optical_density(x: torch.Tensor) -> torch.Tensor:
    """Optical density ``-log((255 x + 1) / 256)`` of a 0-1 RGB batch (same shape).

    The +1 keeps black finite; :func:`from_optical_density` inverts it exactly.
    """
    return -torch.log((x * 255.0 + 1.0) / 256.0)


def from_optical_density(od: torch.Tensor) -> torch.Tensor:
    """0-1 RGB from optical density: the inverse of :func:`optical_density`."""
    return ((256.0 * torch.exp(-od) - 1.0) / 255.0).clamp(0.0, 1.0)


def _masked_quantiles(values, mask, qs):
    """Per-row quantiles ``qs`` (0-1) of ``values`` (b, n) where ``mask``."""
    count = mask.sum(dim=1, keepdim=True)
    ordered = torch.where(mask, values, torch.inf).sort(dim=1).values
    q = torch.tensor(qs, device=values.device)[None]
    return ordered.gather(1, ((count - 1).clamp(min=0) * q).floor().long())


def _principal_plane(od, weights):
    """The two leading eigenvectors of each crop's weighted OD covariance.

    od (b, n, 3), weights (b, n) -> u, v (b, 3): u the largest, made to point to
    positive density so the tissue's angles sit around 0 in the (u, v) plane.
    """
    count = weights.sum(dim=1).clamp(min=2.0)[:, None]
    mean = (weights[..., None] * od).sum(dim=1, keepdim=True) / count[..., None]
    centred = od - mean
    cov = (
        (weights[..., None] * centred).transpose(1, 2)
        @ centred
        / (count[..., None] - 1)
    )
    vectors = torch.linalg.eigh(cov).eigenvectors  # eigenvalues ascending
    u, v = vectors[..., 2], vectors[..., 1]
    return u * torch.sign(u.sum(dim=1, keepdim=True) + 1e-12), v


def macenko_stains(
    x: torch.Tensor,
    *,
    transparent_od: float = 0.15,
    percentile: float = 0.01,
    min_tissue: float = 0.05,
    stride: int = 1,
) -> torch.Tensor:
    """Each crop's haematoxylin and eosin vectors, estimated as in Macenko et al.

    Parameters
    ----------
    x : Tensor of shape (b, 3, h, w), float in 0-1
    transparent_od : float
        Pixels with optical density below this in any channel are background and
        left out of the estimate.
    percentile : float
        Robust extremes of the angle in the principal OD plane (0.01 = 1st and
        99th percentiles).
    min_tissue : float
        A crop whose tissue pixels are fewer than this fraction, or whose two
        vectors come out nearly parallel, gets :data:`REFERENCE_STAINS`.
    stride : int
        Estimate from every ``stride``-th pixel along rows and columns (2 is 4x
        faster and plenty for a 60x60 crop).

    Returns
    -------
    Tensor of shape (b, 3, 2), float: unit columns (haematoxylin, eosin)
    """
    # optical density per pixel, tissue mask
    od = optical_density(x[..., ::stride, ::stride]).flatten(2).transpose(1, 2)
    mask = (od > transparent_od).all(dim=2)  # od (b, n, 3), mask (b, n)
    u, v = _principal_plane(od, mask.float())

    # angles of tissue pixels in the plane and their robust extremes
    phi = torch.atan2((od * v[:, None]).sum(2), (od * u[:, None]).sum(2))
    extremes = _masked_quantiles(phi, mask, (percentile, 1 - percentile)).unbind(1)
    ends = [u * torch.cos(a)[:, None] + v * torch.sin(a)[:, None] for a in extremes]

    # haematoxylin absorbs more red than eosin; fall back where unreliable
    first_is_h = (ends[0][:, 0] > ends[1][:, 0])[:, None, None]
    pair = torch.stack(ends, dim=2)  # (b, 3, 2)
    stains = torch.where(first_is_h, pair, pair.flip(2))
    return _fallback(
        nn.functional.normalize(stains.clamp(min=0), dim=1), mask, min_tissue
    )


def _fallback(stains, mask, min_tissue):
    """Replace the stains of crops with little tissue or parallel vectors."""
    too_little = mask.float().mean(dim=1) < min_tissue
    parallel = (stains[:, :, 0] * stains[:, :, 1]).sum(dim=1) > 0.99
    bad = (too_little | parallel | ~torch.isfinite(stains).all(dim=(1, 2)))[
        :, None, None
    ]
    return torch.where(bad, REFERENCE_STAINS.to(stains), stains)


def _stain_basis(stains: torch.Tensor) -> torch.Tensor:
    """Complete (b, 3, 2) stain vectors with their unit cross product: (b, 3, 3)."""
    residual = torch.linalg.cross(stains[:, :, 0], stains[:, :, 1], dim=1)
    return torch.cat([stains, nn.functional.normalize(residual, dim=1)[..., None]], 2)


class MacenkoAugment(nn.Module):
    """Random per-stain rescaling and shift of Macenko concentrations.

    Parameters
    ----------
    sigma : float
        ``alpha ~ U(1 - sigma, 1 + sigma)`` multiplies each stain's concentration.
    bias : float
        ``beta ~ U(-bias, bias)`` (optical density units) is added to it.
    p : float
        Probability that a crop is changed at all.
    stride : int
        Pixel stride of the stain estimate (see :func:`macenko_stains`).
    """

    def __init__(
        self, sigma: float = 0.2, bias: float = 0.05, p: float = 1.0, stride: int = 2
    ):
        super().__init__()
        for key, value in {"sigma": sigma, "bias": bias, "p": p}.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key}={value!r} must lie in 0-1")
        self.sigma, self.bias, self.p, self.stride = sigma, bias, p, stride

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        basis = _stain_basis(macenko_stains(x, stride=self.stride))  # (b, 3, 3)

        # unmix: od = basis @ concentrations, exactly; keep H and E
        od = optical_density(x).flatten(2)  # (b, 3, n)
        conc = torch.linalg.inv(basis)[:, :2] @ od  # (b, 2, n)

        # change in od from jittering H and E: basis[:, :, :2] @ (c' - c)
        alpha, beta = self._draw(b, x.device, x.dtype)
        delta = basis[:, :, :2] @ (conc * (alpha - 1) + beta)

        # back to RGB without a second log: exp(-od') = exp(-od) * exp(-delta)
        light = (x * 255.0 + 1.0) * torch.exp(-delta).view(b, 3, h, w)
        return ((light - 1.0) / 255.0).clamp(0.0, 1.0)

    def _draw(self, b, device, dtype):
        """alpha (b, 2, 1) and beta (b, 2, 1); identity for crops left alone."""
        u = torch.rand(b, 2, 2, device=device, dtype=dtype) * 2 - 1
        alpha, beta = 1 + self.sigma * u[:, 0, :, None], self.bias * u[:, 1, :, None]
        keep = (torch.rand(b, 1, 1, device=device) >= self.p).to(dtype)
        return alpha * (1 - keep) + keep, beta * (1 - keep)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, bias={self.bias}, p={self.p}, stride={self.stride}"


FEATURES = ("mean_L", "mean_a", "mean_b", "std_L", "std_a", "std_b")
_FORMAT = "lemon-stain-statistics"
_KEYS = ("weights", "means", "covariances", "std_floor", "n_crops", "seed")
_MIN_STD = 0.5  # LAB units: a flat channel is shifted to its target, not blown up


def lab_statistics(lab: torch.Tensor) -> torch.Tensor:
    """Per-crop mean and standard deviation of each channel.

    Parameters
    ----------
    lab : Tensor of shape (b, 3, h, w), float (CIELAB: L in 0-100, a and b ~ +-100)

    Returns
    -------
    Tensor of shape (b, 6): mean L, a, b then std L, a, b (see :data:`FEATURES`)
    """
    flat = lab.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=1)


def _crop_statistics(crops_uint8: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """:func:`lab_statistics` of uint8 crops (n, h, w, 3), in batches: (n, 6)."""
    from kornia.color import rgb_to_lab

    out = []
    for start in range(0, len(crops_uint8), batch_size):
        chunk = np.ascontiguousarray(crops_uint8[start : start + batch_size])
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float() / 255.0
        out.append(lab_statistics(rgb_to_lab(x)).double().numpy())
    return np.concatenate(out)


def _check_crops(crops_uint8, n_components: int) -> np.ndarray:
    crops = np.asarray(crops_uint8)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ValueError(
            f"crops_uint8 has shape {crops.shape} and dtype {crops.dtype}; expected "
            "(n, rows, cols, 3) uint8 RGB crops"
        )
    if not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components={n_components!r} must be a positive integer")
    if len(crops) < max(n_components, 2):
        raise ValueError(
            f"crops_uint8 holds {len(crops)} crops: fitting a {n_components}-component "
            f"mixture needs at least {max(n_components, 2)}; pass a sample of the "
            "training crops (a few thousand)"
        )
    return crops


@dataclass(frozen=True)
class StainStatistics:
    """A Gaussian mixture over per-crop LAB statistics (:data:`FEATURES`).

    Attributes
    ----------
    weights : ndarray of shape (k,), float64
    means : ndarray of shape (k, 6), float64
    covariances : ndarray of shape (k, 6, 6), float64
    std_floor : ndarray of shape (3,), float64
        1st percentile of the fitted crops' channel stds: sampled stds below it are
        raised to it, so a draw never flattens a channel.
    n_crops, seed : int
        The fit's sample size and random seed.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    std_floor: np.ndarray
    n_crops: int
    seed: int

    @property
    def n_components(self) -> int:
        return len(self.weights)

    @classmethod
    def fit(
        cls, crops_uint8: np.ndarray, n_components: int = 1, seed: int = 0
    ) -> StainStatistics:
        """Fit the mixture to crops, ndarray of shape (n, h, w, 3), uint8."""
        from sklearn.mixture import GaussianMixture

        crops = _check_crops(crops_uint8, n_components)
        stats = _crop_statistics(crops)
        gmm = GaussianMixture(
            n_components, covariance_type="full", reg_covar=1e-4, random_state=seed
        ).fit(stats)
        floor = np.percentile(stats[:, 3:], 1, axis=0)
        return cls(gmm.weights_, gmm.means_, gmm.covariances_, floor, len(crops), seed)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict; :meth:`from_dict` restores it exactly."""
        arrays = {k: getattr(self, k).tolist() for k in _KEYS[:4]}
        return {"format": _FORMAT, "color_space": "lab", "features": list(FEATURES)} | (
            arrays | {"n_crops": int(self.n_crops), "seed": int(self.seed)}
        )

    @classmethod
    def from_dict(cls, data: dict) -> StainStatistics:
        """Statistics from a dict written by :meth:`to_dict` (e.g. read from JSON)."""
        missing = [k for k in _KEYS if k not in data]
        if data.get("format") != _FORMAT or missing:
            raise ValueError(
                f"stain statistics with format={data.get('format')!r} lack keys "
                f"{missing}; expected a dict written by StainStatistics.to_dict()"
            )
        arrays = [np.asarray(data[k], dtype=np.float64) for k in _KEYS[:4]]
        k = len(arrays[0])
        shapes = [(k,), (k, 6), (k, 6, 6), (3,)]
        if k < 1 or [a.shape for a in arrays] != shapes:
            raise ValueError(
                f"stain statistics have shapes {[a.shape for a in arrays]}; expected "
                f"{shapes} for weights, means, covariances, std_floor"
            )
        return cls(*arrays, int(data["n_crops"]), int(data["seed"]))


class GmmStainAugment(nn.Module):
    """Re-normalise each crop's LAB channels to statistics drawn from a mixture.

    Parameters
    ----------
    statistics : StainStatistics
        Fitted on the training crops; its mixture becomes buffers of this module,
        so ``.to(device)`` moves it.
    """

    def __init__(self, statistics: StainStatistics):
        super().__init__()
        self.n_components = statistics.n_components
        chol = np.linalg.cholesky(statistics.covariances)
        self.register_buffer("weights", torch.as_tensor(statistics.weights).float())
        self.register_buffer("means", torch.as_tensor(statistics.means).float())
        self.register_buffer("chol", torch.as_tensor(chol).float())
        self.register_buffer("std_floor", torch.as_tensor(statistics.std_floor).float())

    def sample(self, n: int) -> torch.Tensor:
        """``n`` target vectors (mean L, a, b, std L, a, b), shape (n, 6)."""
        component = torch.multinomial(self.weights, n, replacement=True)
        z = torch.randn(n, 6, 1, device=self.means.device)
        target = self.means[component] + (self.chol[component] @ z)[..., 0]
        return torch.cat([target[:, :3], target[:, 3:].maximum(self.std_floor)], 1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kornia.color import lab_to_rgb, rgb_to_lab

        # source statistics of each crop, targets from the mixture
        lab = rgb_to_lab(x.float())
        source = lab_statistics(lab)
        target = self.sample(x.shape[0]).to(lab)

        # shift and scale each channel: (lab - mean) / std * std' + mean'
        mean, std = source[:, :3, None, None], source[:, 3:, None, None]
        scale = target[:, 3:, None, None] / std.clamp(min=_MIN_STD)
        lab = (lab - mean) * scale + target[:, :3, None, None]
        return lab_to_rgb(lab, clip=True).to(x.dtype)

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}, color_space='lab'"
