"""Classical H&E nucleus segmentation: colour deconvolution, threshold, watershed.

The steps, all sized in microns so that one set of parameters serves 20x and 40x:

1. hematoxylin optical density by colour deconvolution (Ruifrok & Johnston,
   Anal. Quant. Cytol. Histol. 23(4), 2001; scikit-image's ``hed_from_rgb``);
2. resample to ``working_mpp`` (anti-aliased) and smooth;
3. threshold: Otsu (or Li) over the tissue's pixels, never below a floor of
   hematoxylin density, so that a blank or eosin-only image yields no nuclei;
4. fill small holes, then split touching nuclei by a watershed on the distance
   transform, seeded at distance maxima at least ``min_distance_um`` apart;
5. drop objects outside the area limits, map labels back to the input grid
   (nearest neighbour) and measure them there.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.color import hed_from_rgb
from skimage.filters import threshold_li, threshold_otsu
from skimage.segmentation import watershed
from skimage.transform import resize

from .._slide_backends import as_rgb_uint8
from .nuclei import Nuclei, nuclei_from_labels, trace_outlines

logger = logging.getLogger(__name__)

THRESHOLDS = {"otsu": threshold_otsu, "li": threshold_li}
# hematoxylin optical density of each 8-bit value of each channel, as rgb2hed
# computes it: -log(max(v / 255, 1e-6)) / -log(1e-6), then the H column of the
# deconvolution matrix
_LOG_OD = np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)
_H_LUT = (_LOG_OD[:, None] * hed_from_rgb[:, 0][None, :]).astype(np.float32)


@dataclass
class ClassicalParams:
    """Parameters of :func:`segment_classical`, in microns and square microns.

    Attributes
    ----------
    working_mpp : float
        Microns per pixel the image is brought to before segmenting (finer input is
        downsampled; coarser input is used as it is).
    smooth_sigma_um : float
        Gaussian smoothing of the hematoxylin channel.
    threshold_method : str
        ``"otsu"`` or ``"li"``, computed over tissue pixels.
    threshold_offset : float
        Added to the automatic threshold (hematoxylin optical density units).
    min_hematoxylin : float
        Floor of the threshold: paler pixels are never nuclear.
    tissue_density : float
        Total optical density above which a pixel counts as tissue.
    max_hole_um2 : float
        Holes inside a nucleus up to this area are filled.
    min_distance_um : float
        Least distance between two watershed seeds (about a nucleus radius).
    min_area_um2, max_area_um2 : float
        Area limits of a nucleus.
    """

    working_mpp: float = 0.5
    smooth_sigma_um: float = 0.5
    threshold_method: str = "otsu"
    threshold_offset: float = 0.0
    min_hematoxylin: float = 0.03
    tissue_density: float = 0.1
    max_hole_um2: float = 15.0
    min_distance_um: float = 2.5
    min_area_um2: float = 10.0
    max_area_um2: float = 400.0

    def __post_init__(self) -> None:
        if self.threshold_method not in THRESHOLDS:
            raise ValueError(
                f"threshold_method={self.threshold_method!r} is not one of "
                f"{sorted(THRESHOLDS)}"
            )
        for name in ("working_mpp", "min_distance_um", "max_area_um2"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
        if not 0 <= self.min_area_um2 < self.max_area_um2:
            raise ValueError(
                f"min_area_um2={self.min_area_um2!r} and max_area_um2="
                f"{self.max_area_um2!r} must satisfy 0 <= min < max"
            )

    def as_dict(self) -> dict:
        return asdict(self)


def segment_classical(
    image: np.ndarray, mpp: float, params: ClassicalParams | None = None
) -> Nuclei:
    """Find nuclei in an H&E image without a learned model.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3 or 4), uint8
        RGB (or RGBA, composited onto white) H&E image.
    mpp : float
        Microns per pixel of ``image``.
    params : ClassicalParams, optional

    Returns
    -------
    Nuclei
        Labels at the resolution of ``image``; centroids and outlines in its
        pixels.

    Examples
    --------
    >>> image = np.full((64, 64, 3), 255, np.uint8)
    >>> len(segment_classical(image, mpp=0.5))
    0
    """
    params = params or ClassicalParams()
    image = _check_image(image, mpp)
    work_mpp = max(params.working_mpp, float(mpp))
    scale = work_mpp / mpp  # input pixels per working pixel, >= 1

    # hematoxylin density at the working scale
    density = hematoxylin_density(image)
    tissue = _tissue_density(image)
    shape = tuple(max(1, round(n / scale)) for n in density.shape)
    if shape != density.shape:
        density = resize(density, shape, order=1, anti_aliasing=True)
        tissue = resize(tissue, shape, order=1, anti_aliasing=True)
    density = ndimage.gaussian_filter(density, params.smooth_sigma_um / work_mpp)

    # foreground, then instances
    mask = _nuclear_mask(density, tissue, params, work_mpp)
    labels = _split_touching(mask, params, work_mpp)
    labels = _filter_areas(labels, params, work_mpp)
    if not labels.any():
        return Nuclei.empty(image.shape)

    # back to the input grid
    outlines = trace_outlines(labels, np.arange(1, labels.max() + 1), scale)
    return nuclei_from_labels(_upsample(labels, image.shape[:2]), mpp, outlines)


def hematoxylin_density(image: np.ndarray) -> np.ndarray:
    """Hematoxylin channel of ``skimage.color.rgb2hed``, via a lookup table.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3), uint8

    Returns
    -------
    ndarray of shape (rows, cols), float32
    """
    out = _H_LUT[image[..., 0], 0]
    out += _H_LUT[image[..., 1], 1]
    out += _H_LUT[image[..., 2], 2]
    return np.maximum(out, 0, out=out)


def _tissue_density(image: np.ndarray) -> np.ndarray:
    """Summed optical density of the three channels, float32 (rows, cols)."""
    log_od = _LOG_OD.astype(np.float32)
    return log_od[image[..., 0]] + log_od[image[..., 1]] + log_od[image[..., 2]]


def _check_image(image: np.ndarray, mpp: float) -> np.ndarray:
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(
            f"mpp={mpp!r} must be a positive number of microns per pixel "
            "(e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(
            f"image has shape {image.shape}; classical segmentation needs an RGB "
            "H&E image of shape (rows, cols, 3) (or RGBA)"
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"image has dtype {image.dtype}; expected uint8 RGB (convert with "
            "skimage.util.img_as_ubyte)"
        )
    return as_rgb_uint8(image) if image.shape[2] == 4 else image


def _nuclear_mask(density, tissue, params, work_mpp) -> np.ndarray:
    """Pixels dark enough in hematoxylin, small holes filled (bool)."""
    values = density[tissue > params.tissue_density]
    if values.size < 2 or values.max() <= params.min_hematoxylin:
        return np.zeros(density.shape, dtype=bool)

    # automatic threshold over tissue, floored
    automatic = THRESHOLDS[params.threshold_method](values)
    threshold = max(automatic + params.threshold_offset, params.min_hematoxylin)
    logger.debug("threshold %.4f (automatic %.4f)", threshold, automatic)
    return _fill_small_holes(density > threshold, params.max_hole_um2 / work_mpp**2)


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Set background components of at most ``max_px`` pixels to foreground."""
    background, _ = ndimage.label(~mask)
    small = np.bincount(background.ravel()) <= max_px
    small[0] = False
    return mask | small[background]


