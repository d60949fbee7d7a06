"""Instance-segmentation benchmark of the nucleus segmenters on MoNuSeg.

Scores per tile, against the ImageScope outlines rasterised at the tile's own
resolution (regions with fewer than three vertices skipped, later outlines on
top of earlier ones): AJI (Kumar et al., 2017), PQ with DQ and SQ (Kirillov et
al., 2019), detection F1 / precision / recall at IoU >= 0.5, all from
``napari_lemon.segment.metrics``; and the older centroid-in-outline detection F1.
Overall: the mean over tiles (as published results on MoNuSeg are given) and the
pooled counts. Throughput: input megapixels per second of segmentation, by the
wall clock and per CPU second (one process; the U-Net runs on one thread).

Usage::

    python benchmarks/segmentation.py [--data ../shared/data]
        [--segmenters classical unet] [--splits test train]
        [--out benchmarks/results/segmentation.json]
        [--set classical.min_area_um2=12] [--set unet.marker_height=0.1]
    python benchmarks/segmentation.py --report benchmarks/results/segmentation.json

Data: MoNuSeg 2018 (Kumar et al., IEEE TMI 36(7), 2017 and 39(5), 2020), the
14 official test tiles and the 13 annotated training tiles; CMU-1-Small-Region
(OpenSlide test data) as a 20x sanity check.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
from machine import describe

import napari_lemon
from napari_lemon.segment import PARAMS, create_segmenter
from napari_lemon.segment.imagescope import (
    polygon_centroids,
    rasterise,
    read_imagescope_xml,
)
from napari_lemon.segment.metrics import pool_scores, score_instances
from napari_lemon.slide import open_slide

REPO = Path(__file__).resolve().parents[1]
MONUSEG_MPP = 0.25  # one training XML records no MicronsPerPixel; the rest 0.246-0.253
SCORES = ("aji", "pq", "dq", "sq", "f1", "precision", "recall")


def match_centroids(
    predicted_xy: np.ndarray, gt_labels: np.ndarray, gt_centroids_xy: np.ndarray
) -> int:
    """Number of ground-truth outlines matched one-to-one by predicted centroids."""
    cols = np.clip(np.rint(predicted_xy[:, 0]).astype(int), 0, gt_labels.shape[1] - 1)
    rows = np.clip(np.rint(predicted_xy[:, 1]).astype(int), 0, gt_labels.shape[0] - 1)
    hit = gt_labels[rows, cols]
    inside = hit > 0

    # one prediction per outline: the nearest to its centroid (sort, keep first)
    offsets = predicted_xy[inside] - gt_centroids_xy[hit[inside] - 1]
    order = np.lexsort((np.hypot(*offsets.T), hit[inside]))
    return len(np.unique(hit[inside][order]))


def timed(segment, image: np.ndarray, mpp: float) -> tuple:
    """Nuclei, and the megapixels, wall seconds and CPU seconds it took."""
    start, cpu_start = time.perf_counter(), time.process_time()
    nuclei = segment(image, mpp)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    megapixels = image.shape[0] * image.shape[1] / 1e6
    return nuclei, {"megapixels": megapixels, "seconds": wall, "cpu_seconds": cpu}


def throughput(timing: dict) -> dict:
    return {
        "mpx_per_s": timing["megapixels"] / timing["seconds"],
        "mpx_per_cpu_s": timing["megapixels"] / timing["cpu_seconds"],
    }


def read_tile(xml: Path) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """A MoNuSeg tile's RGB pixels, microns per pixel and outlines."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # regions with < 3 vertices are skipped
        truth = read_imagescope_xml(xml)
    image_path = xml.parent.parent / "images" / f"{xml.stem}.tif"
    with open_slide(image_path, mpp=truth.mpp or MONUSEG_MPP) as slide:
        image = slide.read_region((0, 0), 0, slide.dimensions)
        return image, slide.mpp, truth.polygons


def evaluate_tile(xml: Path, segment) -> dict:
    """Segment one MoNuSeg tile and score its instances and detections."""
    image, mpp, polygons = read_tile(xml)
    nuclei, timing = timed(segment, image, mpp)
    gt_labels = rasterise(polygons, image.shape[:2])

    # instance scores, then the centroid rule
    scores = score_instances(gt_labels, nuclei.labels)
    hits = match_centroids(nuclei.centroids_xy, gt_labels, polygon_centroids(polygons))
    centroid_f1 = 2 * hits / (len(nuclei) + len(polygons))
    row = {"tile": xml.stem, **scores.as_dict(), "centroid_f1": centroid_f1}
    return row | timing


