"""Learned nucleus segmentation: a small U-Net, tiled inference and a watershed.

The network (Ronneberger et al., MICCAI 2015; plain PyTorch, about 1.9 M
parameters) sees the image at ``card.mpp`` microns per pixel and predicts two
maps per pixel:

- ``foreground``: the probability that the pixel is nuclear;
- ``distance``: the distance to the nucleus edge, divided by the largest such
  distance in the same nucleus (0 at the edge and outside, 1 at its centre), as
  in Naylor et al., IEEE TMI 38(2), 2019.

Instances come from a marker-controlled watershed (scikit-image) of the
distance map inside the foreground, seeded at the distance map's regional
maxima that stand at least ``marker_height`` above their surroundings
(h-maxima). Large images are predicted in
overlapping tiles whose centres are stitched together, so that every output
pixel is predicted with at least ``overlap_px / 2`` pixels of context.

The network and its weights: :mod:`napari_lemon.segment.unet_model`; the
bundled weights, their card and how they were trained: ``weights/segmenter_unet.*``
and ``benchmarks/README.md``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import watershed
from skimage.transform import resize

from .._slide_backends import as_rgb_uint8
from .nuclei import Nuclei, check_mpp, nuclei_from_labels
from .unet_model import UNetCard, load_unet

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEPTH_MULTIPLE = 16  # 2 ** (number of poolings): tile sides must divide by it
COARSE_WARN = 1.5  # warn when the input is this many times coarser than card.mpp
FINE_WARN = 8.0  # ... or this many times finer (a likely wrong mpp)


@dataclass
class UNetParams:
    """Parameters of :func:`segment_unet`.

    Attributes
    ----------
    weights : str
        ``"bundled"`` or the path of a ``.safetensors`` file with its ``.json``
        card beside it.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    tile_px : int
        Side of the tiles the network sees, in working pixels (a multiple of 16).
    overlap_px : int
        Overlap of neighbouring tiles (a multiple of 16, so that every tile
        pools on the same grid); each tile's outer ``overlap_px / 2`` pixels are
        context, thrown away.
    batch_size : int
        Tiles per forward pass.
    foreground_threshold : float
        Probability above which a pixel is nuclear.
    marker_height : float
        How far a maximum of the normalised distance must rise above the
        saddle to a higher one to seed a nucleus of its own.
    min_area_um2, max_area_um2 : float
        Area limits of a nucleus.
    refine : bool
        Cut instances at the input's resolution (maps upsampled) when the input
        is finer than the network's scale; else cut at the network's scale.
    """

    weights: str = "bundled"
    device: str = "auto"
    tile_px: int = 512
    overlap_px: int = 32
    batch_size: int = 2
    foreground_threshold: float = 0.5
    marker_height: float = 0.05
    min_area_um2: float = 10.0  # tuned on MoNuSeg train: benchmarks/tune_unet.py
    max_area_um2: float = 400.0
    refine: bool = True

    def __post_init__(self) -> None:
        if self.tile_px % DEPTH_MULTIPLE or self.tile_px < 2 * DEPTH_MULTIPLE:
            raise ValueError(
                f"tile_px={self.tile_px!r} must be a multiple of {DEPTH_MULTIPLE} "
                f"and at least {2 * DEPTH_MULTIPLE}"
            )
        if self.overlap_px % DEPTH_MULTIPLE or not 0 <= self.overlap_px < self.tile_px:
            raise ValueError(
                f"overlap_px={self.overlap_px!r} must be a multiple of "
                f"{DEPTH_MULTIPLE} in 0..{self.tile_px - DEPTH_MULTIPLE}"
            )
        for name in ("foreground_threshold", "marker_height"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be in (0, 1)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} must be at least 1")
        if not 0 <= self.min_area_um2 < self.max_area_um2:
            raise ValueError(
                f"min_area_um2={self.min_area_um2!r} and max_area_um2="
                f"{self.max_area_um2!r} must satisfy 0 <= min < max"
            )

    def as_dict(self) -> dict:
        """The parameters as a plain dict (for provenance records)."""
        return asdict(self)


# --- inference ------------------------------------------------------------------


def segment_unet(
    image: np.ndarray, mpp: float, params: UNetParams | None = None
) -> Nuclei:
    """Find nuclei in an H&E image with the U-Net segmenter.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3 or 4), uint8
        RGB (or RGBA, composited onto white) H&E image.
    mpp : float
        Microns per pixel of ``image``.
    params : UNetParams, optional

    Returns
    -------
    Nuclei
        Labels at the resolution of ``image``; centroids and outlines in its
        pixels.
    """
    from ..encoder import select_device

    params = params or UNetParams()
    image = _check_image(image, mpp)
    model, card = load_unet(params.weights, select_device(params.device))
    _warn_scale(mpp, card.mpp)

    # probability maps at the network's scale
    work_shape = tuple(max(1, round(n * mpp / card.mpp)) for n in image.shape[:2])
    work = _resample(image.astype(np.float32) / 255.0, work_shape)
    foreground, distance = predict_maps(model, card, work, params)

    # seeds at the network's scale; instances cut at the input's scale when it is
    # finer (and refine is asked for), else at the network's
    peaks = h_maxima(distance, params.marker_height) > 0
    cut_shape = image.shape[:2] if params.refine and mpp < card.mpp else work_shape
    cut_mpp = mpp * image.shape[0] / cut_shape[0]
    foreground, distance = (_resample(m, cut_shape) for m in (foreground, distance))
    peaks = _nearest(peaks, cut_shape)
    labels = maps_to_labels(foreground, distance, params, cut_mpp, peaks)
    return nuclei_from_labels(_nearest(labels, image.shape[:2]), mpp)


def predict_maps(
    model: torch.nn.Module, card: UNetCard, image: np.ndarray, params: UNetParams
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability and normalised distance, tile by tile.

    Parameters
    ----------
    model : torch.nn.Module
        A U-Net from :func:`create_unet` or :func:`load_unet`.
    card : UNetCard
    image : ndarray of shape (rows, cols, 3), float32
        RGB in 0..1 at ``card.mpp``.
    params : UNetParams

    Returns
    -------
    foreground, distance : ndarray of shape (rows, cols), float32
    """
    import torch

    # tiles: a margin of half the overlap all round, centres stitched; the
    # tiles of each axis share its length evenly rather than overshoot it
    margin = params.overlap_px // 2
    strides = [_even_stride(n, params.tile_px - 2 * margin) for n in image.shape[:2]]
    tile = (strides[0] + 2 * margin, strides[1] + 2 * margin)
    origins = [
        (r, c)
        for r in range(0, image.shape[0], strides[0])
        for c in range(0, image.shape[1], strides[1])
    ]
    padded = _pad(_normalise(image, card), margin, strides)

    # predict in batches
    out = np.zeros((2, *(padded.shape[1:])), dtype=np.float32)
    device = next(model.parameters()).device
    for start in range(0, len(origins), params.batch_size):
        batch = origins[start : start + params.batch_size]
        tiles = np.stack(
            [padded[:, r : r + tile[0], c : c + tile[1]] for r, c in batch]
        )
        x = torch.from_numpy(tiles).to(device, memory_format=torch.channels_last)
        with torch.inference_mode():
            maps = torch.sigmoid(model(x)).cpu()
        for (r, c), m in zip(batch, maps.numpy(), strict=True):
            keep = m[:, margin : margin + strides[0], margin : margin + strides[1]]
            out[:, r : r + strides[0], c : c + strides[1]] = keep
    rows, cols = image.shape[:2]
    return out[0, :rows, :cols], out[1, :rows, :cols]


