"""The "LEMON nuclei" panel: find, embed and cluster the nuclei of an H&E image.

The panel gathers parameters, runs :func:`napari_lemon.pipeline.analysis_steps` in a
worker thread, shows its stages in napari's activity dock, and turns the result
into layers. It computes nothing itself.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Shapes
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import (
    notification_manager,
    show_error,
    show_info,
    show_warning,
)
from superqt.utils import GeneratorWorker

from .._reader import SLIDE_PATH_KEY
from . import _results, _source
from ._gl_safety import block_triton_after_gl_llvm

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

BUNDLED, FROM_FILE = "bundled", "from file"
DEVICES = ("auto", "cpu", "cuda", "mps")
WHOLE, VIEW, RECTANGLE = "whole image", "current view", "last drawn rectangle"
MODEL_FILTER = "*.safetensors *.pth.tar *.tar *.pth"
# problems the user can fix from the message alone; others come with a traceback
USER_ERRORS = (ValueError, OSError)


class AnalysisError(Exception):
    """A RuntimeError of the analysis, re-raised so that the worker reports it.

    NOTE: superqt's GeneratorWorker returns a RuntimeError raised inside the
    generator as if the worker had been deleted, and only warns about it.
    """


def analysis_job(
    source: Path | Any, mpp: float, **params: Any
) -> Generator[tuple[str, int, int], None, Any]:
    """Open the slide (or write the layer to a TIFF first) and run the pipeline.

    Runs in the worker thread. ``source`` is the slide file, or the pixels of a
    layer that has none. Yields ``(stage, done, total)`` and returns the
    ``AnalysisResult``.
    """
    from napari_lemon.pipeline import analysis_steps
    from napari_lemon.slide import open_slide

    with tempfile.TemporaryDirectory(prefix="napari-lemon-") as folder:
        if not isinstance(source, Path):
            yield "writing the layer to a temporary TIFF", 0, 1
            source = _source.write_layer_tiff(source, mpp, Path(folder) / "layer.tif")
        try:
            with open_slide(source, mpp=mpp) as slide:
                return (yield from analysis_steps(slide, **params))
        except RuntimeError as err:
            raise AnalysisError(f"{type(err).__name__}: {err}") from err


class AnalysisWidget(Container):
    """Dock panel: image, scale, model, clusters, device, region; run and cancel.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose layers are analysed and receive the results.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        block_triton_after_gl_llvm()  # before anything imports torch here
        self._viewer = viewer
        self._worker: Any = None
        self._progress: progress | None = None
        self._job: dict[str, Any] = {}
        self._make_controls()
        self._connect()
        self._on_image_changed(self._image.value)

    # ------------------------------------------------------------------ layout
    def _make_controls(self) -> None:
        from napari_lemon.segment import DEFAULT_SEGMENTER, SEGMENTERS

        self._image = ComboBox(label="image", choices=self._rgb_layers)
        self._mpp = FloatSpinBox(
            label="mpp (µm/px)",
            min=0.0,
            max=100.0,
            step=0.0001,
            tooltip="Microns per pixel of the full-resolution image; 0 = unknown "
            "(then required: e.g. 0.25 for 40x, 0.5 for 20x)",
        )
        self._model = ComboBox(label="model", choices=[BUNDLED, FROM_FILE])
        self._model_file = FileEdit(label="model file", mode="r", filter=MODEL_FILTER)
        self._model_file.visible = False
        self._segmenter = ComboBox(
            label="segmenter",
            choices=sorted(SEGMENTERS),
            value=DEFAULT_SEGMENTER,
            tooltip="unet: the bundled network (default); classical: threshold "
            "and watershed, fastest; stardist, cellpose: need their packages",
        )
        self._clusters = SpinBox(label="clusters", min=2, max=64, value=8)
        self._device = ComboBox(label="device", choices=list(DEVICES))
        self._region = ComboBox(label="region", choices=[WHOLE, VIEW, RECTANGLE])
        self._outlines = CheckBox(
            text=f"outlines (up to {_results.MAX_OUTLINES:,} nuclei)", value=True
        )
        self._run = PushButton(text="Run")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._save = PushButton(text="Save results…", enabled=False)
        self._status = Label(value="")
        self.extend(
            [self._image, self._mpp, self._model, self._model_file, self._segmenter]
            + [self._clusters]
            + [self._device, self._region, self._outlines, self._run, self._cancel]
            + [self._save, self._status]
        )

    def _connect(self) -> None:
        self._image.changed.connect(self._on_image_changed)
        self._model.changed.connect(
            lambda value: setattr(self._model_file, "visible", value == FROM_FILE)
        )
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._save.changed.connect(lambda: self.save_results())
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._image.reset_choices)

    def _rgb_layers(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Image) and layer.rgb and layer.ndim == 2
        ]

    def _on_image_changed(self, layer: Image | None) -> None:
        mpp = _source.layer_mpp(layer) if layer is not None else None
        self._mpp.value = mpp or 0.0

    # --------------------------------------------------------------- parameters
    def region_of(self, layer: Image) -> tuple[int, int, int, int] | None:
        """The level-0 ``(x, y, width, height)`` chosen in "region" (None: whole)."""
        if self._region.value == VIEW:
            # napari >= 0.9 keeps the camera in the scene
            camera = getattr(self._viewer, "scene", self._viewer).camera
            size = self._viewer.canvas.size
            return _source.view_region(layer, camera.center, camera.zoom, size)
        if self._region.value == RECTANGLE:
            shapes = [lay for lay in self._viewer.layers if isinstance(lay, Shapes)]
            found = _source.last_rectangle(shapes)
            if found is None:
                raise ValueError(
                    f"region={RECTANGLE!r}: no rectangle in any Shapes layer; draw "
                    f"one with the rectangle tool, or choose {WHOLE!r}"
                )
            return _source.rectangle_region(layer, *found)
        return None

    def _model_choice(self) -> str:
        if self._model.value == BUNDLED:
            return BUNDLED
        path = Path(self._model_file.value)
        if not path.is_file():
            raise ValueError(
                f"model file {str(path)!r} does not exist: choose an encoder "
                f"checkpoint ({MODEL_FILTER}) or the {BUNDLED!r} model"
            )
        return str(path)

    def _parameters(self, layer: Image) -> dict[str, Any]:
        """Everything the job needs; ValueError with what to fix when incomplete."""
        if not self._mpp.value:
            raise ValueError(
                f"mpp is unknown for {layer.name!r}: the image records no pixel "
                "size. Enter its microns per pixel in the 'mpp' field (e.g. 0.25 "
                "for 40x, 0.5 for 20x)"
            )
        return {
            "mpp": float(self._mpp.value),
            "region": self.region_of(layer),
            "model": self._model_choice(),
            "segmenter": self._segmenter.value,
            "n_clusters": int(self._clusters.value),
            "device": self._device.value,
        }

    # ---------------------------------------------------------------------- run
    @property
    def worker(self) -> Any:
        """The running worker, or None."""
        return self._worker

    def run(self) -> None:
        """Start the analysis of the chosen layer; problems become notifications."""
        layer = self._image.value
        if layer is None:
            show_error("Open an RGB image first: no 2-D RGB image layer to analyse")
            return
        try:
            params = self._parameters(layer)
        except ValueError as err:
            show_error(str(err))
            return

        # the slide file, or the pixels of a layer without one
        block_triton_after_gl_llvm()
        path = _source.slide_path_of(layer)
        # NOTE: a layer without a file is written whole (its finest level) to a TIFF
        pixels = layer.data[0] if layer.multiscale else layer.data
        source = path if path is not None else pixels
        mpp = params.pop("mpp")
        self._job = {"layer": layer, "mpp": mpp, "region": params["region"]}
        self._start(source, mpp, params)

    def _start(self, source: Any, mpp: float, params: dict[str, Any]) -> None:
        # superqt's worker: this panel reports errors and warnings itself, once
        job = thread_worker(
            analysis_job, worker_class=GeneratorWorker, ignore_errors=True
        )
        worker = job(source, mpp, **params)
        worker.warned.connect(lambda args: notification_manager.receive_warning(*args))
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._progress = progress(total=0, desc="LEMON: starting")
        self._set_running(True)
        worker.start()

    def cancel(self) -> None:
        """Ask the running analysis to stop after its current batch."""
        if self._worker is not None:
            self._worker.quit()
            self._status.value = "cancelling after the current batch…"

    def _set_running(self, running: bool) -> None:
        self._run.enabled = not running
        self._cancel.enabled = running
        self._status.value = "running…" if running else self._status.value

    # ------------------------------------------------------------ worker events
    def _on_progress(self, step: tuple[str, int, int]) -> None:
        stage, done, total = step
        bar = self._progress
        if bar is None:
            return
        if bar.desc != f"LEMON: {stage}":
            bar.set_description(f"LEMON: {stage}")
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.update(0)

    def _on_result(self, result: Any) -> None:
        layer, mpp = self._job["layer"], self._job["mpp"]
        adata = result.adata
        if adata.n_obs == 0:
            show_warning(f"No nuclei found in {layer.name!r} (region {result.region})")
            return

        # outlines first, so the points stay on top
        if self._outlines.value and adata.n_obs <= _results.MAX_OUTLINES:
            data, kwargs, _ = _results.outline_layer_data(adata, layer)
            self._viewer.add_shapes(data, **kwargs)
        elif self._outlines.value:
            show_info(
                f"{adata.n_obs:,} nuclei: outlines are drawn for up to "
                f"{_results.MAX_OUTLINES:,}; the nuclei are shown as points"
            )
        data, kwargs, _ = _results.nuclei_layer_data(adata, layer, mpp, result.region)
        self._viewer.add_points(data, **kwargs)
        self._save.enabled = True
        self._status.value = f"{adata.n_obs:,} nuclei"
        show_info(f"LEMON: {adata.n_obs:,} nuclei in {layer.name!r}")

    def _on_error(self, err: Exception) -> None:
        logger.debug("analysis failed", exc_info=err)
        self._status.value = "failed"
        if isinstance(err, USER_ERRORS):
            show_error(f"LEMON analysis failed: {err}")
        else:
            notification_manager.receive_error(type(err), err, err.__traceback__)

    def _on_aborted(self) -> None:
        self._status.value = "cancelled"
        show_info("LEMON analysis cancelled")

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._worker = None
        self._set_running(False)

    # --------------------------------------------------------------------- save
    def results_layer(self) -> Any:
        """The active nuclei layer, else the most recent one; None if there is none."""
        active = self._viewer.layers.selection.active
        candidates = [active] + list(reversed(self._viewer.layers))
        for layer in candidates:
            if layer is not None and _results.ADATA_KEY in layer.metadata:
                return layer
        return None

    def save_results(self, path: str | Path | None = None) -> Path | None:
        """Write the results of a nuclei layer to an ``.h5ad`` file.

        Parameters
        ----------
        path : str or Path, optional
            Target file; when None a file dialog asks, starting beside the slide.
        """
        from napari_lemon.store import write_results

        layer = self.results_layer()
        if layer is None:
            show_error("No LEMON results to save: run the analysis first")
            return None
        if path is None:
            path = self._ask_path(layer)
            if not path:
                return None
        try:
            saved = write_results(layer.metadata[_results.ADATA_KEY], path)
        except (OSError, ValueError) as err:
            show_error(f"Could not save the results: {err}")
            return None
        show_info(f"LEMON results saved to {saved}")
        return saved

    def _ask_path(self, layer: Any) -> str:
        from qtpy.QtWidgets import QFileDialog

        slide = layer.metadata.get(SLIDE_PATH_KEY)
        name = f"{Path(slide).stem if slide else layer.name}.lemon.h5ad"
        start = (Path(slide).parent if slide else Path.home()) / name
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save LEMON results", str(start), "AnnData (*.h5ad)"
        )
        return path
