"""The "LEMON import and export" panel: results out to other tools, nuclei in.

Export writes the chosen nuclei layer's results as they are in the viewer
(clusters, map, probe predictions included) with the user's labels: QuPath
GeoJSON (optionally gzipped), AnnData ``.h5ad`` for scanpy, or CSV
(:mod:`napari_lemon.export`). Import reads nuclei outlined elsewhere (QuPath
GeoJSON, Aperio ImageScope XML, HoVer-Net or CellViT JSON), embeds them with the
bundled encoder on the chosen image (:func:`napari_lemon.export.imported_results`)
and adds them as a nuclei layer; objects that came classified become labelled
nuclei of their cell types. Both run in a worker thread.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
)
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning

from .._reader import SLIDE_PATH_KEY
from . import _results, _source
from ._gl_safety import block_triton_after_gl_llvm
from ._nuclei_display import recolour
from ._panel_job import PanelJob

if TYPE_CHECKING:
    import napari
    from anndata import AnnData
    from napari.layers import Points

WHAT = "LEMON import and export"
AUTO = "from the file name"
FILTERS = {
    "geojson": "QuPath GeoJSON (*.geojson *.geojson.gz)",
    "h5ad": "AnnData (*.h5ad)",
    "csv": "CSV (*.csv *.csv.gz)",
}
SUFFIXES = {"geojson": ".geojson", "h5ad": ".h5ad", "csv": ".csv"}
IMPORT_FILTER = "Nuclei (*.geojson *.json *.xml *.geojson.gz *.json.gz)"


# ------------------------------------------------------------- worker jobs
def export_job(
    adata: AnnData, fmt: str, path: Path, gzip: bool, annotations: Any
) -> Generator[tuple[str, int, int], None, Path]:
    """Write ``adata`` (and ``annotations``) to ``path`` as ``fmt``."""
    from napari_lemon.export import export_csv, export_geojson, export_h5ad

    yield f"writing {adata.n_obs:,} nuclei to {path.name}", 0, 0
    if fmt == "geojson":
        return export_geojson(adata, path, gzip=gzip, annotations=annotations)
    if fmt == "csv":
        return export_csv(adata, path, gzip=gzip, annotations=annotations)
    return export_h5ad(adata, path, annotations=annotations, gzip=gzip)


def import_job(
    path: Path,
    fmt: str | None,
    source: Path | Any,
    mpp: float | None,
    device: str = "auto",
    report: Callable[[str, int, int], None] | None = None,
) -> Generator[tuple[str, int, int], None, tuple[Any, Any, float | None]]:
    """Read nuclei from ``path`` and embed them on ``source``; in the worker.

    ``source`` is the slide file, or the pixels of a layer without one (written
    to a temporary TIFF first). ``mpp`` None takes the file's (ImageScope
    records one). Returns ``(imported, adata, mpp)``; ``adata`` is None when the
    file holds no nuclei.
    """
    from napari_lemon.export import imported_results, read_nuclei_file
    from napari_lemon.slide import open_slide

    yield f"reading {path.name}", 0, 0
    imported = read_nuclei_file(path, fmt)
    mpp = mpp or imported.mpp
    if not mpp:
        raise ValueError(
            f"the pixel size of the image is unknown and {path.name} records none: "
            "enter the image's microns per pixel in 'mpp' (e.g. 0.25 for 40x)"
        )
    if len(imported) == 0:
        return imported, None, mpp
    with tempfile.TemporaryDirectory(prefix="napari-lemon-") as folder:
        if not isinstance(source, Path):
            yield "writing the layer to a temporary TIFF", 0, 1
            source = _source.write_layer_tiff(source, mpp, Path(folder) / "layer.tif")
        yield f"embedding {len(imported):,} nuclei", 0, len(imported)
        with open_slide(source, mpp=mpp) as slide:
            adata = imported_results(slide, imported, device=device, progress=report)
    return imported, adata, float(mpp)


def annotations_of(layer: Points) -> Any:
    """The labels to export with a nuclei layer: the file beside its store.

    None without a store (or a file beside it): the export then takes
    ``obs["label"]`` of the layer's results, which the cell types panel and
    imports write.
    """
    store = _results.store_path_of(layer)
    if store is None:
        return None
    from napari_lemon.export.results import annotations_beside

    return annotations_beside(store, layer.metadata[_results.ADATA_KEY])


def export_format(path: Path, fmt: str | None) -> str:
    """The format to write ``path`` in: ``fmt``, else the file name's."""
    from napari_lemon.export.results import check_format

    return check_format(fmt, path)


