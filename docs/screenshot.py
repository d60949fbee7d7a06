"""Make the README's screenshot: the "LEMON nuclei" panel after a real run.

Opens ``CMU-1-Small-Region.svs`` with the plugin's reader, runs the panel on a
region with the bundled encoder, zooms onto part of it and saves a screenshot of
the whole window. Needs a display (``xvfb-run -a python docs/screenshot.py``).

    python docs/screenshot.py [--data ../shared/data] [--out docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

REGION = (700, 1100, 1200, 1200)  # level-0 x, y, width, height of CMU-1


def wait_for(panel, timeout_s: float = 900) -> None:
    app = QApplication.instance()
    start = time.monotonic()
    while panel.worker is not None and time.monotonic() - start < timeout_s:
        app.processEvents()
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="docs/screenshot.png")
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(
        Path(args.data) / "wsi" / "CMU-1-Small-Region.svs", plugin="napari-lemon"
    )
    _, panel = viewer.window.add_plugin_dock_widget("napari-lemon", "LEMON nuclei")

    # a drawn rectangle is the region to analyse
    x, y, w, h = REGION
    scale = viewer.layers[0].scale[-1]
    viewer.add_shapes(
        [
            [
                [r * scale, c * scale]
                for r, c in ((y, x), (y, x + w), (y + h, x + w), (y + h, x))
            ]
        ],
        shape_type="rectangle",
        name="region",
        edge_color="yellow",
        face_color="transparent",
        edge_width=4 * scale,
        units=viewer.layers[0].units,
    )
    panel._region.value = "last drawn rectangle"
    panel._clusters.value = 6
    panel.run()
    wait_for(panel)

    # zoom onto the middle of the region
    viewer.layers["region"].visible = False
    viewer.camera.center = ((y + h / 2) * scale, (x + w / 2) * scale)
    viewer.camera.zoom = viewer.camera.zoom * 2.2
    QApplication.instance().processEvents()
    viewer.screenshot(args.out, canvas_only=False, flash=False)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
