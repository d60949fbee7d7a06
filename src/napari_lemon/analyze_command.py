"""``lemon analyze`` and ``lemon demo``: slides to results stores, one or a cohort.

For every slide ``DIR/<stem>.zarr`` (the results store, resumed when a run was
interrupted) and ``DIR/<stem>.overlay.png``; for the run ``DIR/summary.csv``, one
row per slide. One slide runs in this process with a progress bar per stage;
several run on Dask (:mod:`napari_lemon.cohort`).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from .cli import StageBars, check_out_folder


def _analysis_jobs(inputs, out: Path, args) -> list:
    """One job per slide named by ``inputs``, with the command's settings."""
    from .cohort import find_slides, plan_jobs

    check_out_folder(out)
    options = {
        "segmenter": args.segmenter,
        "region": args.region,
        "tile_um": args.tile_um,
        "n_clusters": args.clusters,
        "overwrite": args.overwrite,
    }
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    settings = {"mpp": args.mpp, "estimate_mpp": args.estimate_mpp}
    settings |= {"model": args.model, "device": args.device}
    return plan_jobs(
        find_slides(inputs), out, precision=args.precision, options=options, **settings
    )


def _run_one(job) -> dict:
    """One slide in this process, with a bar per stage; user errors raise."""
    from .cohort import run_slide

    with StageBars() as bars:
        try:
            row = run_slide(job, bars, catch=False)
        except KeyboardInterrupt:
            bars.close()
            print(
                f"lemon: interrupted; the finished tiles are saved in {job.out}: run "
                "the same command again to resume",
                file=sys.stderr,
            )
            raise
    return row


def _report_slide(row: dict) -> None:
    """One line per finished slide of a cohort."""
    name = Path(row["slide"]).name
    if row["status"] == "done":
        print(f"{name}: {row['nuclei']:,} nuclei, {row['seconds']:.1f} s")
    else:
        print(f"{name}: failed: {row['error']}", file=sys.stderr)


def _write_overviews(jobs, table) -> None:
    """``<stem>.overlay.png`` beside each finished store."""
    from dataclasses import replace

    from .cohort import open_job_slide
    from .overview import write_overview
    from .pipeline import resolve_region

    for job, row in zip(jobs, table.to_dict("records"), strict=True):
        if row["status"] != "done":
            continue
        # the mpp the run used, so that an estimate is not made twice
        job = replace(job, mpp=row["mpp"], estimate_mpp=False)
        slide, _ = open_job_slide(job)
        with slide, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a clipped region was reported already
            region = resolve_region(slide, job.options.get("region"))
            write_overview(slide, job.out, job.out.with_suffix(".overlay.png"), region)


def _run_analysis(inputs, out: Path, args) -> int:
    from .cohort import run_cohort, summary_table, write_summary

    start = time.perf_counter()
    jobs = _analysis_jobs(inputs, out, args)

    # one slide here; several (or a cluster) on Dask
    if len(jobs) == 1 and args.scheduler is None:
        table = summary_table([_run_one(jobs[0])])
    else:
        print(f"lemon: {len(jobs)} slides on Dask", file=sys.stderr)
        table = run_cohort(jobs, args.scheduler, args.workers, _report_slide)
    write_summary(table, out)
    _write_overviews(jobs, table)

    # the summary line
    done = table[table["status"] == "done"]
    seconds = time.perf_counter() - start
    if len(jobs) == 1 and len(done):
        n, k = int(done["nuclei"].iloc[0]), _n_clusters(jobs[0].out)
        print(f"{n:,} nuclei, {k} clusters, {seconds:.1f} s -> {out}/")
        if n == 0:
            print(
                "lemon: no nuclei found: the slide may hold no tissue, or --mpp may "
                "be wrong",
                file=sys.stderr,
            )
        return 0
    failed = len(table) - len(done)
    print(
        f"{len(done)} of {len(table)} slides, {int(done['nuclei'].sum()):,} nuclei, "
        f"{seconds:.1f} s -> {out}/summary.csv"
    )
    return 1 if failed else 0


def _n_clusters(store: Path) -> int:
    from .overview import read_clusters

    return read_clusters(store)[1]


def cmd_analyze(args: argparse.Namespace) -> int:
    return _run_analysis(args.input, Path(args.out), args)


def cmd_demo(args: argparse.Namespace) -> int:
    from .sample_data import fetch_sample

    args.mpp, args.estimate_mpp, args.scheduler, args.workers = None, False, None, None
    return _run_analysis([fetch_sample(args.data_dir)], Path(args.out), args)