def _split_touching(mask, params, work_mpp) -> np.ndarray:
    """Watershed of the distance transform, seeded at well-separated maxima."""
    distance = ndimage.distance_transform_edt(mask)
    radius = max(1, int(round(params.min_distance_um / work_mpp)))
    footprint = _disk(radius)

    # seeds: local maxima of the distance, plateaus merged into one seed
    peaks = (distance == ndimage.maximum_filter(distance, footprint=footprint)) & mask
    seeds, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    return watershed(-distance, seeds, mask=mask).astype(np.int32)


def _filter_areas(labels, params, work_mpp) -> np.ndarray:
    """Drop labels outside the area limits; number the rest 1..n."""
    area = np.bincount(labels.ravel()) * work_mpp**2
    keep = (area >= params.min_area_um2) & (area <= params.max_area_um2)
    keep[0] = False
    lookup = np.zeros(len(area), dtype=np.int32)
    lookup[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return lookup[labels]


def _upsample(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of ``labels`` to ``shape`` (rows, cols)."""
    if labels.shape == shape:
        return labels
    rows = _nearest_index(shape[0], labels.shape[0])
    cols = _nearest_index(shape[1], labels.shape[1])
    return labels[rows[:, None], cols[None, :]]


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out)
    return np.minimum(centres.astype(np.intp), n_in - 1)


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return r[:, None] ** 2 + r[None, :] ** 2 <= radius**2