# ------------------------------------------------------------------ panel
class ExportWidget(Container):
    """Dock panel: export a nuclei layer's results; import nuclei onto an image.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        block_triton_after_gl_llvm()  # before anything imports torch here
        self._viewer = _results.unwrapped(viewer)  # see unwrapped()
        self.job = PanelJob(WHAT, self._set_running)
        self._make_controls()
        self._connect()
        self._on_image(self._image.value)

    # ---------------------------------------------------------------- layout
    def _make_controls(self) -> None:
        from napari_lemon.export import EXPORT_FORMATS, IMPORT_FORMATS

        self._layer = ComboBox(label="nuclei", choices=self._nuclei_layers)
        self._format = ComboBox(
            label="format", choices=list(EXPORT_FORMATS), value="geojson"
        )
        self._gzip = CheckBox(text="gzip (.gz)", value=False)
        self._export = PushButton(text="Export…")
        self._image = ComboBox(label="onto image", choices=self._rgb_layers)
        self._import_format = ComboBox(
            label="import format", choices=[AUTO, *IMPORT_FORMATS]
        )
        self._mpp = FloatSpinBox(
            label="mpp (µm/px)",
            min=0.0,
            max=100.0,
            step=0.0001,
            tooltip="Microns per pixel of the image; 0 = unknown: the nuclei "
            "file's (ImageScope records one), else required",
        )
        self._import = PushButton(text="Import nuclei…")
        self._status = Label(value="")
        self.extend(
            [Label(value="Export results"), self._layer, self._format, self._gzip]
            + [self._export, Label(value="Import nuclei"), self._image]
            + [self._import_format, self._mpp, self._import, self._status]
        )

    def _connect(self) -> None:
        self._export.changed.connect(lambda: self.export())
        self._import.changed.connect(lambda: self.import_nuclei())
        self._image.changed.connect(self._on_image)
        self._format.changed.connect(
            lambda fmt: setattr(self._gzip, "enabled", fmt != "h5ad")
        )
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._layer.reset_choices)
            event.connect(self._image.reset_choices)
        self._viewer.layers.selection.events.active.connect(self._follow_active)

    def _nuclei_layers(self, _widget: Any = None) -> list[tuple[str, Points]]:
        return [(layer.name, layer) for layer in _results.nuclei_layers(self._viewer)]

    def _rgb_layers(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return _source.image_layers(self._viewer)

    def _follow_active(self, _event: Any = None) -> None:
        active = self._viewer.layers.selection.active
        if _results.is_nuclei_layer(active) and self._layer.value is not active:
            self._layer.value = active

    def _on_image(self, layer: Image | None) -> None:
        mpp = _source.layer_mpp(layer) if layer is not None else None
        self._mpp.value = mpp or 0.0

    def _set_running(self, running: bool) -> None:
        self._export.enabled = self._import.enabled = not running
        if running:
            self._status.value = "running…"

    @property
    def worker(self) -> Any:
        """The running worker, or None."""
        return self.job.worker

    # ----------------------------------------------------------------- export
    def export(self, path: str | Path | None = None, fmt: str | None = None) -> Any:
        """Export the chosen layer's results to ``path`` in a worker.

        Parameters
        ----------
        path : str or Path, optional
            The file; None asks with a dialog.
        fmt : {"geojson", "h5ad", "csv"}, optional
            Default: the panel's choice (a dialog) or the name of ``path``.

        Returns
        -------
        The worker, or None when nothing is exported (an error is shown).
        """
        layer = self._layer.value
        if layer is None:
            show_error(f"{WHAT}: no nuclei layer to export; run the analysis first")
            return None
        if path is None:
            path = self._ask_export_path(layer)
            if not path:
                return None
            fmt = fmt or self._format.value
        path = Path(path)
        try:
            fmt = export_format(path, fmt)
            annotations = annotations_of(layer)
        except ValueError as err:
            show_error(f"{WHAT}: {err}")
            return None
        gzip = fmt != "h5ad" and (self._gzip.value or path.suffix.lower() == ".gz")
        if gzip and path.suffix.lower() != ".gz":
            path = path.with_name(f"{path.name}.gz")  # what it is, by its name
        adata = layer.metadata[_results.ADATA_KEY]
        return self.job.start(
            export_job,
            adata,
            fmt,
            path,
            gzip,
            annotations,
            on_result=self._on_exported,
            on_error=lambda _err: setattr(self._status, "value", "failed"),
        )

    def _on_exported(self, path: Path) -> None:
        self._status.value = f"exported {path.name}"
        show_info(f"{WHAT}: results written to {path}")

    def _ask_export_path(self, layer: Points) -> str:
        from qtpy.QtWidgets import QFileDialog

        fmt = self._format.value
        suffix = SUFFIXES[fmt] + (".gz" if self._gzip.value and fmt != "h5ad" else "")
        store = _results.store_path_of(layer)
        slide = layer.metadata.get(SLIDE_PATH_KEY)
        base = store or (Path(slide) if slide else None)
        stem = base.name.split(".")[0] if base else layer.name
        folder = base.parent if base else Path.home()
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Export LEMON results", str(folder / f"{stem}{suffix}"),
            FILTERS[fmt],
        )  # fmt: skip
        return path

    # ----------------------------------------------------------------- import
    def import_nuclei(
        self, path: str | Path | None = None, fmt: str | None = None
    ) -> Any:
        """Import nuclei from ``path`` onto the chosen image, in a worker.

        Parameters
        ----------
        path : str or Path, optional
            A QuPath GeoJSON, ImageScope XML, HoVer-Net or CellViT JSON file;
            None asks with a dialog.
        fmt : str, optional
            The file's format; default the panel's choice, which defaults to
            telling it from the file.

        Returns
        -------
        The worker, or None when nothing is imported (an error is shown).
        """
        image = self._image.value
        if image is None:
            show_error(f"{WHAT}: open the image the nuclei were outlined on first")
            return None
        if path is None:
            path = self._ask_import_path(image)
            if not path:
                return None
        path = Path(path)
        if not path.is_file():
            show_error(f"{WHAT}: {str(path)!r} is not a file; choose a nuclei file")
            return None
        if fmt is None and self._import_format.value != AUTO:
            fmt = self._import_format.value

        # the slide file, or the pixels of a layer without one
        block_triton_after_gl_llvm()
        slide = _source.slide_path_of(image)
        pixels = image.data[0] if image.multiscale else image.data
        return self.job.start(
            import_job,
            path,
            fmt,
            slide if slide is not None else pixels,
            float(self._mpp.value) or None,
            report=self.job.report,
            on_result=lambda result: self._on_imported(path, image, *result),
            on_error=lambda _err: setattr(self._status, "value", "failed"),
        )

    def _on_imported(
        self, path: Path, image: Image, imported: Any, adata: Any, mpp: float
    ) -> None:
        skipped = _skipped_text(imported)
        if adata is None or adata.n_obs == 0:
            show_warning(f"{WHAT}: no nuclei in {path.name}{skipped}")
            self._status.value = "no nuclei imported"
            return
        if image not in self._viewer.layers:
            image = None  # removed meanwhile: placed in microns
        annotations = labels_of_imported(imported, adata)
        points = _results.add_nuclei(
            self._viewer, adata, image, mpp, name=f"{path.name} nuclei"
        )
        labelled = ""
        if annotations is not None:
            points.metadata[_results.ANNOTATIONS_KEY] = annotations
            recolour(points, "label", _type_colours(annotations))
            counts = annotations.counts()
            labelled = f", {sum(counts.values()):,} labelled as {len(counts)} types"
        self._status.value = f"{adata.n_obs:,} nuclei imported"
        show_info(f"{WHAT}: {adata.n_obs:,} nuclei from {path.name}{labelled}{skipped}")

    def _ask_import_path(self, image: Image) -> str:
        """A nuclei file chosen in a dialog that starts beside the image's slide."""
        from qtpy.QtWidgets import QFileDialog

        slide = _source.slide_path_of(image)
        folder = slide.parent if slide is not None and slide.parent.is_dir() else None
        path, _ = QFileDialog.getOpenFileName(
            self.native, "Import nuclei", str(folder or Path.home()), IMPORT_FILTER
        )
        return path


