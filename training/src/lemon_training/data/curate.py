"""Curate nucleus crops from many images or slides into a sharded zarr dataset.

Each input (see :mod:`.sources`) becomes one shard: its nuclei are imported or
segmented tile by tile over its tissue, sampled (``per_slide``, seeded by the
input's name), and cut as ``size`` x ``size`` crops at ``crop_mpp`` (60x60 at
0.25 um/px by default: room for the rotation-crop to 40x40 without black
corners). Shards are written in parallel by Dask workers: a local
``distributed.LocalCluster`` by default, an existing cluster by its address, or
dask's threads or synchronous schedulers. The layout is in :mod:`.dataset`.

Curation resumes: a rerun of the same command skips the shards that are
complete, redoes the others and writes ``manifest.json`` last. A folder curated
with other options or inputs is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .dataset import FORMAT, VERSION, shard_attrs, shard_path, write_shard

if TYPE_CHECKING:
    import argparse

    import pandas as pd

    from napari_lemon.slide import Slide

    from .sources import SourceItem

logger = logging.getLogger("lemon_training")

TILE_UM = 512.0  # side of a segmentation tile
MIN_PER_TILE = 16  # least nuclei a sampled slide takes from each tile it segments
LOCAL, THREADS, SYNC = "local", "threads", "synchronous"
CONNECT_TIMEOUT = "10s"  # to reach a running Dask scheduler


class CurationError(ValueError):
    """Curation cannot start or did not finish; the message says what to do."""


@dataclass(frozen=True)
class CurateOptions:
    """What a dataset is curated with; a rerun must use the same.

    Attributes
    ----------
    size : int
        Crop side in pixels.
    crop_mpp : float
        Microns per pixel of the crops.
    per_slide : int or None
        Nuclei sampled per input; None keeps them all.
    seed : int
        Seed of the sampling (combined with each input's name).
    segmenter : str
        Segmenter of inputs without imported nuclei.
    tile_um : float
        Side of the tiles a slide is segmented in.
    """

    size: int = 60
    crop_mpp: float = 0.25
    per_slide: int | None = None
    seed: int = 0
    segmenter: str = "classical"
    tile_um: float = TILE_UM

    def __post_init__(self) -> None:
        from napari_lemon.segment import SEGMENTERS

        for name in ("size", "crop_mpp", "tile_um", "per_slide"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}={value!r} must be positive")
        if self.segmenter not in SEGMENTERS:
            raise ValueError(
                f"segmenter={self.segmenter!r} is unknown; choose one of "
                f"{sorted(SEGMENTERS)}"
            )


def curate(
    items: list[SourceItem],
    out: str | Path,
    options: CurateOptions | None = None,
    scheduler: str = LOCAL,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write (or finish) the dataset of ``items`` in the folder ``out``.

    Parameters
    ----------
    items : list of SourceItem
        The inputs, one shard each (see :func:`.sources.find_inputs`).
    scheduler : str
        ``"local"`` (a new ``LocalCluster``), ``"threads"``, ``"synchronous"``,
        or the address of a running Dask scheduler.
    workers : int, optional
        Worker processes of the local cluster; default one per core, at most one
        per input.
    progress : callable, optional
        ``progress(done, total)`` after each shard.

    Returns
    -------
    dict
        The manifest.
    """
    options = options or CurateOptions()
    out, started = Path(out), time.perf_counter()
    if not items:
        raise CurationError("no inputs to curate; give INPUTS or --preset")
    _record_options(out, items, options)

    # the shards still to do, then the manifest
    todo = [item for item in items if shard_attrs(shard_path(out, item.name)) is None]
    logger.info("%d of %d shards to write in %s", len(todo), len(items), out)
    if not todo and (out / "manifest.json").is_file():  # finished before
        return json.loads((out / "manifest.json").read_text())
    results = run_shards(todo, out, options, scheduler, workers, progress)
    _check_results(results, len(items))
    return _write_manifest(out, items, options, time.perf_counter() - started)


def curate_shard(item: SourceItem, out: str | Path, options: CurateOptions) -> int:
    """Find, sample and crop the nuclei of one input; write its shard.

    Returns
    -------
    int
        Crops written.
    """
    rng = np.random.default_rng([options.seed, zlib.crc32(item.name.encode())])
    with _open(item) as slide:
        centres, quota = find_centres(slide, item, options, rng)
        chosen = sample_centres(centres, options.per_slide, quota, rng)
        chosen = chosen.sort_values("tile", kind="stable")

        # crops tile by tile, straight into the shard
        attrs = {
            "slide": item.path,
            "source": item.source,
            "split": item.split,
            "method": item.method,
            "mpp": slide.mpp,
            "n_nuclei": len(centres),
            "cell_type_counts": {
                str(k): int(v) for k, v in chosen.cell_type.value_counts().items()
            },
        }
        path = shard_path(out, item.name)
        return write_shard(
            path, chosen, _crops(slide, chosen, options), attrs, options.size
        )


def _open(item: SourceItem) -> Slide:
    """The input's slide, at its own pixel size or else at ``item.mpp``."""
    from napari_lemon.slide import open_slide, require_mpp

    slide = open_slide(item.path)
    if slide.mpp is None and item.mpp is not None:
        slide.close()
        slide = open_slide(item.path, mpp=item.mpp)
    require_mpp(slide)
    return slide


def find_centres(
    slide: Slide, item: SourceItem, options: CurateOptions, rng: np.random.Generator
) -> tuple[pd.DataFrame, int | None]:
    """The input's nuclei (``x``, ``y``, ``cell_type``, ``tile``) and tile quota.

    Imported centres are all returned (quota None). Otherwise tissue tiles are
    segmented in a seeded random order until they hold enough nuclei for
    ``per_slide`` at ``quota`` nuclei per tile (all tiles when not sampling).
    """
    import pandas as pd

    from .sources import segment_tile, tissue_tiles

    if item.centres is not None:
        return _tiled(_inside(item, slide), slide, options.tile_um), None

    # tiles over tissue and what each may give
    tiles = tissue_tiles(slide, options.tile_um)
    n = options.per_slide
    quota = None if n is None else max(math.ceil(n / max(len(tiles), 1)), MIN_PER_TILE)
    found, enough = [], 0
    for tile in rng.permutation(len(tiles)):
        xy = segment_tile(slide, tiles[tile], options.segmenter)
        found.append(pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "tile": tile}))
        enough += len(xy) if quota is None else min(len(xy), quota)
        if n is not None and enough >= n:
            break
    none = pd.DataFrame({"x": [], "y": [], "tile": np.empty(0, np.int64)})
    centres = pd.concat(found, ignore_index=True) if found else none
    return centres.assign(cell_type=""), quota


