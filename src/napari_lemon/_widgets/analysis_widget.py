"""The "LEMON nuclei" panel: find, embed and cluster the nuclei of an H&E image.

The panel gathers parameters, runs :func:`napari_lemon.pipeline.analysis_steps` (a
region) or :func:`napari_lemon.whole_slide.slide_steps` (a whole slide, tile by
tile, into a resumable ``<slide>.lemon.zarr``) in a worker thread, shows its stages
in napari's activity dock, and turns the result into layers: the nuclei as points
coloured by a features column, their outlines when zoomed in
(:mod:`._nuclei_display`). It computes nothing itself.
"""

from __future__ import annotations

import logging
import tempfile
import threading
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
from . import _results, _slide_job, _source
from ._gl_safety import block_triton_after_gl_llvm
from ._nuclei_display import COLOUR_KEY, recolour

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

BUNDLED, FROM_FILE = "bundled", "from file"
DEVICES = ("auto", "cpu", "cuda", "mps")
WHOLE, VIEW, RECTANGLE = "whole image", "current view", "last drawn rectangle"
WHOLE_SLIDE = "whole slide, tiled (saved as .lemon.zarr)"
MODEL_FILTER = "*.safetensors *.pth.tar *.tar *.pth"
# problems the user can fix from the message alone; others come with a traceback
USER_ERRORS = (ValueError, OSError)
HIDDEN_COLUMNS = ("nucleus_id", "x", "y", "segmenter", "tile_id")
COLOUR_POLL_MS = 400  # how often "colour by" looks at the layer's colour record


class AnalysisError(Exception):
    """A RuntimeError of the analysis, re-raised so that the worker reports it.

    NOTE: superqt's GeneratorWorker returns a RuntimeError raised inside the
    generator as if the worker had been deleted, and only warns about it.
    """


def guarded(job: Any, *args: Any, **kwargs: Any) -> Generator:
    """Run the generator ``job``, re-raising its RuntimeErrors as AnalysisError."""
    try:
        return (yield from job(*args, **kwargs))
    except RuntimeError as err:
        raise AnalysisError(f"{type(err).__name__}: {err}") from err


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


