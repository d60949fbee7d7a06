"""Probe files of the cell types panel: save one with its predictions, load one.

Saving writes the probe (:meth:`napari_lemon.analysis.probe.LinearProbe.save`,
by default ``<store stem>.<probe name>.probe.safetensors`` beside the results
store) and the labels and predictions into the store
(:func:`napari_lemon.store_columns.write_analysis`), so that exports and other
tools see them. Loading checks the probe against the results it is to type
(encoder, crop scale, embedding length): a probe of another encoder is refused
before anything changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._results import store_path_of

if TYPE_CHECKING:
    from ._layer_typing import LayerTyping

PROBE_SUFFIX = ".probe.safetensors"
PROBE_FILTER = f"LEMON probe (*{PROBE_SUFFIX} *.safetensors)"


def default_probe_path(state: LayerTyping, name: str) -> Path | None:
    """``<store stem>.<name>.probe.safetensors`` beside the store, or None."""
    store = store_path_of(state.layer)
    if store is None:
        return None
    return store.with_name(f"{store.stem}.{name}{PROBE_SUFFIX}")


def results_folder(state: LayerTyping) -> Path | None:
    """The folder of the layer's results store, else of its slide; None if neither."""
    from .._reader import SLIDE_PATH_KEY

    store = store_path_of(state.layer)
    slide = state.layer.metadata.get(SLIDE_PATH_KEY)
    for path in (store, Path(slide) if slide else None):
        if path is not None and path.parent.is_dir():
            return path.parent
    return None


def save_probe(state: LayerTyping, path: str | Path) -> tuple[Path, Path | None]:
    """Save the layer's probe to ``path`` and its columns into the store.

    Returns
    -------
    (probe file, store or None when the layer has none yet)

    Raises
    ------
    ValueError, OSError
        The file or the store could not be written.
    """
    from napari_lemon.store_columns import write_analysis

    saved = Path(state.probe.save(path))
    store = store_path_of(state.layer)
    if store is not None:
        write_analysis(store, **state.prediction_columns())
    return saved, store


def load_probe_for(state: LayerTyping, path: str | Path) -> Any:
    """A saved probe, checked against the layer's results.

    Raises
    ------
    ValueError
        Not a probe file (the message names it).
    ProbeMismatch
        Another encoder, crop scale or embedding length than the results'.
    OSError
        The file could not be read.
    """
    from napari_lemon.analysis.probe import LinearProbe
    from napari_lemon.store import PROVENANCE_KEY

    probe = LinearProbe.load(path)
    store = store_path_of(state.layer)
    where = store.name if store is not None else f"layer {state.layer.name!r}"
    provenance = dict(state.adata.uns.get(PROVENANCE_KEY, {}))
    probe.check_compatible(provenance, where, embed_dim=state.embeddings.shape[1])
    return probe


def ask_probe_path(parent: Any, start: Path | None, save: bool) -> str:
    """A probe file chosen in a dialog ("" when cancelled)."""
    from qtpy.QtWidgets import QFileDialog

    start_text = str(start) if start is not None else str(Path.home())
    if save:
        title, ask = "Save LEMON probe", QFileDialog.getSaveFileName
    else:
        title, ask = "Apply a LEMON probe", QFileDialog.getOpenFileName
    path, _ = ask(parent, title, start_text, PROBE_FILTER)
    return path
