"""A whole slide, tile by tile: tissue, tiles, nuclei, crops, embeddings, store.

Memory is bounded by one tile and its crops, never by the slide: each tile over
tissue (:func:`napari_lemon.tiling.tile_grid`) is read at the segmentation scale
(the next tile is read in a background thread meanwhile), segmented, and only
the nuclei whose centroid lies in its core are kept; they are cropped at the
encoder's scale, embedded, and appended to an
:class:`~napari_lemon.incremental_store.IncrementalStore` that commits the tile.
A run that stops (closed generator, error, killed process) leaves the store
incomplete; running the same command again skips the tiles it holds. Clusters
come last, from a streaming k-means over the stored embeddings.

Nucleus ids are ``tile_id * 2**20 + k`` with ``k`` the nucleus's index among
those its tile keeps: the same slide and parameters give the same ids on every
run, interrupted or not.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .pipeline import (
    MAX_SEG_PIXELS,
    Progress,
    Segmentation,
    default_seg_mpp,
    resolve_region,
    run_steps,
    warn_if_coarse,
)
from .segment import DEFAULT_SEGMENTER
from .tiling import Tile, owned_by, tile_grid

if TYPE_CHECKING:
    from .encoder import Encoder
    from .segment import Segmenter
    from .slide import Slide

logger = logging.getLogger(__name__)

STAGES = ("read", "tissue", "segment", "crop", "embed", "write", "cluster")
ID_STRIDE = 2**20  # nucleus ids per tile
CLUSTER_CHUNK = 8192  # embeddings per k-means step: 65,536 peaked 0.4 GB higher
CLUSTERING_KEY = "lemon_clustering"  # uns: how a re-clustering was made
MIN_MARGIN_UM = 20.0  # below this, large nuclei on seams may be lost or doubled
MASK_MPP = 8.0  # microns per pixel of the tissue mask


@dataclass
class SlideRun:
    """What a finished (or resumed and finished) whole-slide run reports.

    Attributes
    ----------
    path : Path
        The results store (``.zarr``).
    n_nuclei : int
        Nuclei in the store.
    n_tiles : int
        Tiles over tissue.
    tiles_skipped : int
        Tiles found done in the store and not analysed again.
    seconds : dict of str to float
        Time per stage (:data:`STAGES`), plus ``read_wait``: the part of ``read``
        that the analysis waited for (the rest overlapped with computing).
    """

    path: Path
    n_nuclei: int
    n_tiles: int
    tiles_skipped: int
    seconds: dict[str, float] = field(default_factory=dict)


def slide_steps(
    slide: Slide,
    out: str | Path,
    encoder: Encoder,
    *,
    segmenter: str = DEFAULT_SEGMENTER,
    seg_mpp: float | None = None,
    tile_um: float = 512.0,
    margin_um: float = 24.0,
    region: Sequence[float] | None = None,
    batch_size: int | None = None,
    n_clusters: int = 8,
    seed: int = 0,
    segmenter_params: dict[str, Any] | None = None,
    overwrite: bool = False,
    prefetch: bool = True,
) -> Generator[Progress, None, SlideRun]:
    """Analyse a whole slide (or a region) into a store, tile by tile.

    Yields ``("tissue", 0, 1)``, ``("tissue", 1, 1)``, ``("tiles", done, total)``
    at the start and after every tile (``total`` = tiles over tissue), then
    ``("cluster", 0, 1)`` and ``("cluster", 1, 1)``; returns a :class:`SlideRun`.
    Close the generator to cancel: the store is closed and stays resumable.

    Parameters
    ----------
    slide : Slide
        An open slide with a known mpp.
    out : str or Path
        The results store to write, a ``.zarr`` folder.
    encoder : Encoder
        A loaded encoder; crops are cut at its card's mpp and size.
    segmenter, seg_mpp, segmenter_params
        As in :func:`napari_lemon.pipeline.segmentation_steps`.
    tile_um, margin_um : float
        Side of a tile's core and the margin read around it, in microns; the
        margin must exceed the largest nucleus diameter.
    region : sequence of 4 numbers, optional
        ``(x, y, width, height)`` in level-0 px; default the whole slide.
    batch_size : int, optional
        Crops per forward pass of the encoder; default the encoder's choice for
        its device.
    n_clusters, seed : int
        Streaming k-means clusters and seed.
    overwrite : bool
        Replace a store made with other parameters instead of refusing.
    prefetch : bool
        Read the next tile in a background thread while this one is analysed.
    """
    from .incremental_store import IncrementalStore
    from .segment import create_segmenter
    from .slide import require_mpp
    from .store import make_provenance

    # check the request
    _check_counts(n_clusters=n_clusters)
    if batch_size is not None:
        _check_counts(batch_size=batch_size)
    mpp = require_mpp(slide)
    region = resolve_region(slide, region)
    seg_mpp = float(seg_mpp) if seg_mpp else default_seg_mpp(slide)
    tile_px, margin_px = grid_sizes(slide, tile_um, margin_um, seg_mpp)
    segment = create_segmenter(segmenter, **(segmenter_params or {}))
    params = segment.keywords["params"].as_dict()
    warn_if_coarse(slide, seg_mpp)
    seconds = dict.fromkeys((*STAGES, "read_wait"), 0.0)

    # tissue and tiles
    yield ("tissue", 0, 1)
    started = time.perf_counter()
    tiles = tiles_over_tissue(slide, region, tile_px, margin_px)
    seconds["tissue"] = time.perf_counter() - started
    yield ("tissue", 1, 1)

    # the store: a new one, or the one an earlier run of the same job left
    tiling = {
        "tile_um": float(tile_um),
        "margin_um": float(margin_um),
        "tile_px": tile_px,
        "margin_px": margin_px,
        "mask_mpp": MASK_MPP,
        "n_tiles": len(tiles),
        "nucleus_id": f"tile_id * {ID_STRIDE} + index in tile",
    }
    provenance = make_provenance(
        slide.path, mpp, region, segmenter, params, encoder.card,
        encoder_precision=getattr(encoder, "precision", None),
        seg_mpp=seg_mpp, tiling=tiling,
    )  # fmt: skip
    store = IncrementalStore.open(
        out,
        run_key=_run_key(provenance),
        provenance=provenance,
        embed_dim=encoder.embed_dim,
        overwrite=overwrite,
        total_tiles=len(tiles),
    )
    try:
        todo = [tile for tile in tiles if tile.tile_id not in store.tiles_done]
        skipped = len(tiles) - len(todo)
        yield ("tiles", skipped, len(tiles))
        if store.complete:
            n_nuclei = store.n_nuclei
            reclustered = _recluster(store, n_clusters, seed, seconds)
            if reclustered is None:
                logger.info("%s is complete already; nothing to do", store.path)
            else:
                yield ("cluster", 0, 1)
                store.close()  # the new clusters are written under the store's lock
                _write_clusters(store.path, *reclustered)
                yield ("cluster", 1, 1)
            return SlideRun(store.path, n_nuclei, len(tiles), skipped, seconds)

        # tile by tile into the store
        reads = (_prefetched if prefetch else _in_turn)(slide, todo, seg_mpp)
        work = (slide, segment, segmenter, encoder, batch_size, seconds)
        with closing(reads):  # a cancel waits for the read under way, then closes
            for done, (tile, image, read_s, wait_s) in enumerate(reads, skipped + 1):
                seconds["read"] += read_s
                seconds["read_wait"] += wait_s
                obs, embeddings, outlines = _analyse_tile(tile, image, *work)
                started = time.perf_counter()
                store.append_tile(tile.tile_id, obs, embeddings, outlines)
                seconds["write"] += time.perf_counter() - started
                yield ("tiles", done, len(tiles))

        # clusters, then the finished store
        yield ("cluster", 0, 1)
        started = time.perf_counter()
        clusters = _clusters(store, n_clusters, seed)
        clustering = _clustering(clusters, n_clusters, seed)
        path = store.finish(clusters, {"clustering": clustering})
        seconds["cluster"] = time.perf_counter() - started
        yield ("cluster", 1, 1)
        n_nuclei = store.n_nuclei
    finally:
        store.close()

    logger.debug("%s: %d nuclei, seconds %s", slide.path.name, n_nuclei, seconds)
    return SlideRun(Path(path), n_nuclei, len(tiles), skipped, seconds)


def analyze_slide(
    slide: Slide,
    out: str | Path,
    encoder: Encoder,
    progress: Callable[[str, int, int], None] | None = None,
    **options: Any,
) -> SlideRun:
    """Run :func:`slide_steps` to the end.

    ``options`` are the keyword parameters of :func:`slide_steps`;
    ``progress(stage, done, total)`` is called after every step.
    """
    return run_steps(slide_steps(slide, out, encoder, **options), progress)


def grid_sizes(
    slide: Slide, tile_um: float, margin_um: float, seg_mpp: float
) -> tuple[int, int]:
    """Tile side and margin in level-0 px, whole multiples of the segmentation
    level's downsample so that every read starts on a pixel of that level.

    Returns
    -------
    tile_px, margin_px : int
    """
    for name, value, low in (("tile_um", tile_um, 0.0), ("margin_um", margin_um, -1)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name}={value!r} must be a number of microns")
        if not value > low:
            raise ValueError(
                f"{name}={value!r} must be {'positive' if low == 0 else '>= 0'} "
                "(microns; defaults tile_um=512, margin_um=24)"
            )
    if margin_um < MIN_MARGIN_UM:
        warnings.warn(
            f"margin_um={margin_um:g} is smaller than the largest nuclei "
            f"({MIN_MARGIN_UM:g} um); nuclei on tile seams may be lost or doubled",
            stacklevel=3,
        )

    # whole steps of the level that is read
    level = slide.best_level_for_mpp(seg_mpp)
    step = max(1, int(round(slide.level_downsamples[level])))
    tile_px = max(1, round(tile_um / slide.mpp / step)) * step
    margin_px = math.ceil(margin_um / slide.mpp / step) * step

    # a read must stay small enough to segment in one piece
    read_px = (tile_px + 2 * margin_px) ** 2 * (slide.mpp / seg_mpp) ** 2
    if read_px > MAX_SEG_PIXELS:
        raise ValueError(
            f"tile_um={tile_um:g} with margin_um={margin_um:g} reads "
            f"{read_px / 1e6:.0f} Mpx per tile at {seg_mpp:.3g} um/px, more than "
            f"{MAX_SEG_PIXELS / 1e6:.0f} Mpx; use a smaller tile_um (e.g. 512)"
        )
    return tile_px, margin_px


def tiles_over_tissue(
    slide: Slide, region: tuple[int, int, int, int], tile_px: int, margin_px: int
) -> list[Tile]:
    """The tiles of ``region`` that touch tissue; warns when there are none."""
    from .tissue import tissue_mask

    mask, downsample = tissue_mask(slide, MASK_MPP)
    tiles = tile_grid(slide.dimensions, tile_px, margin_px, region, mask, downsample)
    if not tiles:
        warnings.warn(
            f"no tissue found in region {region} of '{slide.path.name}' (the "
            "low-resolution mask is blank): 0 nuclei. Check that the slide holds "
            "stained tissue, or pass another region",
            stacklevel=3,
        )
    logger.debug("%d tiles over tissue in %s", len(tiles), region)
    return tiles


def read_tile(slide: Slide, tile: Tile, seg_mpp: float) -> np.ndarray:
    """A tile's read area at ``seg_mpp``: ndarray (rows, cols, 3), uint8."""
    x, y, w, h = tile.read
    return slide.read_region_at_mpp((x, y), (w, h), seg_mpp)