def evaluate_split(folder: Path, segment) -> dict:
    """Per-tile scores, their means and the pooled scores over a split."""
    rows = [evaluate_tile(xml, segment) for xml in sorted(folder.glob("*.xml"))]
    pooled = pool_scores([_as_scores(r) for r in rows]).as_dict()
    timing = {
        k: sum(r[k] for r in rows) for k in ("megapixels", "seconds", "cpu_seconds")
    }
    mean = {k: float(np.mean([r[k] for r in rows])) for k in SCORES + ("centroid_f1",)}
    overall = {"tiles": len(rows), "n_gt": pooled["n_gt"], "n_pred": pooled["n_pred"]}
    overall |= {"mean": mean, "pooled": pooled} | throughput(timing)
    return {"overall": overall, "tiles": rows}


def _as_scores(row: dict):
    from napari_lemon.segment.metrics import InstanceScores

    fields = [f.name for f in dataclasses.fields(InstanceScores)]
    return InstanceScores(**{k: row[k] for k in fields})


def count_cmu1(data: Path, segment) -> dict:
    """Nuclei found on the whole CMU-1 small region (20x, 0.499 um/px)."""
    with open_slide(data / "wsi" / "CMU-1-Small-Region.svs") as slide:
        image = slide.read_region((0, 0), 0, slide.dimensions)
        nuclei, timing = timed(segment, image, slide.mpp)
    area = np.percentile(nuclei.area_um2, [10, 50, 90]).round(1).tolist()
    return {"n_nuclei": len(nuclei), "area_um2_p10_p50_p90": area} | throughput(timing)


