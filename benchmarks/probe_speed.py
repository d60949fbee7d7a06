"""How fast the live probe answers: label, train, predict, recolour, at 1M nuclei.

Run under a display (Xvfb + Mesa on a server), from the repository root::

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/probe_speed.py

Synthetic results: ``n`` nuclei spread over a 100,000 px square slide, three
kinds by where they lie (vertical thirds), each a Gaussian blob of float16
384-d embeddings. In a real viewer with the "LEMON cell types" panel:

- ``fit_cv``: per number of labels (100, 1,000, 5,000; balanced over the
  kinds), :func:`napari_lemon.analysis.probe.cross_validate` (folds of whole
  250 um regions) and :func:`~napari_lemon.analysis.probe.fit_probe` on their
  embeddings, the core calls alone;
- ``label_to_frame``: the panel's whole answer to a labelling action: from
  ``label_rows`` (saving the labels, the ``label`` column, recolouring) to the
  frame drawn with every nucleus in its predicted colour, the debounce
  (300 ms) included; then to the cross-validated accuracy shown (a worker of
  its own); with the parts: the main-thread labelling, the worker's fit and
  predict;
- ``predict_recolour``: "Apply probe": the worker's prediction of every
  nucleus, the columns and the recolouring, to the frame drawn; zoomed out
  (the whole slide in view, dots) and zoomed in (about 2,000 nuclei in view,
  points and outlines). The goal is under 2 s;
- ``stroke``: a brush stroke's lookup of the nuclei under it.

Writes ``benchmarks/results/probe_speed.json``.
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
DIM = 384
KINDS = ["tumour", "stroma", "immune"]
COLOURS = ["#e69f00", "#56b4e9", "#009e73"]
TIMEOUT_S = 600


def synthetic_results(n: int, seed: int = 0):
    """AnnData in the results layout; ``kind`` of each nucleus by its third."""
    from anndata import AnnData

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, SLIDE_PX, (n, 2))
    kind = np.minimum((xy[:, 0] / SLIDE_PX * 3).astype(np.int64), 2)
    # kinds apart by ~4.6 noise widths along their difference: not all easy
    centres = 0.2 * rng.normal(0, 1, (3, DIM)).astype(np.float32)
    embeddings = np.empty((n, DIM), np.float16)
    for start in range(0, n, 65536):  # float16 from the start: 0.8 GB at 1M
        part = slice(start, start + 65536)
        noise = rng.normal(0, 1.2, (len(kind[part]), DIM)).astype(np.float32)
        embeddings[part] = centres[kind[part]] + noise
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(n, dtype=np.int64),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "area_um2": rng.uniform(15, 60, n),
        },
        index=np.arange(n).astype(str),
    )
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * 12
    outlines = (xy[:, None, :] + corners[None]).reshape(-1, 2).astype(np.float32)
    adata = AnnData(obs=obs, obsm={"X_lemon": embeddings})
    adata.uns["outlines"] = {"offsets": np.arange(n + 1) * 4, "xy": outlines}
    adata.uns["lemon"] = {
        "mpp": MPP,
        "source": {"name": "synthetic.tif"},
        "encoder": {"name": "synthetic", "sha256": "0" * 64, "mpp": 0.25},
    }
    return adata, kind


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

    def wait(self, done, timeout_s: float = TIMEOUT_S) -> None:
        """Run the event loop until ``done()``, then draw the frame."""
        started = time.perf_counter()
        while not done():
            self.app.processEvents()
            time.sleep(0.002)
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError("the probe did not answer in time")
        self.draw()


def balanced_rows(kind: np.ndarray, n_labels: int, seed: int) -> np.ndarray:
    """``n_labels`` rows, as many of each kind."""
    rng = np.random.default_rng(seed)
    per = n_labels // len(KINDS)
    return np.concatenate(
        [rng.choice(np.flatnonzero(kind == k), per, replace=False) for k in range(3)]
    )


def bench_fit_cv(adata, kind, label_counts, repeats: int) -> list[dict]:
    """Seconds of cross_validate and fit_probe on balanced labels."""
    from napari_lemon.analysis.probe import cross_validate, fit_probe, region_groups

    rows_out = []
    warm = np.sort(balanced_rows(kind, 60, seed=99))  # imports, first-call costs
    cross_validate(
        np.asarray(adata.obsm["X_lemon"][warm], np.float32),
        np.array(KINDS, dtype=object)[kind[warm]],
    )
    for n_labels in label_counts:
        cv, fit = [], []
        for repeat in range(repeats):
            rows = np.sort(balanced_rows(kind, n_labels, seed=repeat))
            x = np.asarray(adata.obsm["X_lemon"][rows], np.float32)
            labels = np.array(KINDS, dtype=object)[kind[rows]]
            xy = adata.obs[["x", "y"]].to_numpy()[rows]
            groups = region_groups(xy[:, 0], xy[:, 1], 250 / MPP)
            started = time.perf_counter()
            metrics = cross_validate(x, labels, groups=groups, classes=KINDS)
            cv.append(time.perf_counter() - started)
            started = time.perf_counter()
            fit_probe(x, labels, KINDS, COLOURS, metrics=metrics)
            fit.append(time.perf_counter() - started)
        rows_out.append(
            {
                "n_labels": n_labels,
                "cv_s": round(statistics.median(cv), 3),
                "fit_s": round(statistics.median(fit), 3),
                "n_folds": metrics.n_folds,
                "grouping": metrics.grouping,
                "balanced_accuracy": round(metrics.balanced_accuracy, 4),
                "repeats": repeats,
            }
        )
        print(json.dumps(rows_out[-1]), flush=True)
    return rows_out


def bench_panel(viewer, frames, adata, kind, label_counts, repeats: int) -> dict:
    """Label to frame, apply probe zoomed out and in, and a stroke, in the panel."""
    from napari_lemon._widgets import CellTypesWidget
    from napari_lemon._widgets._nuclei_display import display_of
    from napari_lemon._widgets._results import STORE_PATH_KEY, add_nuclei

    started = time.perf_counter()
    layer = add_nuclei(viewer, adata, None, MPP, name="nuclei")
    frames.draw()
    record = {"add_nuclei_s": round(time.perf_counter() - started, 2)}
    layer.metadata[STORE_PATH_KEY] = None  # labels in memory: no file writes
    panel = CellTypesWidget(viewer)
    for name, colour in zip(KINDS, COLOURS, strict=True):
        panel.types.add_type(name, colour)
    viewer.reset_view()
    display = display_of(layer)
    display.refresh()
    frames.draw()

    # one labelling action at a time, each answered by a new probe
    record["label_to_frame"] = []
    labelled = 0
    for n_labels in label_counts:
        rows = balanced_rows(kind, n_labels, seed=n_labels)
        for k in range(3):  # two types first, then the third: one timed action
            if k < 2:
                panel.label_rows(rows[kind[rows] == k], KINDS[k])
        frames.wait(lambda: not panel.runner.busy)
        last = rows[kind[rows] == 2]
        started = time.perf_counter()
        panel.label_rows(last, KINDS[2])
        labelled_s = time.perf_counter() - started
        frames.wait(lambda: not panel.runner.busy)  # coloured by the new probe
        total = time.perf_counter() - started
        frames.wait(lambda: panel.runner.idle)  # its accuracy shown
        measured = time.perf_counter() - started
        outcome = panel.last_outcome
        labelled = sum(panel.state.annotations.counts().values())
        record["label_to_frame"].append(
            {
                "n_labels": labelled,
                "to_frame_s": round(total, 3),
                "to_accuracy_s": round(measured, 3),
                "label_action_s": round(labelled_s, 3),
                **{f"{k}_s": round(v, 3) for k, v in outcome.seconds.items()},
                "debounce_s": 0.3,
                "mode": display.mode,
            }
        )
        print(json.dumps(record["label_to_frame"][-1]), flush=True)
        panel.state.annotations.unlabel(panel.state.ids)  # start afresh
        frames.wait(lambda: panel.runner.idle)

    # apply a saved probe: zoomed out (dots), then zoomed in (points)
    rows = balanced_rows(kind, 1000, seed=7)
    for k in range(3):
        panel.label_rows(rows[kind[rows] == k], KINDS[k])
    frames.wait(lambda: panel.probe is not None and panel.runner.idle)
    probe_path = Path(tempfile.mkdtemp()) / "bench.probe.safetensors"
    panel.probe.save(probe_path)
    camera = viewer.scene.camera
    record["predict_recolour"] = {}
    for view in ("zoomed_out", "zoomed_in"):
        if view == "zoomed_in":
            side_px = SLIDE_PX * np.sqrt(2_000 / len(kind))
            camera.zoom = max(viewer.canvas.size) / (side_px * MPP)
            camera.center = (SLIDE_PX / 2 * MPP, SLIDE_PX / 2 * MPP)
            display.refresh()
            frames.draw()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            panel.apply_probe(probe_path)
            frames.wait(lambda: not panel.runner.busy)
            times.append(time.perf_counter() - started)
        record["predict_recolour"][view] = {
            "to_frame_s": round(statistics.median(times), 3),
            "repeats": repeats,
            "mode": display.mode,
            "in_view": int(len(display.rows)) if display.mode != "dots" else None,
        }
        print(view, json.dumps(record["predict_recolour"][view]), flush=True)

    # a brush stroke's lookup
    index = panel.state.brush_index()
    t = np.linspace(0, 1, 200)[:, None]
    stroke = np.hstack([20_000 + 20_000 * t, 30_000 + 5_000 * np.sin(6 * t)])
    index.hits(stroke, 20 / MPP)
    started = time.perf_counter()
    hits = index.hits(stroke, 20 / MPP)
    record["stroke"] = {
        "lookup_s": round(time.perf_counter() - started, 4),
        "radius_um": 20,
        "hits": int(len(hits)),
    }
    panel.close_panel()
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/probe_speed.json")
    )
    args = parser.parse_args(argv)

    import napari
    from machine import describe

    import napari_lemon

    adata, kind = synthetic_results(args.n)
    fit_cv = bench_fit_cv(adata, kind, args.labels, args.repeats)
    viewer = napari.Viewer(show=True)
    frames = Frames(viewer)
    frames.draw()
    panel = bench_panel(viewer, frames, adata, kind, args.labels, args.repeats)
    canvas = viewer.canvas.size
    load_average = os.getloadavg()
    viewer.close()

    record = {
        "benchmark": "probe_speed",
        "date": date.today().isoformat(),
        "machine": describe(),
        "napari": napari.__version__,
        "napari_lemon": napari_lemon.__version__,
        "n_nuclei": args.n,
        "embedding": f"float16, {DIM}-d",
        "canvas_px": list(canvas),
        "fit_cv": fit_cv,
        **panel,
        "load_average": [round(v, 2) for v in load_average],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