def segment_tile(
    image: np.ndarray, tile: Tile, segment: Segmenter, slide_mpp: float
) -> Segmentation:
    """Segment a tile's read area at the scale it was read at."""
    scale = (tile.read[2] / image.shape[1], tile.read[3] / image.shape[0])
    seg_mpp = slide_mpp * scale[0]
    return Segmentation(image, segment(image, seg_mpp), tile.read, seg_mpp, scale)


def owned_nuclei(
    seg: Segmentation, tile: Tile, segmenter: str
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The nuclei whose centroid lies in the tile's core, in level-0 px.

    Returns
    -------
    obs : DataFrame
        ``nucleus_id`` (``tile_id * 2**20 + k``), ``x``, ``y``, ``area_um2``,
        ``segmenter``, ``tile_id``; one row per kept nucleus.
    outlines : list of ndarray of shape (k, 2), float64
        Level-0 polygons, in the rows' order.
    """
    nuclei = seg.nuclei
    xy = seg.to_level0(nuclei.centroids_xy)
    keep = np.flatnonzero(owned_by(tile.core, xy))
    if len(keep) >= ID_STRIDE:
        raise ValueError(
            f"tile {tile.tile_id} holds {len(keep)} nuclei, more than the "
            f"{ID_STRIDE} its ids allow; use a smaller tile_um"
        )
    obs = pd.DataFrame(
        {
            "nucleus_id": tile.tile_id * ID_STRIDE + np.arange(len(keep)),
            "x": xy[keep, 0],
            "y": xy[keep, 1],
            "area_um2": np.asarray(nuclei.area_um2, dtype=np.float64)[keep],
            "segmenter": segmenter,
            "tile_id": np.full(len(keep), tile.tile_id, dtype=np.int64),
        }
    )
    outlines = [seg.to_level0(nuclei.outlines[i]) for i in keep]
    return obs, outlines


def _analyse_tile(tile, image, slide, segment, segmenter, encoder, batch_size, seconds):
    """Segment, crop and embed one tile; add each stage's seconds."""
    from .crops import crop_nuclei_from_slide

    # nuclei of the core
    started = time.perf_counter()
    seg = segment_tile(image, tile, segment, slide.mpp)
    obs, outlines = owned_nuclei(seg, tile, segmenter)
    seconds["segment"] += time.perf_counter() - started

    # crops at the encoder's scale, then embeddings
    started = time.perf_counter()
    card = encoder.card
    xy = obs[["x", "y"]].to_numpy()
    crops = crop_nuclei_from_slide(slide, xy, card.mpp, card.crop_size)
    seconds["crop"] += time.perf_counter() - started
    started = time.perf_counter()
    embeddings = np.empty((0, encoder.embed_dim), dtype=np.float32)
    if len(crops):
        embeddings = encoder.embed(crops, batch_size=batch_size)
    seconds["embed"] += time.perf_counter() - started
    return obs, embeddings, outlines


def _in_turn(slide: Slide, tiles: list[Tile], seg_mpp: float) -> Iterator[tuple]:
    """``(tile, image, read seconds, wait seconds)``, read when asked for."""
    for tile in tiles:
        image, read_s = _timed_read(slide, tile, seg_mpp)
        yield tile, image, read_s, read_s


def _prefetched(slide: Slide, tiles: list[Tile], seg_mpp: float) -> Iterator[tuple]:
    """``(tile, image, read seconds, wait seconds)``, the next tile read ahead.

    The reads go through a second handle on the file (decoders are not safe to
    share between threads); closing the iterator waits for the read under way.
    """
    if not tiles:
        return
    reader = _second_handle(slide)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="lemon-tile-read") as pool:
            ahead = pool.submit(_timed_read, reader, tiles[0], seg_mpp)
            for i, tile in enumerate(tiles):
                started = time.perf_counter()
                image, read_s = ahead.result()
                wait_s = time.perf_counter() - started
                if i + 1 < len(tiles):
                    ahead = pool.submit(_timed_read, reader, tiles[i + 1], seg_mpp)
                yield tile, image, read_s, wait_s
    finally:
        reader.close()