def maps_to_labels(
    foreground: np.ndarray,
    distance: np.ndarray,
    params: UNetParams,
    mpp: float,
    peaks: np.ndarray | None = None,
) -> np.ndarray:
    """Instances from the two maps by a marker-controlled watershed.

    Parameters
    ----------
    foreground, distance : ndarray of shape (rows, cols), float32
        Maps in 0..1.
    params : UNetParams
    mpp : float
        Microns per pixel of the maps (for the area limits).
    peaks : ndarray of shape (rows, cols), bool, optional
        Seeds; default the h-maxima of ``distance`` (``params.marker_height``).

    Returns
    -------
    ndarray of shape (rows, cols), int32
        Labels 1..n, 0 = background.
    """
    mask = ndimage.binary_fill_holes(foreground > params.foreground_threshold)
    if peaks is None:
        peaks = h_maxima(distance, params.marker_height) > 0
    markers, n = ndimage.label(mask & peaks)
    labels = watershed(-distance, markers, mask=mask)

    # foreground no marker reached becomes nuclei of its own
    orphans, _ = ndimage.label(mask & (labels == 0))
    labels = np.where(orphans > 0, orphans + n, labels)
    return _filter_areas(labels, params, mpp)


def _filter_areas(labels: np.ndarray, params: UNetParams, mpp: float) -> np.ndarray:
    """Drop labels outside the area limits; number the rest 1..n, int32."""
    area = np.bincount(labels.ravel()) * mpp**2
    keep = (area >= params.min_area_um2) & (area <= params.max_area_um2)
    keep[0] = False
    lookup = np.zeros(len(area), dtype=np.int32)
    lookup[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return lookup[labels]


def _normalise(image: np.ndarray, card: UNetCard) -> np.ndarray:
    """(rows, cols, 3) in 0..1 -> (3, rows, cols) float32, standardised."""
    mean = np.asarray(card.mean, np.float32)
    std = np.asarray(card.std, np.float32)
    return np.ascontiguousarray(((image - mean) / std).transpose(2, 0, 1))


def _even_stride(length: int, max_stride: int) -> int:
    """The smallest multiple of 16 that covers ``length`` in as few steps of at
    most ``max_stride`` as possible (``max_stride`` is a multiple of 16)."""
    steps = -(-length // max_stride)
    return _round_up(-(-length // steps))


def _pad(chw: np.ndarray, margin: int, strides: list[int]) -> np.ndarray:
    """Mirror-pad: ``margin`` before, and after up to whole strides + ``margin``."""
    rows, cols = chw.shape[1:]
    extra_r = -(-rows // strides[0]) * strides[0] - rows + margin
    extra_c = -(-cols // strides[1]) * strides[1] - cols + margin
    widths = ((0, 0), (margin, extra_r), (margin, extra_c))
    mode = "symmetric" if min(rows, cols) > 1 else "edge"
    return np.pad(chw, widths, mode=mode)


def _round_up(n: int) -> int:
    return -(-n // DEPTH_MULTIPLE) * DEPTH_MULTIPLE


def _resample(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling of the first two axes, anti-aliased when shrinking."""
    if array.shape[:2] == tuple(shape):
        return array
    out = resize(array, tuple(shape) + array.shape[2:], order=1, anti_aliasing=True)
    return out.astype(np.float32)


def _nearest(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image to ``shape``."""
    if labels.shape == tuple(shape):
        return labels
    rows = (np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]
    cols = (np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]
    rows = np.minimum(rows.astype(np.intp), labels.shape[0] - 1)
    cols = np.minimum(cols.astype(np.intp), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def _check_image(image: np.ndarray, mpp: float) -> np.ndarray:
    """RGB uint8 from RGB(A) or grey uint8/uint16 input; refuse anything else."""
    check_mpp(mpp)
    image = np.asarray(image)
    channels = image.shape[2] if image.ndim == 3 else 1
    if image.ndim not in (2, 3) or channels not in (1, 2, 3, 4):
        raise ValueError(
            f"image has shape {image.shape}; expected (rows, cols) grey or "
            "(rows, cols, 3) RGB (RGBA and grey+alpha are accepted)"
        )
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"image has dtype {image.dtype}; expected uint8 or uint16 (convert "
            "with skimage.util.img_as_ubyte)"
        )
    if channels < 3:
        warnings.warn(
            "grey image: the segmenter was trained on RGB H&E and is less reliable "
            "without colour",
            stacklevel=3,
        )
    return as_rgb_uint8(image, 255 / 65535 if image.dtype == np.uint16 else 1.0)


def _warn_scale(mpp: float, work_mpp: float) -> None:
    if mpp > COARSE_WARN * work_mpp:
        warnings.warn(
            f"mpp={mpp:g} is much coarser than the {work_mpp:g} um/px the segmenter "
            "was trained at: the image is upsampled and small nuclei will be "
            "missed; use a 20x or 40x scan, or check mpp",
            stacklevel=3,
        )
    elif mpp * FINE_WARN < work_mpp:
        warnings.warn(
            f"mpp={mpp:g} is far finer than any usual scan ({work_mpp:g} um/px is "
            "the segmenter's scale); check that mpp is right",
            stacklevel=3,
        )
