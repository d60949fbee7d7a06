"""Tune the U-Net segmenter's post-processing on the MoNuSeg training tiles.

The network runs once per tile; the watershed that turns its two maps into
instances then runs for every combination of ``foreground_threshold``,
``marker_height`` and ``min_area_um2`` in the grid. The combination with the
best mean PQ over the 13 annotated training tiles is printed (and written as
JSON); the test tiles are never looked at here.

Usage::

    python benchmarks/tune_unet.py [--data ../shared/data]
        [--out benchmarks/results/tune_unet.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from segmentation import MONUSEG_MPP, rasterise, read_tile
from skimage.morphology import h_maxima

from napari_lemon.segment.metrics import score_instances
from napari_lemon.segment.unet import (
    UNetParams,
    _nearest,
    _resample,
    maps_to_labels,
    predict_maps,
)
from napari_lemon.segment.unet_model import load_unet

REPO = Path(__file__).resolve().parents[1]
# NOTE: a first, wider pass (threshold 0.4, marker height 0.05-0.2, min area
# 5-15 um2) found higher marker heights worse and min area 10-15 um2 best
GRID = {
    "foreground_threshold": [0.4, 0.5, 0.6],
    "marker_height": [0.02, 0.05],
    "min_area_um2": [10.0],
}


def tile_maps(xml: Path, params: UNetParams) -> dict:
    """The network's maps of one tile, and its truth at the tile's resolution."""
    image, mpp, polygons = read_tile(xml)
    model, card = load_unet(params.weights, "cpu")
    work_shape = tuple(round(n * mpp / card.mpp) for n in image.shape[:2])
    work = _resample(image.astype(np.float32) / 255.0, work_shape)
    foreground, distance = predict_maps(model, card, work, params)
    return {
        "maps": (foreground, distance),
        "work_shape": work_shape,
        "shape": image.shape[:2],
        "mpp": mpp,
        "gt": rasterise(polygons, image.shape[:2]),
    }


def score_tile(tile: dict, params: UNetParams) -> float:
    """Scores of one tile under ``params``, cut as :func:`segment_unet` cuts a
    40x tile (seeds at the network's scale, instances at the tile's)."""
    foreground, distance = tile["maps"]
    peaks = h_maxima(distance, params.marker_height) > 0
    shape = tile["shape"]
    foreground, distance = (_resample(m, shape) for m in (foreground, distance))
    peaks = _nearest(peaks, shape)
    labels = maps_to_labels(foreground, distance, params, tile["mpp"], peaks)
    return score_instances(tile["gt"], labels).as_dict()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "tune_unet.json"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)

    # predict once per tile
    base = UNetParams(device="cpu")
    folder = args.data / "monuseg" / "train" / "annotations"
    tiles = [tile_maps(xml, base) for xml in sorted(folder.glob("*.xml"))]

    # post-process every combination
    rows = []
    for values in itertools.product(*GRID.values()):
        params = replace(base, **dict(zip(GRID, values, strict=True)))
        scores = [score_tile(tile, params) for tile in tiles]
        mean = {k: float(np.mean([s[k] for s in scores])) for k in ("aji", "pq")}
        rows.append(dict(zip(GRID, values, strict=True)) | mean)
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: r["pq"])
    print(f"best on MoNuSeg train (mean PQ): {best}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"grid": GRID, "rows": rows, "best": best, "mpp": MONUSEG_MPP}, indent=2
        )
    )


if __name__ == "__main__":
    main()
