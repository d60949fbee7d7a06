"""How close the nucleus-size estimate of the pixel size comes to the truth.

1. The reference: the median nucleus area the classical segmenter finds at the
   true scale, on MoNuSeg 2018 (44 tiles, the XML's MicronsPerPixel) and on
   CMU-1-Small-Region.svs (0.499 um/px), with the tile sampling of
   ``estimate_mpp`` (``napari_lemon.mpp_estimate.REFERENCE_AREA_UM2``).
2. The estimate against the truth on every MoNuSeg tile, CMU-1 (SVS and its
   derived pyramid), and the values given for the CRC images (20x per the
   dataset paper) and the TCGA JPEG 2000 slide (no recorded scale).

Usage::

    python benchmarks/mpp_estimate.py [--data ../shared/data]
        [--out benchmarks/results/mpp_estimate.json]

Data: MoNuSeg 2018 (Kumar et al., IEEE TMI 36(7), 2017 and 39(5), 2020),
CRCHistoPhenotypes (Sirinukunwattana et al., IEEE TMI 35(5), 2016),
CMU-1-Small-Region (OpenSlide test data), TCGA.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import time
import warnings
from pathlib import Path

import numpy as np
from machine import describe

import napari_lemon
from napari_lemon.mpp_estimate import (
    REFERENCE_AREA_UM2,
    estimate_mpp,
    measure_area,
    tissue_tiles,
)
from napari_lemon.slide import open_slide

REPO = Path(__file__).resolve().parents[1]


def monuseg_tiles(data: Path) -> list[tuple[Path, float]]:
    """Every MoNuSeg tile with the MicronsPerPixel of its XML (0.25 if none)."""
    tiles = []
    for image in sorted((data / "monuseg").glob("*/images/*.tif")):
        xml = image.parents[1] / "annotations" / f"{image.stem}.xml"
        found = (
            re.search(r'MicronsPerPixel="([0-9.]+)"', xml.read_text())
            if xml.exists()
            else None
        )
        tiles.append((image, float(found.group(1)) if found else 0.25))
    return tiles


def reference_areas(path: Path, mpp: float) -> np.ndarray:
    """Nucleus areas (um2) at the true scale, on the tiles estimate_mpp samples."""
    with open_slide(path) as slide:
        boxes = tissue_tiles(slide, 8)
        tiles = [slide.read_region(box[:2], 0, box[2:]) for box in boxes]
    return np.concatenate([measure_area(tile, mpp) for tile in tiles])


def estimate(path: Path, truth: float | None) -> dict:
    with open_slide(path) as slide, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        try:
            found = estimate_mpp(slide)
        except ValueError as err:
            print(json.dumps({"file": path.name, "truth": truth, "error": str(err)}))
            return {"file": path.name, "truth": truth, "refused": str(err)}
    row = {
        "file": path.name,
        "truth": truth,
        "estimate": round(found.mpp, 4),
        "error": round(found.mpp / truth - 1, 4) if truth else None,
        "n_nuclei": found.n_nuclei,
        "spread": round(found.spread, 4),
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(row))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    wsi, monuseg = args.data / "wsi", monuseg_tiles(args.data)

    # the reference medians
    pooled = np.concatenate([reference_areas(path, mpp) for path, mpp in monuseg])
    cmu = reference_areas(wsi / "CMU-1-Small-Region.svs", 0.499)
    reference = {
        "monuseg_median_um2": round(float(np.median(pooled)), 2),
        "monuseg_nuclei": len(pooled),
        "cmu1_median_um2": round(float(np.median(cmu)), 2),
        "cmu1_nuclei": len(cmu),
        "constant_um2": REFERENCE_AREA_UM2,
    }
    print(json.dumps(reference))

    # estimates against the truth, then where the truth is not recorded
    rows = [estimate(path, mpp) for path, mpp in monuseg]
    rows += [
        estimate(wsi / "CMU-1-Small-Region.svs", 0.499),
        estimate(wsi / "CMU-1-Small-Region_pyramid_DERIVED.tiff", 0.499),
        estimate(wsi / "tcga-cr-7395-01a-01-ts1.svs", None),
    ]
    crc = sorted((args.data / "crc" / "images").glob("*.png"), key=_number)[:10]
    rows += [estimate(path, None) for path in crc]

    errors = np.abs([r["error"] for r in rows if r.get("error") is not None])
    summary = {
        "max_abs_error": round(float(errors.max()), 4),
        "median_abs_error": round(float(np.median(errors)), 4),
    }
    print(json.dumps(summary))
    if args.out:
        result = {
            "date": datetime.date.today().isoformat(),
            "version": napari_lemon.__version__,
            "machine": describe(),
            "reference": reference,
            "summary": summary,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


def _number(path: Path) -> int:
    return int(re.sub(r"\D", "", path.stem) or 0)


if __name__ == "__main__":
    main()
