"""Many slides, one task each: the cohort runner behind ``lemon analyze A B C``.

Each slide runs the streaming whole-slide pipeline
(:func:`napari_lemon.whole_slide.analyze_slide`) into its own results store
``<out>/<slide stem>.zarr``. With more than one slide the tasks go to Dask: a
``distributed.LocalCluster`` on this machine by default, or the scheduler at an
address for a real cluster. A slide that fails does not stop the others; its row
in the cohort summary says why, and running the same command again resumes the
stores left incomplete and skips the finished ones.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
STORE_SUFFIX = ".zarr"
GB_PER_WORKER = 3.0  # one encoder, one tile and its crops, with headroom
SUMMARY_COLUMNS = (
    "slide",
    "status",
    "results",
    "nuclei",
    "tiles",
    "tiles_resumed",
    "mpp",
    "mpp_source",
    "seconds",
    "error",
)


@dataclass(frozen=True)
class SlideJob:
    """One slide to analyse and where its results go.

    Attributes
    ----------
    slide : Path
        The slide file.
    out : Path
        Its results store, a ``.zarr`` folder.
    mpp : float, optional
        Microns per pixel of level 0, overriding the file's.
    estimate_mpp : bool
        Estimate the mpp from nucleus size when the file records none.
    model, device, precision : str
        Encoder weights and where and how to run them.
    threads : int, optional
        Torch threads for this task (default: torch's own choice).
    options : dict
        Keyword options of :func:`napari_lemon.whole_slide.slide_steps`
        (``segmenter``, ``region``, ``tile_um``, ``n_clusters``, ``batch_size``,
        ``overwrite``, ...).
    """

    slide: Path
    out: Path
    mpp: float | None = None
    estimate_mpp: bool = False
    model: str = "bundled"
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def find_slides(inputs: Iterable[str | Path]) -> list[Path]:
    """Slide files named by ``inputs``; a folder stands for the slides inside it.

    Raises
    ------
    FileNotFoundError
        An input that does not exist.
    ValueError
        A folder without slides, or two slides whose results would share a name.
    """
    from .slide import IMAGE_SUFFIXES, SLIDE_SUFFIXES

    # expand folders, in name order
    suffixes = SLIDE_SUFFIXES + IMAGE_SUFFIXES
    slides: list[Path] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"slide file not found: '{item}'")
        if item.is_file():
            slides.append(item)
            continue
        found = sorted(p for p in item.iterdir() if p.suffix.lower() in suffixes)
        if not found:
            raise ValueError(
                f"folder '{item}' holds no slides; expected files ending in "
                f"{', '.join(suffixes)}"
            )
        slides.extend(found)

    # one results store per slide name
    by_stem: dict[str, Path] = {}
    for path in slides:
        other = by_stem.setdefault(path.stem, path)
        if other != path:
            raise ValueError(
                f"slides '{other}' and '{path}' would both write {path.stem}"
                f"{STORE_SUFFIX}; rename one or analyse them into different --out "
                "folders"
            )
    return list(by_stem.values())


def plan_jobs(slides: Sequence[Path], out: Path, **settings: Any) -> list[SlideJob]:
    """A :class:`SlideJob` per slide, writing ``<out>/<stem>.zarr``.

    ``settings`` are the other fields of :class:`SlideJob`.
    """
    return [
        SlideJob(
            slide=Path(s), out=Path(out) / f"{Path(s).stem}{STORE_SUFFIX}", **settings
        )
        for s in slides
    ]


# one slide


_ENCODERS: dict[tuple[str, str, str], Any] = {}  # loaded once per worker process


def _encoder_for(job: SlideJob):
    from .checkpoint import load_encoder

    key = (str(job.model), job.device, job.precision)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(job.model, job.device, precision=job.precision)
    return _ENCODERS[key]


def open_job_slide(job: SlideJob):
    """Open the job's slide with a known mpp, estimating it when asked.

    Returns
    -------
    (Slide, str)
        The open slide and where its mpp came from: ``"file"``, ``"--mpp"`` or
        ``"estimated"``.
    """
    from .slide import open_slide, require_mpp

    slide = open_slide(job.slide, mpp=job.mpp)
    if job.mpp is not None:
        return slide, "--mpp"
    if slide.mpp is not None or not job.estimate_mpp:
        require_mpp(slide)
        return slide, "file"

    # estimate from nucleus size, then reopen at that scale
    from .mpp_estimate import estimate_mpp

    try:
        estimate = estimate_mpp(slide)
    finally:
        slide.close()
    return open_slide(job.slide, mpp=estimate.mpp), "estimated"


def run_slide(
    job: SlideJob,
    progress: Callable[[str, int, int], None] | None = None,
    catch: bool = True,
) -> dict[str, Any]:
    """Analyse one slide; return its summary row.

    With ``catch``, errors a user can fix (an unreadable slide, no mpp, a locked
    or mismatched store, a full disk) and unexpected ones become
    ``status="failed"`` with the message in ``error``, so that one slide cannot
    stop a cohort; without it they propagate. ``KeyboardInterrupt`` always does.
    """
    from .whole_slide import analyze_slide

    start = time.perf_counter()
    row: dict[str, Any] = {"slide": str(job.slide), "results": str(job.out)}
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    try:
        slide, source = open_job_slide(job)
        with slide:
            row.update(mpp=slide.mpp, mpp_source=source)
            run = analyze_slide(
                slide, job.out, _encoder_for(job), progress, **job.options
            )
        row.update(
            status="done",
            nuclei=run.n_nuclei,
            tiles=run.n_tiles,
            tiles_resumed=run.tiles_skipped,
            **{f"seconds_{k}": round(v, 3) for k, v in run.seconds.items()},
        )
    except (OSError, ValueError) as err:
        if not catch:
            raise
        row.update(status="failed", error=str(err))
    except Exception as err:  # a bug: keep the cohort going, keep the evidence
        if not catch:
            raise
        logger.error("%s failed:\n%s", job.slide, traceback.format_exc())
        row.update(status="failed", error=f"{type(err).__name__}: {err}")
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


# many slides


def default_workers(n_jobs: int) -> int:
    """Worker processes for a local cohort: by cores (2 each) and memory."""
    import psutil

    cores = os.cpu_count() or 1
    by_memory = int(psutil.virtual_memory().total / 2**30 // GB_PER_WORKER)
    return max(1, min(n_jobs, cores // 2, by_memory))


def run_cohort(
    jobs: Sequence[SlideJob],
    scheduler: str | None = None,
    n_workers: int | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Run one task per slide on Dask and collect the summary table.

    Parameters
    ----------
    jobs : sequence of SlideJob
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler; default a
        ``LocalCluster`` of ``n_workers`` single-threaded worker processes.
    n_workers : int, optional
        Local workers; default :func:`default_workers`.
    on_done : callable, optional
        Called with each slide's summary row as it finishes.

    Returns
    -------
    DataFrame
        One row per slide, in the order of ``jobs`` (see :func:`summary_table`).
    """
    from distributed import Client, LocalCluster, as_completed

    # a cluster to submit to
    cluster = None
    if scheduler is None:
        n_workers = n_workers or default_workers(len(jobs))
        threads = max(1, (os.cpu_count() or 1) // n_workers)
        jobs = [replace(j, threads=j.threads or threads) for j in jobs]
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            futures = {
                client.submit(
                    run_slide, job, key=f"lemon-{i}-{job.slide.name}", pure=False
                ): i
                for i, job in enumerate(jobs)
            }
            rows: dict[int, dict[str, Any]] = {}
            for future in as_completed(futures):
                rows[futures[future]] = row = future.result()
                if on_done is not None:
                    on_done(row)
    finally:
        if cluster is not None:
            cluster.close()
    return summary_table([rows[i] for i in range(len(jobs))])


def summary_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The cohort summary: the :data:`SUMMARY_COLUMNS`, then per-stage seconds."""
    table = pd.DataFrame(list(rows))
    stages = sorted(c for c in table.columns if c.startswith("seconds_"))
    for column in SUMMARY_COLUMNS:
        if column not in table:
            table[column] = None
    return table[list(SUMMARY_COLUMNS) + stages]


def write_summary(table: pd.DataFrame, out: Path) -> Path:
    """Write the summary as ``<out>/summary.csv``, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / SUMMARY_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