def _timed_read(slide: Slide, tile: Tile, seg_mpp: float) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    image = read_tile(slide, tile, seg_mpp)
    return image, time.perf_counter() - started


def _second_handle(slide: Slide) -> Slide:
    """The same file opened again, with the same mpp (its warnings already shown)."""
    from .slide import Slide

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Slide(slide.path, mpp=slide.mpp)


def _clustering(clusters: np.ndarray, n_clusters: int, seed: int) -> dict:
    """How the ``cluster`` column was made (``requested``: the k asked for)."""
    return {
        "method": "kmeans_stream",
        "n_clusters": int(len(np.unique(clusters))),
        "requested": int(n_clusters),
        "seed": int(seed),
    }


def _recluster(store: Any, n_clusters: int, seed: int, seconds: dict) -> Any:
    """New clusters of a finished store when ``n_clusters`` or ``seed`` changed.

    Returns ``(clusters, clustering)``, or None when the stored ones were made
    with these settings (the latest record wins: ``uns["lemon_clustering"]``
    from a re-clustering, else the provenance's).
    """
    made = _stored_clustering(store.path)
    asked = made.get("requested", made.get("n_clusters"))
    if asked == n_clusters and made.get("seed", seed) == seed:
        return None
    logger.info("re-clustering %s into %d clusters", store.path.name, n_clusters)
    started = time.perf_counter()
    clusters = _clusters(store, n_clusters, seed)
    seconds["cluster"] = time.perf_counter() - started
    return clusters, _clustering(clusters, n_clusters, seed)


