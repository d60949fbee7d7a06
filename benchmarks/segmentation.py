"""Detection benchmark of the classical nucleus segmenter on MoNuSeg.

A predicted nucleus is a true positive when its centroid lies inside a
ground-truth outline; each outline is matched at most once (when several
predictions fall inside one outline, the one nearest the outline's centroid
counts and the others are false positives). Reported per tile and pooled over
tiles (micro average), with throughput in input megapixels per second of
segmentation, single process.

Usage::

    python benchmarks/segmentation.py [--data ../shared/data]
        [--out benchmarks/results/segmentation.json] [--set min_area_um2=12]

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
from skimage.draw import polygon

import napari_lemon
from napari_lemon.segment import ClassicalParams, segment_classical
from napari_lemon.segment.imagescope import polygon_centroids, read_imagescope_xml
from napari_lemon.slide import open_slide

REPO = Path(__file__).resolve().parents[1]
MONUSEG_MPP = 0.25  # one training XML records no MicronsPerPixel; the rest 0.246-0.253


def rasterise(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Label image of ground-truth outlines (1..n, later outlines on top)."""
    labels = np.zeros(shape, dtype=np.int32)
    for index, points in enumerate(polygons, start=1):
        rows, cols = polygon(points[:, 1], points[:, 0], shape)
        labels[rows, cols] = index
    return labels


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


def score(tp: int, n_pred: int, n_gt: int) -> dict:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * tp / (n_pred + n_gt) if n_pred + n_gt else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def timed_segment(image: np.ndarray, mpp: float, params: ClassicalParams) -> tuple:
    """Nuclei, and throughput in megapixels per wall second and per CPU second."""
    start, cpu_start = time.perf_counter(), time.process_time()
    nuclei = segment_classical(image, mpp, params)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    megapixels = image.shape[0] * image.shape[1] / 1e6
    return nuclei, {"megapixels": megapixels, "seconds": wall, "cpu_seconds": cpu}


def throughput(timing: dict) -> dict:
    return {
        "mpx_per_s": timing["megapixels"] / timing["seconds"],
        "mpx_per_cpu_s": timing["megapixels"] / timing["cpu_seconds"],
    }


def evaluate_tile(xml: Path, params: ClassicalParams) -> dict:
    """Segment one MoNuSeg tile and score its detections."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # regions with < 3 vertices are skipped
        truth = read_imagescope_xml(xml)
    image_path = xml.parent.parent / "images" / f"{xml.stem}.tif"
    with open_slide(image_path, mpp=truth.mpp or MONUSEG_MPP) as slide:
        image = slide.read_region((0, 0), 0, slide.dimensions)
        mpp = slide.mpp

    # segment, then match centroids to outlines
    nuclei, timing = timed_segment(image, mpp, params)
    gt_labels = rasterise(truth.polygons, image.shape[:2])
    tp = match_centroids(
        nuclei.centroids_xy, gt_labels, polygon_centroids(truth.polygons)
    )
    row = {"tile": xml.stem, "n_gt": len(truth.polygons), "n_pred": len(nuclei)}
    row |= {"tp": tp, **score(tp, len(nuclei), len(truth.polygons))}
    return row | timing


def evaluate_split(folder: Path, params: ClassicalParams) -> dict:
    """Per-tile and pooled scores over every annotated tile of a split."""
    rows = [evaluate_tile(xml, params) for xml in sorted(folder.glob("*.xml"))]
    tp, n_pred, n_gt = (sum(r[k] for r in rows) for k in ("tp", "n_pred", "n_gt"))
    timing = {
        k: sum(r[k] for r in rows) for k in ("megapixels", "seconds", "cpu_seconds")
    }
    overall = {"tiles": len(rows), "n_gt": n_gt, "n_pred": n_pred, "tp": tp}
    overall |= score(tp, n_pred, n_gt) | throughput(timing)
    return {"overall": overall, "tiles": rows}


def count_cmu1(data: Path, params: ClassicalParams) -> dict:
    """Nuclei found on the whole CMU-1 small region (20x, 0.499 um/px)."""
    with open_slide(data / "wsi" / "CMU-1-Small-Region.svs") as slide:
        image = slide.read_region((0, 0), 0, slide.dimensions)
        nuclei, timing = timed_segment(image, slide.mpp, params)
    area = np.percentile(nuclei.area_um2, [10, 50, 90]).round(1).tolist()
    return {"n_nuclei": len(nuclei), "area_um2_p10_p50_p90": area} | throughput(timing)


def markdown_table(split: dict) -> str:
    """Per-tile and overall results as a Markdown table."""
    lines = [
        "| tile | GT | predicted | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in split["tiles"] + [dict(split["overall"], tile="**overall (micro)**")]:
        lines.append(
            f"| {r['tile']} | {r['n_gt']} | {r['n_pred']} | {r['precision']:.3f} "
            f"| {r['recall']:.3f} | {r['f1']:.3f} |"
        )
    return "\n".join(lines)


def parse_overrides(pairs: list[str]) -> dict:
    """``name=value`` strings -> ClassicalParams fields with their types."""
    types = {f.name: f.type for f in dataclasses.fields(ClassicalParams)}
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in types:
            raise SystemExit(
                f"--set {pair!r}: unknown parameter; choose from {sorted(types)}"
            )
        out[name] = value if types[name] == "str" else float(value)
    return out


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "segmentation.json",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a ClassicalParams field",
    )
    parser.add_argument("--splits", nargs="+", default=["test", "train"])
    args = parser.parse_args(argv)
    params = ClassicalParams(**parse_overrides(args.set))

    # evaluate
    results = {"params": dataclasses.asdict(params)}
    for split in args.splits:
        results[split] = evaluate_split(
            args.data / "monuseg" / split / "annotations", params
        )
        print(f"\n## MoNuSeg {split}\n\n{markdown_table(results[split])}")
        overall = results[split]["overall"]
        print(
            f"\nthroughput: {overall['mpx_per_s']:.2f} Mpx/s (wall), "
            f"{overall['mpx_per_cpu_s']:.2f} Mpx per CPU second"
        )
    results["cmu1"] = count_cmu1(args.data, params)
    print(f"\nCMU-1-Small-Region: {results['cmu1']}")

    # provenance
    results["machine"] = {
        "cpu_count": os.cpu_count(),
        "processor": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0],
    }
    results["date"] = datetime.date.today().isoformat()
    results["napari_lemon"] = napari_lemon.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
