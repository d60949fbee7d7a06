"""Whole slides end to end: seconds per stage and peak memory against slide size.

For each side length a mosaic pyramid is generated from the real MoNuSeg tiles
(``benchmarks/mosaic.py``: JPEG tiles, 0.25 um/px, about 30% tissue) unless it
exists already, and ``lemon analyze`` runs on it in a fresh process exactly as a
user would. Recorded per run: the stage seconds of the summary table (read,
tissue, segment, crop, embed, write, cluster), nuclei per second, wall time, and
the peak resident memory of the ``lemon`` process (the kernel's high-water mark,
``ru_maxrss``), so that memory can be compared across slide sizes.

Usage::

    python benchmarks/whole_slide.py --sides 8192 16384 40960 \\
        [--fixtures benchmarks/.fixtures] [--segmenter unet] [--precision auto] \\
        [--out benchmarks/results/whole_slide.json]

Data: MoNuSeg 2018 (Kumar et al., IEEE TMI 36(7), 2017 and 39(5), 2020).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from machine import describe

import napari_lemon

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
STAGES = ("read", "tissue", "segment", "crop", "embed", "write", "cluster")

# runs the command given after it and prints the largest child's peak RSS (KiB)
PEAK_RSS = (
    "import resource, subprocess, sys; "
    "status = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.exit(status)"
)


def ensure_mosaic(fixtures: Path, side: int, data: Path, tissue: float) -> Path:
    """The mosaic of ``side`` px, generated when missing."""
    path = fixtures / f"mosaic_{side}_s0.tif"
    if not path.is_file():
        argv = [sys.executable, str(REPO / "benchmarks" / "mosaic.py")]
        argv += ["--side", str(side), "--out", str(path), "--data", str(data)]
        argv += ["--tissue-fraction", str(tissue)]
        subprocess.run(argv, check=True)
    return path


def run_lemon(slide: Path, out: Path, options: list[str]) -> dict:
    """``lemon analyze`` in a fresh process: its summary row, wall time, peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    lemon = [sys.executable, "-m", "napari_lemon.cli", "analyze", str(slide)]
    argv = [sys.executable, "-c", PEAK_RSS, *lemon, "--out", str(out), *options]

    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"lemon analyze {slide.name} failed:\n{done.stderr[-3000:]}")

    row = pd.read_csv(out / "summary.csv").iloc[0].to_dict()
    peak_mib = int(done.stdout.strip().splitlines()[-1]) / 1024
    return {"summary": row, "wall_s": round(wall, 1), "peak_rss_mib": round(peak_mib)}


def describe_run(side: int, slide: Path, result: dict) -> dict:
    """One benchmark entry: the slide, stage seconds and rates, memory."""
    row = result["summary"]
    nuclei = int(row["nuclei"])
    seconds = {s: float(row.get(f"seconds_{s}", 0.0) or 0.0) for s in STAGES}
    sidecar = json.loads(slide.with_name(slide.name + ".json").read_text())
    return {
        "side_px": side,
        "gigapixels": round(side * side / 1e9, 3),
        "tissue_fraction": sidecar.get("tissue_fraction_actual"),
        "file_mb": round(slide.stat().st_size / 1e6),
        "nuclei": nuclei,
        "tiles": int(row["tiles"]),
        "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "nuclei_per_s": {
            k: round(nuclei / v, 1) for k, v in seconds.items() if v > 0 and nuclei
        },
        "wall_s": result["wall_s"],
        "peak_rss_mib": result["peak_rss_mib"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument(
        "--fixtures", type=Path, default=REPO / "benchmarks" / ".fixtures"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--tissue-fraction", type=float, default=0.3)
    parser.add_argument("--segmenter", default="unet")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--model", default="bundled")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "whole_slide.json"
    )
    args = parser.parse_args(argv)

    options = ["--segmenter", args.segmenter, "--precision", args.precision]
    options += ["--model", args.model]
    runs = []
    for side in args.sides:
        slide = ensure_mosaic(args.fixtures, side, args.data, args.tissue_fraction)
        result = run_lemon(slide, args.fixtures / f"out_{side}", options)
        runs.append(describe_run(side, slide, result))
        print(json.dumps(runs[-1]), flush=True)

    report = {
        "machine": describe(),
        "date": datetime.date.today().isoformat(),
        "napari_lemon": napari_lemon.__version__,
        "options": options,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
