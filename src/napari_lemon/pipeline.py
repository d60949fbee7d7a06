"""From a slide to a results table: region -> nuclei -> crops -> embeddings -> clusters.

The work is written as generators that yield ``(stage, done, total)`` after each
step and *return* their result, so that napari's ``thread_worker`` can show
progress and cancel between steps (closing the generator), and the command line
can draw progress bars. :func:`analyze` runs the whole chain with an optional
callback.

Coordinates: ``region`` is ``(x, y, width, height)`` in level-0 px; the image that
is segmented is that region resampled to ``seg_mpp``. A position ``c`` in its
pixels (pixel centres at integers) lies at level-0 ``x0 + (c + 0.5) * s - 0.5``
with ``s`` level-0 px per image pixel.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .segment import DEFAULT_SEGMENTER
from .store import build_results, empty_obs, make_provenance, set_clusters

if TYPE_CHECKING:
    from anndata import AnnData

    from .encoder import Encoder
    from .segment import Nuclei
    from .slide import Slide

logger = logging.getLogger(__name__)

Progress = tuple[str, int, int]
STAGES = ("read", "segment", "crop", "embed", "cluster")
SEG_MPP = 0.5  # finest pyramid level not finer than this is segmented by default
MAX_SEG_PIXELS = 100_000_000  # regions larger than this need tiling (not yet)
COARSEST_SEG_MPP = 1.0  # coarser than a 10x scan, nuclei merge and vanish
CROP_CHUNK = 2048  # nuclei cropped per slide read


def warn_if_coarse(slide: Slide, seg_mpp: float, stacklevel: int = 2) -> bool:
    """Warn when ``slide`` is segmented too coarsely to resolve nuclei; True if so."""
    if seg_mpp <= COARSEST_SEG_MPP:
        return False
    warnings.warn(
        f"segmenting '{slide.path.name}' at {seg_mpp:.3g} um/px: nuclei are "
        "barely resolved this coarse and many will be missed; use a 20x or 40x "
        "scan, or check --mpp",
        stacklevel=stacklevel + 1,
    )
    return True


@dataclass
class Segmentation:
    """Nuclei of one region, at the resolution they were found.

    Attributes
    ----------
    image : ndarray of shape (rows, cols, 3), uint8
        The region resampled to ``seg_mpp``.
    nuclei : Nuclei
        Labels, centroids and outlines in pixels of ``image``.
    region : tuple of int
        ``(x, y, width, height)`` in level-0 px.
    seg_mpp : float
        Microns per pixel of ``image``.
    scale : tuple of float
        Level-0 px per pixel of ``image`` along x and y.
    """

    image: np.ndarray
    nuclei: Nuclei
    region: tuple[int, int, int, int]
    seg_mpp: float
    scale: tuple[float, float]
    params: dict[str, Any] = field(default_factory=dict)

    def to_level0(self, xy_px: np.ndarray) -> np.ndarray:
        """Map ``(x, y)`` pixels of ``image`` to level-0 px, float64 ``(n, 2)``."""
        xy_px = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
        origin = np.array(self.region[:2], dtype=np.float64)
        return origin + (xy_px + 0.5) * np.array(self.scale) - 0.5


@dataclass
class AnalysisResult:
    """Everything :func:`analyze` makes.

    Attributes
    ----------
    adata : AnnData
        The results table (see :mod:`napari_lemon.store`).
    region : tuple of int
        ``(x, y, width, height)`` analysed, in level-0 px.
    image : ndarray of shape (rows, cols, 3), uint8
        The region at ``seg_mpp``, for an overlay.
    labels : ndarray of shape (rows, cols), int32
        Instance labels at the resolution of ``image``.
    seg_mpp : float
        Microns per pixel of ``image`` and ``labels``.
    """

    adata: AnnData
    region: tuple[int, int, int, int]
    image: np.ndarray
    labels: np.ndarray
    seg_mpp: float


def run_steps(
    steps: Generator[Progress, None, Any],
    progress: Callable[[str, int, int], None] | None = None,
) -> Any:
    """Drive a step generator to its end and return its result.

    ``progress(stage, done, total)`` is called after every step.
    """
    while True:
        try:
            stage, done, total = next(steps)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(stage, done, total)


def resolve_region(
    slide: Slide, region: Sequence[float] | None
) -> tuple[int, int, int, int]:
    """Check ``region`` against the slide; clip a partly outside one (with a warning).

    Parameters
    ----------
    region : sequence of 4 numbers or None
        ``(x, y, width, height)`` in level-0 px; None = the whole slide.

    Returns
    -------
    tuple of 4 int
        The region inside the slide.
    """
    width, height = slide.dimensions
    if region is None:
        return (0, 0, int(width), int(height))
    if len(region) != 4:
        raise ValueError(
            f"region={region!r} must be 4 numbers (x, y, width, height) in level-0 px"
        )

    # refuse empty or wholly outside requests
    x, y, w, h = (int(round(v)) for v in region)
    if w <= 0 or h <= 0:
        raise ValueError(
            f"region={tuple(region)!r} has width or height <= 0; give (x, y, width, "
            f"height) in level-0 px of the {width}x{height} slide"
        )
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"region={tuple(region)!r} lies entirely outside the {width}x{height} "
            f"slide '{slide.path.name}'; x and y must be inside 0..{width}, 0..{height}"
        )

    # clip what sticks out
    clipped = (x0, y0, x1 - x0, y1 - y0)
    if clipped != (x, y, w, h):
        warnings.warn(
            f"region={tuple(region)!r} reaches outside the {width}x{height} slide; "
            f"clipped to {clipped}",
            stacklevel=2,
        )
    return clipped


def default_seg_mpp(slide: Slide) -> float:
    """Microns per pixel of the coarsest level not coarser than 0.5 um/px.

    Reading a native level avoids resampling; the segmenter works at its own
    scale internally. When even level 0 is coarser, level 0 is used.
    """
    level = slide.best_level_for_mpp(SEG_MPP)
    return float(slide.mpp * slide.level_downsamples[level])


def _check_size(slide: Slide, region: tuple[int, ...], seg_mpp: float) -> None:
    """Refuse regions too large to segment in one piece."""
    pixels = region[2] * region[3] * (slide.mpp / seg_mpp) ** 2
    if pixels > MAX_SEG_PIXELS:
        raise ValueError(
            f"region={region!r} of '{slide.path.name}' is {pixels / 1e6:.0f} Mpx at "
            f"{seg_mpp:.3g} um/px, more than the {MAX_SEG_PIXELS / 1e6:.0f} Mpx "
            "analysed in one piece; pass a smaller region (--region X,Y,W,H)"
        )


def segmentation_steps(
    slide: Slide,
    region: Sequence[float] | None = None,
    segmenter: str = DEFAULT_SEGMENTER,
    seg_mpp: float | None = None,
    segmenter_params: dict[str, Any] | None = None,
) -> Generator[Progress, None, Segmentation]:
    """Read a region and find its nuclei, yielding ``read`` and ``segment`` steps.

    Parameters
    ----------
    slide : Slide
        An open slide; its mpp must be known (or given when opening it).
    region : sequence of 4 numbers, optional
        ``(x, y, width, height)`` in level-0 px; default the whole slide.
    segmenter : str
        Name of a segmenter in :data:`napari_lemon.segment.SEGMENTERS`.
    seg_mpp : float, optional
        Microns per pixel to read the region at; default :func:`default_seg_mpp`.
    segmenter_params : dict, optional
        Keyword parameters of the segmenter.

    Returns
    -------
    Segmentation
    """
    from .segment import create_segmenter
    from .slide import require_mpp

    # where and at what scale
    mpp = require_mpp(slide)
    region = resolve_region(slide, region)
    seg_mpp = float(seg_mpp) if seg_mpp else default_seg_mpp(slide)
    _check_size(slide, region, seg_mpp)

    # read
    yield ("read", 0, 1)
    image = slide.read_region_at_mpp(region[:2], region[2:], seg_mpp)
    scale = (region[2] / image.shape[1], region[3] / image.shape[0])
    yield ("read", 1, 1)

    # segment at the scale actually read
    yield ("segment", 0, 1)
    segment = create_segmenter(segmenter, **(segmenter_params or {}))
    params = segment.keywords["params"].as_dict()  # defaults included, for provenance
    seg_mpp = mpp * scale[0]
    with warnings.catch_warnings():
        if warn_if_coarse(slide, seg_mpp):
            # said once: not again by the segmenter in its own words
            warnings.filterwarnings("ignore", "mpp=.* is much coarser", UserWarning)
        nuclei = segment(image, seg_mpp)
    logger.debug("%d nuclei in %s at %.3f um/px", len(nuclei), region, seg_mpp)
    yield ("segment", 1, 1)
    return Segmentation(image, nuclei, region, seg_mpp, scale, params)


def crop_steps(
    slide: Slide, centroids_xy: np.ndarray, target_mpp: float, size: int
) -> Generator[Progress, None, np.ndarray]:
    """Crops around level-0 centroids, a chunk of nuclei per slide read.

    Nuclei are visited in row-major order of position, so each read covers a
    compact band of the slide.

    Returns
    -------
    ndarray of shape (n, size, size, 3), uint8
        In the order of ``centroids_xy``.
    """
    from .crops import crop_nuclei_from_slide

    centroids_xy = np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2)
    n = len(centroids_xy)
    crops = np.empty((n, size, size, 3), dtype=np.uint8)
    order = np.lexsort((centroids_xy[:, 0], centroids_xy[:, 1]))
    yield ("crop", 0, n)
    for start in range(0, n, CROP_CHUNK):
        chunk = order[start : start + CROP_CHUNK]
        crops[chunk] = crop_nuclei_from_slide(
            slide, centroids_xy[chunk], target_mpp, size
        )
        yield ("crop", min(start + CROP_CHUNK, n), n)
    return crops


def embed_steps(
    encoder: Encoder, crops: np.ndarray, batch_size: int | None = None
) -> Generator[Progress, None, np.ndarray]:
    """Embeddings of crops, yielding after every batch.

    ``batch_size`` None takes the encoder's default for its device.

    Returns
    -------
    ndarray of shape (n, embed_dim), float32
    """
    batch_size = encoder.default_batch_size() if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    n = len(crops)
    out = np.empty((n, encoder.embed_dim), dtype=np.float32)
    yield ("embed", 0, n)
    for start in range(0, n, batch_size):
        batch = crops[start : start + batch_size]
        out[start : start + len(batch)] = encoder.embed(batch, batch_size=batch_size)
        yield ("embed", start + len(batch), n)
    return out


def _nuclei_obs(seg: Segmentation, segmenter: str) -> tuple[pd.DataFrame, list]:
    """The ``obs`` table and level-0 outlines of segmented nuclei."""
    nuclei = seg.nuclei
    xy = seg.to_level0(nuclei.centroids_xy)
    obs = pd.DataFrame(
        {
            "nucleus_id": np.asarray(nuclei.label_ids, dtype=np.int64),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "area_um2": np.asarray(nuclei.area_um2, dtype=np.float64),
            "segmenter": segmenter,
            "tile_id": 0,
        }
    )
    outlines = [seg.to_level0(o) for o in nuclei.outlines]
    return (obs if len(obs) else empty_obs()), outlines


def load_or_use(encoder: Encoder | None, model: str, device: str) -> Encoder:
    """``encoder`` when given, else the weights ``model`` loaded on ``device``."""
    from .checkpoint import load_encoder

    return encoder if encoder is not None else load_encoder(model, device)


def analysis_steps(
    slide: Slide,
    region: Sequence[float] | None = None,
    encoder: Encoder | None = None,
    model: str = "bundled",
    n_clusters: int = 8,
    device: str = "auto",
    segmenter: str = DEFAULT_SEGMENTER,
    seg_mpp: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    segmenter_params: dict[str, Any] | None = None,
) -> Generator[Progress, None, AnalysisResult]:
    """The whole analysis of a region as a generator of progress steps.

    Yields ``(stage, done, total)`` with stage one of ``read, segment, crop,
    embed, cluster`` (``embed`` once per batch) and returns an
    :class:`AnalysisResult`. Close the generator to cancel.

    Parameters
    ----------
    slide : Slide
        An open slide with a known mpp.
    region : sequence of 4 numbers, optional
        ``(x, y, width, height)`` in level-0 px; default the whole slide.
    encoder : Encoder, optional
        A loaded encoder; default ``load_encoder(model, device)``.
    model, device : str
        Which weights to load and where to run them, when ``encoder`` is None.
    n_clusters, seed : int
        k-means clusters and seed.
    segmenter, seg_mpp, segmenter_params
        See :func:`segmentation_steps`.
    batch_size : int, optional
        Crops per forward pass of the encoder; default its choice for the device.
    """
    from .analysis import cluster_kmeans

    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters!r} must be >= 1")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    encoder = load_or_use(encoder, model, device)
    card = encoder.card

    # nuclei, then their crops and embeddings
    seg = yield from segmentation_steps(
        slide, region, segmenter, seg_mpp, segmenter_params
    )
    obs, outlines = _nuclei_obs(seg, segmenter)
    xy = obs[["x", "y"]].to_numpy()
    crops = yield from crop_steps(slide, xy, card.mpp, card.crop_size)
    embeddings = yield from embed_steps(encoder, crops, batch_size)

    # clusters
    yield ("cluster", 0, 1)
    clusters = np.empty(0, dtype=np.int64)
    if len(obs):
        clusters = cluster_kmeans(embeddings, n_clusters, seed)
    yield ("cluster", 1, 1)

    # the table
    provenance = make_provenance(
        slide.path,
        slide.mpp,
        seg.region,
        segmenter,
        seg.params,
        card,
        encoder_precision=getattr(encoder, "precision", None),
        seg_mpp=seg.seg_mpp,
        clustering={
            "method": "kmeans",
            "n_clusters": int(len(np.unique(clusters))),
            "seed": seed,
        },
    )
    adata = build_results(obs, embeddings, outlines, provenance)
    set_clusters(adata, clusters)
    labels = np.asarray(seg.nuclei.labels)
    return AnalysisResult(adata, seg.region, seg.image, labels, seg.seg_mpp)


def analyze(
    slide: Slide,
    region: Sequence[float] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    **options: Any,
) -> AnalysisResult:
    """Run :func:`analysis_steps` to the end.

    ``options`` are those of :func:`analysis_steps` (``encoder``, ``model``,
    ``n_clusters``, ``device``, ...); ``progress(stage, done, total)`` is called
    after every step.
    """
    steps = analysis_steps(slide, region, **options)
    return run_steps(steps, progress)