def labels_of_imported(imported: Any, adata: AnnData) -> Any:
    """Classes of imported nuclei as labels, also in ``obs["label"]``; None if none.

    Returns the :class:`~napari_lemon.annotations.Annotations` (types in the
    file's colours); ``adata`` gets the ``label`` column and ``label_colors``.
    """
    from napari_lemon.annotations import label_columns, results_identity
    from napari_lemon.export import annotations_from_imported

    ids = adata.obs["nucleus_id"].to_numpy()  # the rows kept (inside the image)
    annotations = annotations_from_imported(
        imported, results_identity(adata), nucleus_ids=ids
    )
    if annotations is None or not annotations.labels():
        return None
    columns = label_columns(annotations, ids)
    for name, values in columns["obs"].items():
        adata.obs[name] = values
    adata.uns.update(columns["uns"])
    return annotations


def _type_colours(annotations: Any) -> dict[str, str]:
    return {name: annotations.colour_of(name) for name in annotations.type_names()}


def _skipped_text(imported: Any) -> str:
    """``"; 3 objects skipped (2 not polygons, 1 empty)"``, or empty."""
    n = int(getattr(imported, "n_skipped", 0) or 0)
    if not n:
        return ""
    reasons = getattr(imported, "skipped_reasons", {}) or {}
    why = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
    return f"; {n:,} objects skipped" + (f" ({why})" if why else "")