def markdown_table(split: dict) -> str:
    """Per-tile scores and their means as a Markdown table."""
    lines = [
        "| tile | GT | predicted | AJI | PQ | DQ | SQ | F1 | P | R |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mean = dict(split["overall"]["mean"], tile="**mean**")
    mean |= {k: split["overall"][k] for k in ("n_gt", "n_pred")}
    for r in split["tiles"] + [mean]:
        values = " | ".join(f"{r[k]:.3f}" for k in SCORES)
        lines.append(f"| {r['tile']} | {r['n_gt']} | {r['n_pred']} | {values} |")
    return "\n".join(lines)


def report(results: dict) -> str:
    """Segmenters side by side: mean scores per split, then AJI and PQ per tile."""
    names = list(results["segmenters"])
    runs = results["segmenters"]
    splits = [k for k in ("test", "train") if all(k in runs[n] for n in names)]
    lines = [
        "| segmenter | set | GT | predicted | AJI | PQ | DQ | SQ | F1 | P | R "
        "| centroid F1 | Mpx per CPU-s |",
        "|---|---|---:|---:|" + "---:|" * 9,
    ]
    for split in splits:
        for name in names:
            overall = runs[name][split]["overall"]
            values = " | ".join(
                f"{overall['mean'][k]:.3f}" for k in SCORES + ("centroid_f1",)
            )
            lines.append(
                f"| {name} | {split} | {overall['n_gt']:,} | {overall['n_pred']:,} "
                f"| {values} | {overall['mpx_per_cpu_s']:.2f} |"
            )
    for split in splits:
        header = " | ".join(f"{n} AJI | {n} PQ" for n in names)
        lines += ["", f"MoNuSeg {split}, per tile:", ""]
        lines += [f"| tile | GT | {header} |", "|---|---:|" + "---:|" * 2 * len(names)]
        for rows in zip(*(runs[n][split]["tiles"] for n in names), strict=True):
            cells = " | ".join(f"{r['aji']:.3f} | {r['pq']:.3f}" for r in rows)
            lines.append(f"| {rows[0]['tile']} | {rows[0]['n_gt']} | {cells} |")
    cmu1 = [n for n in names if "cmu1" in runs[n]]
    if cmu1:
        lines += [
            "",
            "| CMU-1-Small-Region (20x) | nuclei | area p10 / p50 / p90 um2 "
            "| Mpx per CPU-s |",
            "|---|---:|---:|---:|",
        ]
        for n in cmu1:
            c = runs[n]["cmu1"]
            area = " / ".join(f"{a:g}" for a in c["area_um2_p10_p50_p90"])
            lines.append(
                f"| {n} | {c['n_nuclei']:,} | {area} | {c['mpx_per_cpu_s']:.2f} |"
            )
    return "\n".join(lines)


def parse_overrides(pairs: list[str], segmenters: list[str]) -> dict[str, dict]:
    """``[segmenter.]name=value`` strings -> parameters per segmenter.

    A name without a segmenter applies to the first one listed.
    """
    out: dict[str, dict] = {name: {} for name in segmenters}
    for pair in pairs:
        key, _, value = pair.partition("=")
        owner, _, name = key.rpartition(".")
        owner = owner or segmenters[0]
        types = {f.name: f.type for f in dataclasses.fields(PARAMS[owner])}
        if owner not in out or name not in types:
            raise SystemExit(
                f"--set {pair!r}: unknown parameter; choose from "
                f"{[f'{owner}.{t}' for t in sorted(types)]}"
            )
        out[owner][name] = _typed(value, types[name])
    return out


def _typed(value: str, annotation: str):
    if annotation == "bool":
        return value.lower() in ("1", "true", "yes")
    if annotation == "int":
        return int(value)
    return value if annotation == "str" else float(value)


def benchmark(name: str, params: dict, args: argparse.Namespace) -> dict:
    """Every split, then the 20x slide, for one segmenter."""
    segment = create_segmenter(name, **params)
    result = {"params": PARAMS[name](**params).as_dict()}
    for split in args.splits:
        folder = args.data / "monuseg" / split / "annotations"
        result[split] = evaluate_split(folder, segment)
        overall = result[split]["overall"]
        print(f"\n## {name}: MoNuSeg {split}\n\n{markdown_table(result[split])}")
        print(
            f"\npooled: AJI {overall['pooled']['aji']:.3f}, PQ "
            f"{overall['pooled']['pq']:.3f}; throughput {overall['mpx_per_s']:.2f} "
            f"Mpx/s (wall), {overall['mpx_per_cpu_s']:.2f} Mpx per CPU second"
        )
    if not args.skip_cmu1:
        result["cmu1"] = count_cmu1(args.data, segment)
        print(f"\n{name} on CMU-1-Small-Region: {result['cmu1']}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "segmentation.json",
    )
    parser.add_argument("--segmenters", nargs="+", default=["classical", "unet"])
    parser.add_argument("--splits", nargs="+", default=["test", "train"])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[SEGMENTER.]NAME=VALUE",
        help="override a parameter of a segmenter",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--skip-cmu1", action="store_true")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="print the Markdown tables of a recorded run and exit",
    )
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="record the U-Net's scores in the card of the weights it used",
    )
    args = parser.parse_args(argv)
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return
    overrides = parse_overrides(args.set, args.segmenters)
    if "unet" in args.segmenters:
        import torch

        torch.set_num_threads(args.threads)

    # evaluate
    results = {"segmenters": {}}
    for name in args.segmenters:
        results["segmenters"][name] = benchmark(name, overrides[name], args)

    # provenance
    results["machine"] = {
        "cpu_count": os.cpu_count(),
        "processor": describe(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
    }
    results["date"] = datetime.date.today().isoformat()
    results["napari_lemon"] = napari_lemon.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    if args.write_card and "unet" in results["segmenters"]:
        write_card(results, args)


def write_card(results: dict, args: argparse.Namespace) -> None:
    """Put the U-Net's mean scores per split into its weights' JSON card."""
    from napari_lemon.segment.unet_model import BUNDLED, WEIGHTS_DIR

    unet = results["segmenters"]["unet"]
    weights = unet["params"]["weights"]
    path = WEIGHTS_DIR / f"{BUNDLED}.json" if weights == "bundled" else Path(weights)
    card = json.loads(path.with_suffix(".json").read_text())
    card["benchmark"] = {
        f"monuseg_{split}": {
            k: round(unet[split]["overall"]["mean"][k], 4) for k in SCORES
        }
        | {"mpx_per_cpu_s": round(unet[split]["overall"]["mpx_per_cpu_s"], 2)}
        for split in args.splits
    }
    card["benchmark"]["params"] = unet["params"]
    card["benchmark"]["date"] = results["date"]
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
