"""Make the README's cell-typing screenshot: two brushed types, the probe, the map.

Opens ``CMU-1-Small-Region.svs`` with the plugin's reader and the results of
``lemon analyze`` on it (copied, so that the labels written beside them do not
land in the original), brushes one stroke along the epidermis ("epithelial") and
one through the dermis ("stromal") with the panel's own hit test, waits for the
probe, computes the morphology map with thumbnails and saves a screenshot of the
whole window. Needs a display (``xvfb-run -a python docs/cell_types_screenshot.py``).

    lemon analyze ../shared/data/wsi/CMU-1-Small-Region.svs --out out/
    python docs/cell_types_screenshot.py [--data ../shared/data] [--results out]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

# level-0 (x, y) strokes over CMU-1: along the epidermis, through the dermis
STROKES = {
    "epithelial": [(1150, 950), (1190, 1300), (1130, 1600), (1180, 1900), (1230, 2100)],
    "stromal": [(900, 1100), (880, 1500), (850, 1900), (820, 2100)],
}
COLOURS = {"epithelial": "#e69f00", "stromal": "#56b4e9"}
BRUSH_UM = 25.0


def wait_until(done, timeout_s: float = 600) -> None:
    app = QApplication.instance()
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("the panel did not finish in time")
        app.processEvents()
        time.sleep(0.05)
    for _ in range(20):  # let the last redraws land
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--results", default="out", help="lemon analyze's --out")
    parser.add_argument("--out", default="docs/cell_types.png")
    args = parser.parse_args()

    slide = Path(args.data) / "wsi" / "CMU-1-Small-Region.svs"
    folder = Path(tempfile.mkdtemp(prefix="lemon-screenshot-"))
    store = folder / "CMU-1-Small-Region.zarr"
    shutil.copytree(Path(args.results) / store.name, store)

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1600, 1000)
    viewer.open(slide, plugin="napari-lemon")
    _, nuclei_panel = viewer.window.add_plugin_dock_widget(
        "napari-lemon", "LEMON nuclei"
    )
    nuclei_panel.load_results(store)
    wait_until(lambda: nuclei_panel._loader is None)
    layer = next(lay for lay in viewer.layers if lay.name.endswith("nuclei"))
    viewer.window.remove_dock_widget(nuclei_panel.native.parent())

    # two types, one stroke each, then the probe
    _, typing = viewer.window.add_plugin_dock_widget("napari-lemon", "LEMON cell types")
    state = typing.attach(layer)
    index, mpp = state.brush_index(), state.mpp
    for name, stroke in STROKES.items():
        typing.types.add_type(name, COLOURS[name])
        rows = index.hits(np.asarray(stroke, float), BRUSH_UM / mpp)
        typing.label_rows(rows, name)
    wait_until(lambda: typing.runner.idle and state.probe is not None)
    time.sleep(1.0)  # the cross-validation starts after the prediction
    wait_until(lambda: typing.runner.idle)

    # the morphology map with its thumbnails
    _, map_panel = viewer.window.add_plugin_dock_widget(
        "napari-lemon", "LEMON morphology map"
    )
    map_panel._layer.value = layer
    map_panel.compute()
    wait_until(lambda: map_panel.worker is None)
    map_panel._thumbnails.value = True
    wait_until(lambda: map_panel.worker is None)

    viewer.reset_view()
    QApplication.instance().processEvents()
    viewer.screenshot(args.out, canvas_only=False, flash=False)
    print(f"wrote {args.out}")
    viewer.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
