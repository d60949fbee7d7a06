"""Classical H&E nucleus segmentation: colour deconvolution, threshold, watershed.

The steps, all sized in microns so that one set of parameters serves 20x and 40x:

1. hematoxylin optical density by colour deconvolution (Ruifrok & Johnston,
   Anal. Quant. Cytol. Histol. 23(4), 2001; scikit-image's ``hed_from_rgb``);
2. resample to ``working_mpp`` (anti-aliased) and smooth;
3. threshold: a pixel is nuclear when it is darker in hematoxylin than a global
   threshold (Li or Otsu over the tissue's pixels, scaled) *and* than the local
   average around it by ``local_contrast``; the global threshold never drops
   below ``min_hematoxylin``, so that a blank or eosin-only image yields nothing;
4. fill holes, then split touching nuclei by a watershed on the smoothed
   (octagonal) distance transform, seeded at its maxima at least
   ``min_distance_um`` apart;
5. drop objects outside the area limits, map labels back to the input grid
   (nearest neighbour) and measure them there.

The defaults were tuned on the 13 annotated MoNuSeg training tiles, first for
detection F1, then for panoptic quality (see ``benchmarks/README.md``).
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
from .nuclei import (
    Nuclei,
    check_mpp,
    label_centroids,
    nuclei_from_labels,
    star_outlines,
)

logger = logging.getLogger(__name__)

THRESHOLDS = {"otsu": threshold_otsu, "li": threshold_li}
SCALE_SLACK = 1.02  # an input this close to working_mpp is not resampled
THRESHOLD_SAMPLES = 50_000  # tissue pixels the global threshold is computed from
# optical density of each 8-bit value as rgb2hed computes it,
# -log(max(v / 255, 1e-6)) / -log(1e-6), and its hematoxylin share per channel
_LOG_OD = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(
    np.float32
)
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
        ``"li"`` or ``"otsu"``, computed over tissue pixels.
    threshold_scale : float
        Factor on the automatic threshold.
    local_contrast : float
        How much darker (hematoxylin optical density) than its surroundings a
        nuclear pixel must be.
    background_um : float
        Side of the square whose mean density is a pixel's surroundings.
    min_hematoxylin : float
        Floor of the global threshold: paler pixels are never nuclear.
    tissue_density : float
        Summed optical density above which a pixel counts as tissue.
    max_hole_um2 : float
        Holes inside a nucleus up to this area are filled.
    seed_sigma_um : float
        Smoothing of the distance transform before seeds are picked.
    min_distance_um : float
        Least distance between two watershed seeds.
    min_area_um2, max_area_um2 : float
        Area limits of a nucleus.
    """

    working_mpp: float = 0.5
    smooth_sigma_um: float = 0.25
    threshold_method: str = "li"
    threshold_scale: float = 0.8
    local_contrast: float = 0.01
    background_um: float = 20.0
    min_hematoxylin: float = 0.03
    tissue_density: float = 0.03
    max_hole_um2: float = 40.0
    seed_sigma_um: float = 0.5
    min_distance_um: float = 2.0
    min_area_um2: float = 15.0
    max_area_um2: float = 400.0

    def __post_init__(self) -> None:
        if self.threshold_method not in THRESHOLDS:
            raise ValueError(
                f"threshold_method={self.threshold_method!r} is not one of "
                f"{sorted(THRESHOLDS)}"
            )
        positive = ("working_mpp", "min_distance_um", "background_um")
        for name in positive + ("threshold_scale", "max_area_um2"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be positive")
        if not 0 <= self.min_area_um2 < self.max_area_um2:
            raise ValueError(
                f"min_area_um2={self.min_area_um2!r} and max_area_um2="
                f"{self.max_area_um2!r} must satisfy 0 <= min < max"
            )

    def as_dict(self) -> dict:
        """The parameters as a plain dict (for provenance records)."""
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
    # work at the input scale when it is (within 2%) as coarse as working_mpp
    work_mpp = (
        float(mpp) if mpp >= params.working_mpp / SCALE_SLACK else params.working_mpp
    )
    scale = work_mpp / mpp  # input pixels per working pixel, >= 1

    # hematoxylin density and tissue at the working scale
    shape = tuple(max(1, round(n / scale)) for n in image.shape[:2])
    density = _resample(hematoxylin_density(image), shape)
    density = ndimage.gaussian_filter(density, params.smooth_sigma_um / work_mpp)
    tissue = _tissue_density(_nearest(image, shape)) > params.tissue_density

    # foreground, then instances
    mask = _nuclear_mask(density, tissue, params, work_mpp)
    labels = _split_touching(mask, params, work_mpp)
    labels = _filter_areas(labels, params, work_mpp)
    if not labels.any():
        return Nuclei.empty(image.shape)

    # outlines from the working grid, measurements on the input grid
    ids, centroids, _ = label_centroids(labels)
    outlines = star_outlines(labels, ids, centroids, scale=scale)
    return nuclei_from_labels(_nearest(labels, image.shape[:2]), mpp, outlines)


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
    return _LOG_OD[image[..., 0]] + _LOG_OD[image[..., 1]] + _LOG_OD[image[..., 2]]


def _check_image(image: np.ndarray, mpp: float) -> np.ndarray:
    check_mpp(mpp)
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
    """Pixels dark enough in hematoxylin, globally and locally; holes filled."""
    values = density[tissue]
    if values.size < 2 or values.max() <= params.min_hematoxylin:
        return np.zeros(density.shape, dtype=bool)

    # global threshold over (a regular subsample of) the tissue, floored
    step = max(1, values.size // THRESHOLD_SAMPLES)
    automatic = THRESHOLDS[params.threshold_method](values[::step])
    threshold = max(automatic * params.threshold_scale, params.min_hematoxylin)
    logger.debug("threshold %.4f (automatic %.4f)", threshold, automatic)

    # local: darker than the mean of a square around the pixel
    dark = density > threshold
    width = max(3, round(params.background_um / work_mpp))
    surround = ndimage.uniform_filter(density, size=width, mode="reflect")
    mask = dark & (density > surround + params.local_contrast)
    return _fill_holes(mask, dark, params.max_hole_um2 / work_mpp**2)


def _fill_holes(mask: np.ndarray, dark: np.ndarray, max_px: float) -> np.ndarray:
    """Fill holes of ``mask`` that are small or lie wholly inside ``dark``.

    The second kind is the inside of a dark area wider than the local window,
    which the local-contrast test alone would leave as a ring.
    """
    holes, n = ndimage.label(~mask)
    small = np.bincount(holes.ravel(), minlength=n + 1) <= max_px
    enclosed = np.bincount(holes[~dark], minlength=n + 1) == 0
    fill = small | enclosed
    fill[0] = False
    return mask | fill[holes]


def _split_touching(mask, params, work_mpp) -> np.ndarray:
    """Watershed of the distance transform, seeded at well-separated maxima."""
    distance = ndimage.gaussian_filter(
        _octagonal_distance(mask), params.seed_sigma_um / work_mpp
    )
    size = 2 * max(1, round(params.min_distance_um / work_mpp)) + 1

    # seeds: local maxima of the distance, plateaus merged into one seed
    peaks = (distance == ndimage.maximum_filter(distance, size=size)) & mask
    seeds, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    return watershed(-distance, seeds, mask=mask).astype(np.int32)


def _octagonal_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the background, float32: the mean of the city-block and
    chessboard distances, within 8% of Euclidean and several times faster."""
    taxicab = ndimage.distance_transform_cdt(mask, metric="taxicab")
    chessboard = ndimage.distance_transform_cdt(mask, metric="chessboard")
    return (taxicab + chessboard).astype(np.float32) / 2


def _filter_areas(labels, params, work_mpp) -> np.ndarray:
    """Drop labels outside the area limits; number the rest 1..n."""
    area = np.bincount(labels.ravel()) * work_mpp**2
    keep = (area >= params.min_area_um2) & (area <= params.max_area_um2)
    keep[0] = False
    lookup = np.zeros(len(area), dtype=np.int32)
    lookup[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return lookup[labels]


def _resample(channel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased linear resampling of a float image to ``shape``."""
    if channel.shape == shape:
        return channel
    out = resize(channel, shape, order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)


def _nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of the first two axes to ``shape``."""
    if array.shape[:2] == tuple(shape):
        return array
    rows = _nearest_index(shape[0], array.shape[0])
    cols = _nearest_index(shape[1], array.shape[1])
    return array[rows[:, None], cols[None, :]]


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out)
    return np.minimum(centres.astype(np.intp), n_in - 1)
