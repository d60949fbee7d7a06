"""The panel's whole-slide job: tiles streamed into a ``.lemon.zarr`` store.

Runs :func:`napari_lemon.whole_slide.slide_steps` in the worker thread and reads
the finished store there too, so the main thread only adds layers. Cancelling sets
an event that the job checks after every step; it then closes the steps in the
worker thread, which closes the store (it stays resumable), and returns None.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

RESULTS_SUFFIX = ".lemon.zarr"


def results_path(slide_path: Path, folder: str | Path | None = None) -> Path:
    """Where the results of ``slide_path`` go: ``<stem>.lemon.zarr``.

    Parameters
    ----------
    slide_path : Path
        The slide file.
    folder : str or Path, optional
        The folder to write into; default (None or empty) beside the slide.

    Raises
    ------
    ValueError
        The folder does not exist or cannot be written.
    """
    slide_path = Path(slide_path)
    unset = folder is None or str(folder) in ("", ".")  # FileEdit's empty value
    target = slide_path.parent if unset else Path(folder)
    if not target.is_dir():
        raise ValueError(
            f"results folder {str(target)!r} does not exist: choose an existing "
            "folder, or leave it empty to save beside the slide"
        )
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(
            f"results folder {str(target)!r} cannot be written: choose a folder "
            "you may write to"
        )
    return target / f"{slide_path.stem}{RESULTS_SUFFIX}"


def whole_slide_job(
    slide_path: Path,
    mpp: float,
    out: Path,
    stop: threading.Event,
    model: str = "bundled",
    device: str = "auto",
    **options: Any,
) -> Generator[tuple[str, int, int], None, Any]:
    """Analyse a whole slide into ``out``; runs in the worker thread.

    Yields ``(stage, done, total)`` of :func:`~napari_lemon.whole_slide.slide_steps`
    (``("tiles", done, total)`` once per tile, the first with the tiles already
    done by an earlier run). Returns ``(SlideRun, AnnData)``, or None when ``stop``
    was set.

    Parameters
    ----------
    slide_path : Path
        The slide file.
    mpp : float
        Its level-0 microns per pixel.
    out : Path
        The ``.zarr`` store to write or resume.
    stop : threading.Event
        Set to cancel after the current step.
    model, device
        The encoder, as in :func:`napari_lemon.pipeline.load_or_use`.
    **options
        Keyword parameters of ``slide_steps`` (segmenter, n_clusters, ...).
    """
    from napari_lemon.pipeline import load_or_use
    from napari_lemon.slide import open_slide
    from napari_lemon.store import read_results
    from napari_lemon.whole_slide import slide_steps

    yield ("loading the encoder", 0, 1)
    encoder = load_or_use(None, model, device)
    with open_slide(slide_path, mpp=mpp) as slide:
        steps = slide_steps(slide, out, encoder, **options)
        try:
            while True:
                if stop.is_set():
                    return None
                try:
                    step = next(steps)
                except StopIteration as done:
                    run = done.value
                    break
                yield step
        finally:
            steps.close()  # a cancelled run leaves the store resumable

    yield ("reading the results", 0, 1)
    return run, read_results(run.path)