def not_of_image(
    source: str | None, slide: Path | None, image_name: str, mpp: float
) -> str:
    """Why loaded results are not placed on the chosen image."""
    results = f"results of {source!r}" if source else "results of an unnamed image"
    image = slide.name if slide is not None else image_name
    where = "" if slide is not None else " (a layer without a slide file)"
    advice = f"choose image {source!r} to overlay them" if source else ""
    return (
        f"LEMON: {results} are not of the chosen image {image!r}{where}: placed "
        f"in microns at their mpp ({mpp:g} µm/px)" + (f"; {advice}" if advice else "")
    )


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
        self._viewer = _results.unwrapped(viewer)  # see unwrapped()
        self._worker: Any = None
        self._progress: progress | None = None
        self._job: dict[str, Any] = {}
        self._loader: Any = None
        self._make_controls()
        self._connect()
        self._on_image_changed(self._image.value)
        self._start_colour_timer()

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
        self._region = ComboBox(
            label="region", choices=[WHOLE, VIEW, RECTANGLE, WHOLE_SLIDE]
        )
        self._folder = FileEdit(
            label="results folder",
            mode="d",
            tooltip="Where <slide>.lemon.zarr is written; empty: beside the slide. "
            "Running again resumes an unfinished store",
        )
        self._tile_um = FloatSpinBox(
            label="tile (µm)",
            min=16.0,
            max=4096.0,
            value=512.0,
            tooltip="Side of the square tiles a whole slide is analysed in",
        )
        for control in (self._folder, self._tile_um):
            control.visible = False
        self._outlines = CheckBox(text="outlines when zoomed in", value=True)
        self._colour_by = ComboBox(label="colour by", choices=self._colour_columns)
        self._run = PushButton(text="Run")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._save = PushButton(text="Save results…", enabled=False)
        self._load = PushButton(text="Load results…")
        self._status = Label(value="")
        self.extend(
            [self._image, self._mpp, self._model, self._model_file, self._segmenter]
            + [self._clusters, self._device, self._region, self._folder]
            + [self._tile_um]
            + [self._outlines, self._colour_by, self._run, self._cancel]
            + [self._save, self._load, self._status]
        )

    def _connect(self) -> None:
        self._image.changed.connect(self._on_image_changed)
        self._model.changed.connect(
            lambda value: setattr(self._model_file, "visible", value == FROM_FILE)
        )
        self._region.changed.connect(self._on_region_changed)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._save.changed.connect(lambda: self.save_results())
        self._load.changed.connect(lambda: self.load_results())
        self._colour_by.changed.connect(self._on_colour_by)
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._image.reset_choices)
            event.connect(self._colour_by.reset_choices)
        self._viewer.layers.selection.events.active.connect(
            self._colour_by.reset_choices
        )

    def _rgb_layers(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return _source.image_layers(self._viewer)

    def _on_region_changed(self, value: str) -> None:
        for control in (self._folder, self._tile_um):
            control.visible = value == WHOLE_SLIDE

    def _colour_columns(self, _widget: Any = None) -> list[str]:
        layer = self.results_layer() if hasattr(self, "_viewer") else None
        if layer is None:
            return []
        names = [c for c in layer.features.columns if c not in HIDDEN_COLUMNS]
        return sorted(names, key=lambda c: (c != "cluster", not c.startswith("probe")))

    def _on_colour_by(self, column: str | None) -> None:
        layer = self.results_layer()
        current = None if layer is None else layer.metadata.get("lemon_colour", {})
        if column and layer is not None and current.get("column", "cluster") != column:
            recolour(layer, column, _results.stored_palette(layer, column))

    def _start_colour_timer(self) -> None:
        """Look every :data:`COLOUR_POLL_MS` at what the nuclei are coloured by.

        NOTE: other panels recolour the layer (a probe, Leiden) and
        :func:`._nuclei_display.recolour` keeps napari's colour events quiet, so
        "colour by" follows the layer's colour record, as the legend does.
        """
        from qtpy.QtCore import QTimer

        self._colour_timer = QTimer(self.native)
        self._colour_timer.setInterval(COLOUR_POLL_MS)
        self._colour_timer.timeout.connect(self.follow_colour)
        self._colour_timer.start()

    def follow_colour(self) -> None:
        """Show in "colour by" the column the nuclei layer is coloured by.

        Only the choice shown changes: the nuclei are not recoloured.
        """
        layer = self.results_layer()
        if layer is None:
            return
        record = layer.metadata.get(COLOUR_KEY) or {}
        column = record.get("column", "cluster")
        if column == self._colour_by.value or column not in layer.features:
            return
        with self._colour_by.changed.blocked():
            if column not in self._colour_by.choices:
                self._colour_by.reset_choices()
            if column in self._colour_by.choices:
                self._colour_by.value = column

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
        mpp = params.pop("mpp")
        self._job = {"layer": layer, "mpp": mpp, "region": params["region"]}
        if self._region.value == WHOLE_SLIDE:
            self._start_whole_slide(layer, path, mpp, params)
            return
        # NOTE: a layer without a file is written whole (its finest level) to a TIFF
        pixels = layer.data[0] if layer.multiscale else layer.data
        source = path if path is not None else pixels
        self._start(analysis_job, source, mpp, **params)

    def _start_whole_slide(
        self, layer: Image, path: Path | None, mpp: float, params: dict[str, Any]
    ) -> None:
        if path is None:
            show_error(
                f"region={WHOLE_SLIDE!r} needs a layer opened from a slide file; "
                f"{layer.name!r} has none. Open the slide with File > Open, or "
                "choose another region"
            )
            return
        try:
            out = _slide_job.results_path(path, self._folder.value)
        except ValueError as err:
            show_error(str(err))
            return
        params.pop("region")
        params["tile_um"] = float(self._tile_um.value)
        self._job.update(stop=threading.Event(), out=out, resumed=None)
        self._start(
            _slide_job.whole_slide_job, path, mpp, out, self._job["stop"], **params
        )

    def _start(self, job_function: Any, *args: Any, **kwargs: Any) -> None:
        # superqt's worker: this panel reports errors and warnings itself, once
        job = thread_worker(guarded, worker_class=GeneratorWorker, ignore_errors=True)
        worker = job(job_function, *args, **kwargs)
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
        if self._worker is None:
            return
        if "stop" in self._job:  # whole slide: the job closes its store itself
            self._job["stop"].set()
        else:
            self._worker.quit()
        self._status.value = "cancelling after the current batch…"

    def _set_running(self, running: bool) -> None:
        self._run.enabled = not running
        self._cancel.enabled = running
        self._status.value = "running…" if running else self._status.value

    # ------------------------------------------------------------ worker events
    def _on_progress(self, step: tuple[str, int, int]) -> None:
        stage, done, total = step
        if stage == "tiles" and self._job.get("resumed") is None:
            self._job["resumed"] = done
            if done:
                self._status.value = f"resuming, {done} of {total} tiles done"
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
        if result is None:  # a whole-slide run stopped by Cancel
            self._status.value = "cancelled: Run again to resume"
            show_info(f"LEMON: cancelled; {self._job['out'].name} can be resumed")
            return
        store = None
        if isinstance(result, tuple):  # a whole slide: (SlideRun, AnnData)
            run, adata = result
            region, where, store = None, f"; saved to {run.path}", run.path
        else:
            adata, region, where = result.adata, result.region, ""
        if adata.n_obs == 0:
            show_warning(f"No nuclei found in {layer.name!r} (region {region})")
            return
        replaced = self._remove_layers_of(store)
        points = self.show_nuclei(adata, layer, mpp, region)
        points.metadata[_results.STORE_PATH_KEY] = store
        again = f"; replaced the layer of {store.name}" if replaced else ""
        self._status.value = f"{adata.n_obs:,} nuclei{again}"
        show_info(f"LEMON: {adata.n_obs:,} nuclei in {layer.name!r}{where}{again}")

    def _remove_layers_of(self, store: Path | None) -> int:
        """Remove the nuclei layers that show ``store``; how many there were.

        NOTE: running a store again resumes or re-clusters it, and the layer
        made from it then shows it as it was: the new layer replaces it (its
        labels are kept beside the store, so the cell types panel reloads them).
        """
        if store is None:
            return 0
        old = _results.layers_of_store(self._viewer, store)
        for layer in old:
            self._viewer.layers.remove(layer)
        return len(old)

    def show_nuclei(
        self,
        adata: Any,
        layer: Image | None,
        mpp: float,
        region: tuple | None = None,
        name: str | None = None,
    ) -> Any:
        """Add results as a nuclei layer (outlines when zoomed in, if ticked)."""
        points = _results.add_nuclei(
            self._viewer, adata, layer, mpp, region, name, self._outlines.value
        )
        self._save.enabled = True
        self._colour_by.reset_choices()
        return points

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

    # --------------------------------------------------------------------- load
    def load_results(self, path: str | Path | None = None) -> Any:
        """Show the nuclei of a results file (``.lemon.zarr`` or ``.h5ad``).

        Read in a worker thread; the nuclei land on the chosen image when it is the
        slide the results came from, else in microns at the results' mpp.

        Parameters
        ----------
        path : str or Path, optional
            The results; when None a dialog asks.

        Returns
        -------
        The worker reading the file, or None when nothing is read.
        """
        from napari_lemon.store import read_results

        if path is None:
            path = self._ask_results_path()
            if not path:
                return None
        path = Path(path)
        job = thread_worker(read_results, ignore_errors=True)
        worker = job(path)
        worker.returned.connect(lambda adata: self._on_loaded(adata, path))
        worker.errored.connect(lambda err: self._on_load_failed(err, path))
        worker.finished.connect(lambda: setattr(self, "_loader", None))
        self._loader = worker
        self._status.value = f"reading {path.name}…"
        worker.start()
        return worker

    def _on_load_failed(self, err: Exception, path: Path) -> None:
        self._status.value = f"could not load {path.name}"
        show_error(f"Could not load LEMON results: {err}")

    def _on_loaded(self, adata: Any, path: Path) -> None:
        provenance = adata.uns.get("lemon", {})
        mpp = provenance.get("mpp")
        if not mpp:
            self._status.value = f"could not load {path.name}"
            show_error(
                f"{path.name} records no mpp in uns['lemon']: it cannot be placed "
                "on a slide; make it with `lemon analyze` or the LEMON panel"
            )
            return
        layer = self._image.value
        source = provenance.get("source", {}).get("name")
        slide = _source.slide_path_of(layer) if layer is not None else None
        if slide is None or slide.name != source:
            if layer is not None:
                show_warning(not_of_image(source, slide, layer.name, float(mpp)))
            layer = None  # not the slide they came from: place them in microns
        points = self.show_nuclei(adata, layer, float(mpp), name=f"{path.name} nuclei")
        points.metadata[_results.STORE_PATH_KEY] = path
        self._status.value = f"{adata.n_obs:,} nuclei from {path.name}"

    def _ask_results_path(self) -> str:
        from qtpy.QtWidgets import QFileDialog

        # NOTE: a .zarr store is a folder: any file in it stands for the store
        path, _ = QFileDialog.getOpenFileName(
            self.native,
            "Open LEMON results: an .h5ad file, or a file in a .lemon.zarr folder",
            "",
            "LEMON results (*.h5ad zarr.json .zattrs .zgroup)",
        )
        for folder in Path(path).parents if path else ():
            if folder.suffix == ".zarr":
                return str(folder)
        return path

    # --------------------------------------------------------------------- save
    def results_layer(self) -> Any:
        """The active nuclei layer, else the most recent one; None if there is none."""
        return _results.current_nuclei_layer(self._viewer)

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
        if layer.metadata.get(_results.STORE_PATH_KEY) is None:
            layer.metadata[_results.STORE_PATH_KEY] = saved  # labels go beside it
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