def _inside(item: SourceItem, slide: Slide) -> pd.DataFrame:
    """Imported centres, refusing those outside the image."""
    centres = item.centres
    width, height = slide.dimensions
    x, y = centres.x.to_numpy(), centres.y.to_numpy()
    outside = (x < -1) | (x > width) | (y < -1) | (y > height)
    if outside.any():
        k = int(np.argmax(outside))
        raise ValueError(
            f"{int(outside.sum())} centres of {item.name!r} lie outside the "
            f"{width}x{height} image '{item.path}', e.g. (x, y)=({x[k]:g}, {y[k]:g}); "
            "x is the column and y the row, in pixels of level 0"
        )
    return centres


def _tiled(centres: pd.DataFrame, slide: Slide, tile_um: float) -> pd.DataFrame:
    """``centres`` with the index of the tile each lies in (row by row)."""
    step = max(1, round(tile_um / slide.mpp))
    columns = math.ceil(slide.dimensions[0] / step)
    col = np.clip(centres.x.to_numpy() // step, 0, columns - 1).astype(np.int64)
    row = np.maximum(centres.y.to_numpy() // step, 0).astype(np.int64)
    return centres.assign(tile=row * columns + col)


def sample_centres(
    centres: pd.DataFrame, n: int | None, quota: int | None, rng: np.random.Generator
) -> pd.DataFrame:
    """At most ``n`` rows of ``centres``, at random, keeping their order.

    With a ``quota``, up to ``quota`` rows of each tile are taken first and the
    rest only fill up what is missing, so the sample spreads over the tiles.
    """
    import pandas as pd

    if n is None or len(centres) <= n:
        return centres
    key = rng.random(len(centres))
    later = np.zeros(len(centres), dtype=bool)
    if quota is not None:  # rank of each key inside its tile
        rank = pd.Series(key).groupby(centres.tile.to_numpy()).rank(method="first")
        later = rank.to_numpy() > quota
    chosen = np.lexsort((key, later))[:n]
    return centres.iloc[np.sort(chosen)]


def _crops(slide: Slide, chosen: pd.DataFrame, options: CurateOptions) -> Iterator:
    """Crops of ``chosen``, one batch per tile (one region read per tile)."""
    from napari_lemon.crops import crop_nuclei_from_slide

    for _, group in chosen.groupby("tile", sort=False):
        xy = group[["x", "y"]].to_numpy()
        yield crop_nuclei_from_slide(slide, xy, options.crop_mpp, options.size)


def _shard_task(item: SourceItem, out: Path, options: CurateOptions) -> tuple:
    """Run :func:`curate_shard`; return ``(name, crops, error message or None)``."""
    try:
        return item.name, curate_shard(item, out, options), None
    except Exception as err:  # reported with the others once all shards ran
        logger.debug("shard %s failed", item.name, exc_info=True)
        return item.name, 0, f"{type(err).__name__}: {err}"


def run_shards(
    items: list[SourceItem],
    out: Path,
    options: CurateOptions,
    scheduler: str = LOCAL,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple]:
    """Write the shards of ``items`` on a Dask scheduler; see :func:`curate`.

    Returns
    -------
    list of (name, n_crops, error or None)
    """
    if not items:
        return []
    if scheduler in (THREADS, SYNC):
        return _run_dask_local(items, out, options, scheduler, progress)
    return _run_distributed(items, out, options, scheduler, workers, progress)


def _run_dask_local(items, out, options, scheduler, progress) -> list[tuple]:
    import dask
    from dask.callbacks import Callback

    tasks = [dask.delayed(_shard_task, pure=False)(i, out, options) for i in items]
    keys, done = {task.key for task in tasks}, []

    def count(key, *_):
        if key in keys and progress is not None:
            done.append(key)
            progress(len(done), len(tasks))

    with Callback(posttask=count):
        return list(dask.compute(*tasks, scheduler=scheduler))


def _run_distributed(items, out, options, scheduler, workers, progress):
    from distributed import Client, LocalCluster, as_completed

    logging.getLogger("distributed").setLevel(logging.WARNING)  # not per event
    if scheduler == LOCAL:
        n = workers or min(len(items), os.cpu_count() or 1)
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    else:
        cluster, client = None, _connect(scheduler)

    # one task per shard; results as they come
    results = []
    try:
        futures = client.map(_shard_task, items, out=out, options=options, pure=False)
        for future in as_completed(futures):
            results.append(future.result())
            if progress is not None:
                progress(len(results), len(items))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def _connect(address: str):
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise CurationError(
            f"scheduler={address!r}: could not connect to a Dask scheduler there "
            f"({err}); start one (`dask scheduler`), or pass --scheduler local, "
            "threads or synchronous"
        ) from err


def _check_results(results: list[tuple], n_items: int) -> None:
    """Refuse to finish when inputs failed; warn about inputs without nuclei."""
    failed = [(name, error) for name, _, error in results if error]
    empty = [name for name, n, error in results if not n and not error]
    if empty:
        logger.warning("no nuclei in %d inputs: %s", len(empty), ", ".join(empty[:10]))
    if failed:
        lines = "\n".join(f"  {name}: {error}" for name, error in failed[:20])
        raise CurationError(
            f"{len(failed)} of {n_items} inputs failed (finished shards are kept):\n"
            f"{lines}\nfix or leave out these inputs and rerun to finish the dataset"
        )


def _record_options(out: Path, items: list[SourceItem], options: CurateOptions):
    """Write ``curate.json``, or check that ``out`` was curated the same way."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        "options": asdict(options),
        "inputs": [item.identity() for item in items],
    }
    record = json.loads(json.dumps(record))
    path = out / "curate.json"
    if path.is_file():
        _compare(json.loads(path.read_text()), record, out)
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CurationError(
            f"--out '{out}' exists and is not a curated dataset (no curate.json); "
            "give a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def _compare(old: dict, new: dict, out: Path) -> None:
    """Refuse to resume ``out`` with other options or inputs."""
    changes = [
        f"{key} {old['options'].get(key)!r} -> {value!r}"
        for key, value in new["options"].items()
        if old["options"].get(key) != value
    ]
    before, after = ({str(i) for i in rec["inputs"]} for rec in (old, new))
    if before != after:
        changes.append(f"inputs: {len(after - before)} new or changed, ")
        changes[-1] += f"{len(before - after)} gone"
    if old.get("version") != new["version"]:
        changes.append(f"format version {old.get('version')} -> {new['version']}")
    if changes:
        raise CurationError(
            f"--out '{out}' was curated with other options ({'; '.join(changes)}); "
            "rerun with the same options to resume, or give another --out"
        )


def _write_manifest(out, items, options, seconds: float) -> dict:
    """Summarise the complete shards in ``manifest.json``, written atomically."""
    import pandas as pd

    from napari_lemon.segment import PARAMS

    shards = [_shard_entry(out, item) for item in items]
    table = pd.DataFrame(shards)
    cell_types = sum((Counter(s["cell_type_counts"]) for s in shards), Counter())
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "crop_size": options.size,
        "mpp": options.crop_mpp,
        "n_crops": int(table.n_crops.sum()),
        "n_shards": len(shards),
        "per_source": _sums(table, "source"),
        "per_split": _sums(table, "split"),
        "per_method": _sums(table, "method"),
        "per_cell_type": {k or "unknown": v for k, v in sorted(cell_types.items())},
        "options": asdict(options),
        "segmenter_params": _params(PARAMS[options.segmenter]()),
        "seconds": round(seconds, 1),  # of the run that finished the dataset
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shards": shards,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(out / "manifest.json")
    return manifest


def _params(params) -> dict:
    return asdict(params) if is_dataclass(params) else {}


def _shard_entry(out: Path, item: SourceItem) -> dict:
    attrs = shard_attrs(shard_path(out, item.name))
    keys = ("slide", "source", "split", "method", "mpp", "n_nuclei", "n_crops")
    keys += ("cell_type_counts",)
    return {"name": item.name} | {key: attrs[key] for key in keys}


def _sums(table, column: str) -> dict[str, int]:
    sums = table.groupby(column).n_crops.sum()
    return {str(key or "none"): int(value) for key, value in sums.items()}


# NOTE: kept for the probes of ``evaluate/``, which crop whole images in memory
def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (rows, cols, 3) uint8."""
    from skimage import io

    image = io.imread(path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)


def cut_crops(
    nuclei: pd.DataFrame,
    size: int = 60,
    mpp: float = 0.25,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> np.ndarray:
    """Crops for every row of a centre table (``image``, ``x``, ``y``, ``mpp``).

    Returns
    -------
    ndarray of shape (len(nuclei), size, size, 3), uint8, in the table's order
    """
    from napari_lemon.crops import crop_nuclei

    out = np.empty((len(nuclei), size, size, 3), dtype=np.uint8)
    groups = list(nuclei.groupby("image", sort=False).indices.items())
    for image_path, index in progress(groups) if progress else groups:
        image = read_rgb(image_path)
        rows = nuclei.iloc[index]
        xy = rows[["x", "y"]].to_numpy()
        out[index] = crop_nuclei(image, xy, float(rows.mpp.iloc[0]), mpp, size)
    return out


def add_curate_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``lemon-train curate`` (read by :func:`run_curate`)."""
    add = parser.add_argument
    add(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="slide or image files, folders of them, or CSVs of nucleus centres "
        "(image,x,y[,mpp][,cell_type][,split]); images with an ImageScope XML of "
        "the same name use its outlines instead of the segmenter",
    )
    add("--out", required=True, help="dataset folder; rerun the command to resume")
    add("--preset", help="a fixed input set: shared-train (MoNuSeg + CRC train)")
    add("--data-root", default="../shared/data", help="data folder of --preset")
    add("--per-slide", type=int, help="nuclei sampled per input (default: all)")
    add("--seed", type=int, default=0, help="seed of the sampling")
    add("--mpp", type=float, help="microns per pixel of files that record none")
    add("--annotations", help="folder of ImageScope XML files named <image>.xml")
    add("--size", type=int, default=60, help="crop side in pixels")
    add("--crop-mpp", type=float, default=0.25, help="microns per pixel of crops")
    add("--segmenter", default="classical", help="segmenter of unannotated inputs")
    add("--tile-um", type=float, default=TILE_UM, help="segmentation tile side (um)")
    add(
        "--scheduler",
        default=LOCAL,
        help="'local' (a Dask LocalCluster, default), 'threads', 'synchronous', or "
        "the address of a running Dask scheduler (tcp://host:8786)",
    )
    add("--workers", type=int, help="local cluster workers (default: one per core)")


def run_curate(args: argparse.Namespace) -> dict:
    """``lemon-train curate``: curate ``args``' inputs; returns the manifest."""
    from tqdm import tqdm

    from .sources import check_mpp, find_inputs, preset_items, unique_names

    # inputs and options; bad ones are the user's to fix (CurationError)
    try:
        items = find_inputs(args.inputs, args.mpp, args.annotations)
        if args.preset:
            items = unique_names(preset_items(args.preset, args.data_root) + items)
        check_mpp(items)
        options = CurateOptions(
            size=args.size,
            crop_mpp=args.crop_mpp,
            per_slide=args.per_slide,
            seed=args.seed,
            segmenter=args.segmenter,
            tile_um=args.tile_um,
        )
    except ValueError as err:
        raise CurationError(str(err)) from err

    # curate, with a bar over the shards to write
    with tqdm(unit="input", disable=None) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        manifest = curate(
            items, args.out, options, args.scheduler, args.workers, progress
        )
    logger.info(
        "%d crops from %d inputs in %.0f s -> %s",
        manifest["n_crops"],
        manifest["n_shards"],
        manifest["seconds"],
        args.out,
    )
    return manifest
