"""How fluent the viewer stays with many nuclei: add, recolour, outlines, main thread.

Run under a display (Xvfb + Mesa on a server), from the repository root::

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/viewer_recolour.py

Measures, per number of nuclei (synthetic, spread over a 100,000 px square slide):

- ``add``: :func:`napari_lemon._widgets._results.add_nuclei` (points layer,
  centroid index, view raster), and the first frame after it;
- ``recolour``: :func:`napari_lemon._widgets._nuclei_display.recolour`, switching
  between a 3-category probe column and 8 clusters: the call alone, and from the
  call to the frame drawn (``repaint`` of the canvas, events processed); the
  whole slide in view (dots, points hidden). ``hidden_face_color``: setting the
  colours of the hidden layer as ``recolour`` does and the napari way. At 100,000
  nuclei napari's own colour cycle on the features column is timed too;
- ``pan_low_zoom``: the dots refresh after a pan with a quarter of the slide in
  view, and its frame;
- ``zoom_in``: the refresh from dots to points and outlines (about 2,000 nuclei
  in view); ``outlines``: the refresh after pans at that zoom;
  ``recolour_zoomed_in``: recolour there, points shown;
- ``main_thread``: the longest gaps between ticks of a 10 ms QTimer while the
  panel runs a whole-slide analysis of a small synthetic slide (bundled encoder).

Writes ``benchmarks/results/viewer_recolour.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

SLIDE_PX = 100_000.0
MPP = 0.25


def synthetic_results(n: int, seed: int = 0):
    """AnnData in the results layout: ``n`` nuclei with square outlines."""
    from anndata import AnnData

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, SLIDE_PX, (n, 2))
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(n),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "area_um2": rng.uniform(15, 60, n),
            "cluster": pd.Categorical(rng.integers(0, 8, n), categories=range(8)),
            "probe_kind": pd.Categorical.from_codes(
                rng.integers(0, 3, n), ["tumour", "stroma", "immune"]
            ),
            "probe_kind_proba": rng.uniform(0, 1, n),
        },
        index=np.arange(n).astype(str),
    )
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * 12
    outlines = (xy[:, None, :] + corners[None]).reshape(-1, 2).astype(np.float32)
    adata = AnnData(obs=obs)
    adata.uns["outlines"] = {"offsets": np.arange(n + 1) * 4, "xy": outlines}
    return adata


class Frames:
    """Draw the canvas now and wait for it (the first frame after a change)."""

    def __init__(self, viewer) -> None:
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance()
        self.canvas = viewer.window._qt_viewer.canvas.native

    def draw(self) -> None:
        self.app.processEvents()
        self.canvas.repaint()
        self.app.processEvents()


def timed(action, frames: Frames) -> tuple[float, float]:
    """Seconds of ``action()`` and of ``action()`` + the frame drawn."""
    started = time.perf_counter()
    action()
    called = time.perf_counter()
    frames.draw()
    return called - started, time.perf_counter() - started


def median_of(pairs: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "call_s": round(statistics.median(p[0] for p in pairs), 4),
        "to_frame_s": round(statistics.median(p[1] for p in pairs), 4),
        "repeats": len(pairs),
    }


def bench_size(viewer, frames: Frames, n: int, repeats: int) -> dict:
    """Add, recolour, refresh and outline timings for ``n`` nuclei."""
    from napari_lemon._widgets._nuclei_display import display_of, recolour
    from napari_lemon._widgets._results import add_nuclei

    adata = synthetic_results(n)
    row = {"n_nuclei": n}
    add = timed(
        lambda: row.setdefault("layer", add_nuclei(viewer, adata, None, MPP)), frames
    )
    layer = row.pop("layer")
    row["add"] = {"call_s": round(add[0], 3), "to_frame_s": round(add[1], 3)}
    display = display_of(layer)
    camera = getattr(viewer, "scene", viewer).camera
    viewer.reset_view()
    display.refresh()
    frames.draw()

    # recolour, the whole slide in view (dots)
    data = layer.data
    columns = ["probe_kind", "cluster"] * repeats
    row["recolour"] = median_of(
        [timed(lambda c=c: recolour(layer, c), frames) for c in columns]
    )
    row["recolour"]["mode"] = display.mode
    assert layer.data is data
    row["hidden_face_color"] = _hidden_face_color(layer, repeats)
    if n <= 200_000:
        row["napari_cycle"] = median_of(
            [timed(lambda c=c: _napari_cycle(layer, c), frames) for c in columns[:2]]
        )

    # pan and zoom at low zoom: a quarter of the slide in view, moved
    pairs = []
    camera.zoom = 2 * max(viewer.canvas.size) / (SLIDE_PX * MPP)
    for i in range(repeats):
        centre = SLIDE_PX * (0.3 + 0.1 * i)
        camera.center = (centre * MPP, centre * MPP)
        pairs.append(timed(display.refresh, frames))
    row["pan_low_zoom"] = {**median_of(pairs), "in_view": int(len(display.rows))}
    row["pan_low_zoom"]["mode"] = display.mode

    # zoom in to about 2,000 nuclei: points come back, then outlines on pans
    side_px = SLIDE_PX * np.sqrt(2_000 / n)
    camera.zoom = max(viewer.canvas.size) / (side_px * MPP)
    camera.center = (SLIDE_PX / 2 * MPP, SLIDE_PX / 2 * MPP)
    zoom_in = timed(display.refresh, frames)
    row["zoom_in"] = {
        "call_s": round(zoom_in[0], 3),
        "to_frame_s": round(zoom_in[1], 3),
    }
    pairs = []
    for i in range(repeats):
        centre = SLIDE_PX / 2 + (i + 1) * side_px / 10
        camera.center = (centre * MPP, centre * MPP)
        pairs.append(timed(display.refresh, frames))
    row["outlines"] = {**median_of(pairs), "in_view": int(len(display.rows))}
    row["outlines"]["mode"] = display.mode
    row["recolour_zoomed_in"] = median_of(
        [timed(lambda c=c: recolour(layer, c), frames) for c in columns]
    )
    assert layer.data is data and layer.visible

    viewer.layers.clear()
    frames.draw()
    return row


def _hidden_face_color(layer, repeats: int) -> dict:
    """Seconds to set the colours of a hidden layer: napari's way and ours."""
    from napari_lemon._widgets._nuclei_display import _set_face_colours

    assert not layer.visible
    colours = [np.random.default_rng(i).uniform(0, 1, (len(layer.data), 4)) for i in
               range(2)]  # fmt: skip
    ours, napari_way = [], []
    for i in range(repeats):
        started = time.perf_counter()
        _set_face_colours(layer, colours[i % 2])
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        with layer.events.face_color.blocker():
            layer.face_color = colours[(i + 1) % 2]
        napari_way.append(time.perf_counter() - started)
    return {
        "deferred_s": round(statistics.median(ours), 4),
        "napari_s": round(statistics.median(napari_way), 4),
    }