def _stored_clustering(path: Path) -> dict:
    """The record of the latest clustering of a finished store (zarr)."""
    import zarr
    from anndata.io import read_elem

    root = zarr.open_group(str(path), mode="r")
    for key in (f"uns/{CLUSTERING_KEY}", "uns/lemon/clustering"):
        if key in root:
            return dict(read_elem(root[key]))
    return {}


def _write_clusters(path: Path, clusters: np.ndarray, clustering: dict) -> None:
    """Replace the ``cluster`` column of a finished store, and say how it was made."""
    from .store_columns import write_analysis

    column = pd.Categorical(clusters.astype(np.int64))
    write_analysis(path, obs={"cluster": column}, uns={CLUSTERING_KEY: clustering})


def _clusters(store: Any, n_clusters: int, seed: int) -> np.ndarray:
    """Streaming k-means labels of every stored nucleus, int64 (n,)."""
    from .analysis.clusters import cluster_kmeans_stream

    if store.n_nuclei == 0:
        return np.empty(0, dtype=np.int64)
    n = store.n_nuclei
    chunks = partial(store.iter_embeddings, CLUSTER_CHUNK)
    return cluster_kmeans_stream(chunks, n_clusters, seed, n_obs=n)


def _run_key(provenance: dict[str, Any]) -> dict[str, Any]:
    """What must match for a store to be resumed: input, parameters, weights.

    Passed through JSON so that it compares equal to the stored copy.
    """
    keys = ("source", "mpp", "region", "segmenter", "encoder", "seg_mpp", "tiling")
    return json.loads(json.dumps({k: provenance.get(k) for k in keys}))


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r} must be a whole number >= 1")
