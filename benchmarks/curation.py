"""Throughput of crop curation and of the training loader.

Curation: crops written per second of wall clock by ``lemon_training.data.curate``
(find the nuclei, sample, cut 60x60 crops at 0.25 um/px, write the zarr shards,
write the manifest), for two kinds of input:

- *imported*: MoNuSeg train tiles with ImageScope outlines and CRC images with
  annotated points (no segmentation; reading the XML files is not timed);
- *segmented*: CMU-1-Small-Region (20x SVS) and its derived pyramidal TIFF,
  segmented tile by tile with the classical segmenter.

each with Dask's synchronous scheduler (one process) and a ``LocalCluster``
(one worker process per core; its start-up is included).

Loader: batches of 128 crops drawn as in training (``batch_indices``), read
from RAM and from the zarr shards, without and with the background prefetch of
``iter_batches``.

Usage::

    python benchmarks/curation.py [--data ../shared/data] [--dataset runs/crops_zarr]
        [--out benchmarks/results/curation.json]

Data: MoNuSeg 2018 (Kumar et al., IEEE TMI 36(7), 2017 and 39(5), 2020),
CRCHistoPhenotypes (Sirinukunwattana et al., IEEE TMI 35(5), 2016) and
CMU-1-Small-Region (OpenSlide test data).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from machine import describe

import napari_lemon
from lemon_training.data.curate import CurateOptions, curate
from lemon_training.data.dataset import batch_indices, iter_batches, open_dataset
from lemon_training.data.sources import crc_centres, find_inputs, items_from_table

REPO = Path(__file__).resolve().parents[1]
N_BATCHES = 20
BATCH = 128


def imported_items(data: Path, n_monuseg: int = 5, n_crc: int = 40) -> list:
    """The first MoNuSeg train tiles with outlines, and the first CRC images."""
    train = data / "monuseg" / "train"
    xmls = sorted((train / "annotations").glob("*.xml"))[:n_monuseg]
    tiles = [train / "images" / f"{xml.stem}.tif" for xml in xmls]
    monuseg = find_inputs(tiles, annotations=train / "annotations")
    crc = items_from_table(crc_centres(data / "crc", ("train", "validation")))
    return monuseg + crc[:n_crc]


def segmented_items(data: Path) -> list:
    wsi = data / "wsi"
    return find_inputs(
        [
            wsi / "CMU-1-Small-Region.svs",
            wsi / "CMU-1-Small-Region_pyramid_DERIVED.tiff",
        ]
    )


def time_curation(name: str, items: list, scheduler: str, workdir: Path) -> dict:
    """Curate ``items`` into a fresh folder; crops per wall second."""
    out = workdir / f"{name}-{scheduler}"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    manifest = curate(items, out, CurateOptions(), scheduler)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    n = manifest["n_crops"]
    return {
        "set": name,
        "scheduler": scheduler,
        "inputs": len(items),
        "crops": n,
        "seconds": round(seconds, 2),
        "crops_per_s": round(n / seconds, 1),
        # the workers of a local cluster are other processes: no CPU figure
        "crops_per_cpu_s": round(n / cpu, 1) if scheduler == "synchronous" else None,
        "load_average_before": round(load, 2),
    }


def time_loader(folder: Path) -> list[dict]:
    """Batches of 128 from RAM and from zarr, direct and prefetched."""
    rows = []
    for mode, limit in (("ram", 64.0), ("zarr", 0.0)):
        start = time.perf_counter()
        dataset = open_dataset(folder, memory_limit_gb=limit)
        opened = time.perf_counter() - start

        # direct reads, then the prefetching iterator
        start, cpu_start = time.perf_counter(), time.process_time()
        for step in range(N_BATCHES):
            dataset.read(batch_indices(step, len(dataset), BATCH, seed=0))
        direct = time.perf_counter() - start
        direct_cpu = time.process_time() - cpu_start
        batches = iter_batches(dataset, BATCH, seed=0, start_step=N_BATCHES)
        next(batches)  # the first batch waits for the reader to start
        start = time.perf_counter()
        for _ in range(N_BATCHES):
            next(batches)
        prefetched = time.perf_counter() - start
        batches.close()

        for how, seconds in (("direct", direct), ("prefetch", prefetched)):
            rows.append(
                {
                    "source": mode,
                    "read": how,
                    "crops": len(dataset),
                    "open_seconds": round(opened, 2),
                    "batches_per_s": round(N_BATCHES / seconds, 1),
                    "images_per_s": round(N_BATCHES * BATCH / seconds),
                    "images_per_cpu_s": round(N_BATCHES * BATCH / direct_cpu)
                    if how == "direct"
                    else None,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--dataset", help="a curated dataset for the loader timings")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/curation.json"))
    args = parser.parse_args()
    data = Path(args.data)

    # curation
    workdir = Path(tempfile.mkdtemp(prefix="lemon-curation-"))
    sets = {"imported": imported_items(data), "segmented": segmented_items(data)}
    curation = [
        time_curation(name, items, scheduler, workdir)
        for name, items in sets.items()
        for scheduler in ("synchronous", "local")
    ]

    # loader, on the given dataset or the imported set just written
    folder = Path(args.dataset) if args.dataset else workdir / "imported-synchronous"
    loader = time_loader(folder)
    name = args.dataset or "the imported set above"
    shutil.rmtree(workdir, ignore_errors=True)

    header = ("set", "scheduler", "inputs", "crops", "s", "crops/s", "per CPU-s")
    print("{:10} {:12} {:>6} {:>6} {:>7} {:>8} {:>9}".format(*header))
    for r in curation:
        print(
            f"{r['set']:10} {r['scheduler']:12} {r['inputs']:6d} {r['crops']:6d} "
            f"{r['seconds']:7.1f} {r['crops_per_s']:8.1f} "
            f"{r['crops_per_cpu_s'] or '':>9}"
        )
    print(f"\nloader, batch {BATCH}, {loader[0]['crops']} crops of {name}")
    for r in loader:
        print(
            f"{r['source']:5} {r['read']:9} {r['batches_per_s']:7.1f} batches/s "
            f"{r['images_per_s']:7d} images/s (open {r['open_seconds']} s; "
            f"{r['images_per_cpu_s'] or '-'} images per CPU-s)"
        )

    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "napari_lemon": napari_lemon.__version__,
        "machine": describe(),
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "curation": curation,
        "loader": {"dataset": name, "batch_size": BATCH, "rows": loader},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