def _napari_cycle(layer, column: str) -> None:
    layer.face_color = column  # napari maps the column through its colour cycle


def main_thread_gaps(viewer, frames: Frames, tiles: int) -> dict:
    """Gaps between 10 ms ticks while the panel analyses a synthetic slide."""
    from napari.layers import Points
    from qtpy.QtCore import QTimer

    from napari_lemon._widgets import AnalysisWidget
    from napari_lemon._widgets import analysis_widget as aw

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_widget import SYNTH_TILE_UM, synthetic_slide

    folder = Path(tempfile.mkdtemp(prefix="lemon-viewer-bench-"))
    path, _ = synthetic_slide(folder / "synthetic.tif", tiles=(tiles, tiles))
    [layer] = viewer.open(path, plugin="napari-lemon")
    panel = AnalysisWidget(viewer)
    panel._image.value = layer
    panel._region.value = aw.WHOLE_SLIDE
    panel._tile_um.value = SYNTH_TILE_UM
    panel._segmenter.value = "classical"

    # ticks while the worker runs (the results become layers after it)
    ticks, phase = {"run": [], "load": []}, ["run"]
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks[phase[0]].append(time.perf_counter()))
    panel.run()
    panel.worker.returned.connect(lambda _: phase.__setitem__(0, "load"))
    timer.start()
    started = time.perf_counter()
    while panel.worker is not None:
        frames.app.processEvents()
        time.sleep(0.002)
    timer.stop()
    seconds = time.perf_counter() - started

    gaps = np.diff(ticks["run"]) * 1000
    return {
        "tiles": tiles * tiles,
        "run_s": round(seconds, 2),
        "ticks": len(gaps) + 1,
        "max_gap_ms": round(float(gaps.max()), 1),
        "max_gap_at_s": round(float(ticks["run"][int(np.argmax(gaps))] - started), 2),
        "gaps_over_100ms": int((gaps > 100).sum()),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
        "median_gap_ms": round(float(np.median(gaps)), 1),
        "nuclei": int(sum(len(p.data) for p in viewer.layers if isinstance(p, Points))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiles", type=int, default=3, help="slide side in tiles")
    parser.add_argument("--skip-run", action="store_true", help="no panel run")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/viewer_recolour.json")
    )
    args = parser.parse_args(argv)

    import napari
    from machine import describe

    import napari_lemon

    viewer = napari.Viewer(show=True)
    frames = Frames(viewer)
    frames.draw()
    rows = []
    for n in args.sizes:
        rows.append(bench_size(viewer, frames, n, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    gaps = None if args.skip_run else main_thread_gaps(viewer, frames, args.tiles)
    if gaps is None and args.out.exists():  # keep the last run's record
        previous = json.loads(args.out.read_text())
        if previous.get("main_thread"):
            gaps = {**previous["main_thread"], "date": previous["date"]}
    print(json.dumps(gaps), flush=True)
    canvas = viewer.canvas.size
    load_average = os.getloadavg()
    viewer.close()

    record = {
        "benchmark": "viewer_recolour",
        "date": date.today().isoformat(),
        "machine": describe(),
        "napari": napari.__version__,
        "napari_lemon": napari_lemon.__version__,
        "canvas_px": list(canvas),
        "slide_px": SLIDE_PX,
        "sizes": rows,
        "load_average": [round(v, 2) for v in load_average],
        "main_thread": gaps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
