"""What the cell types panel keeps for one nuclei layer, and the columns it writes.

A :class:`LayerTyping` holds a layer's :class:`~napari_lemon.annotations.Annotations`
(loaded from beside its results store, or kept in memory while the layer has
none), the map from ``nucleus_id`` to row, the brush's centroid index (built on
first use) and the current probe with its predictions. The panel keeps one per
layer, so switching layers and back keeps each one's work.

The columns follow the results contract: ``label`` (categorical of type names,
missing when unlabelled) with ``uns["label_colors"]``; ``probe_<name>``
(categorical), ``probe_<name>_proba`` (float32 confidence), ``obsm["probe_<name>"]``
(class probabilities) and ``uns["probe_<name>_colors"]``. They go into the
layer's ``features`` (one assignment, so that napari and other plugins see the
change) and into the layer's AnnData, which saving and exporting read.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._reader import MPP_KEY
from ._results import ADATA_KEY, ANNOTATIONS_KEY, store_path_of

if TYPE_CHECKING:
    from napari.layers import Points

    from napari_lemon.analysis.brush_hits import BrushIndex

    from ._probe_job import ProbeRequest

logger = logging.getLogger(__name__)

LABEL_COLUMN = "label"
LABELS, PREDICTION, CONFIDENCE = "labels", "prediction", "prediction × confidence"
NOT_SAVED = (
    "labels not saved yet: save the results with LEMON nuclei > Save results…; "
    "they are saved beside them from then on"
)


NO_LAYER = "no LEMON nuclei layer: analyse an image with LEMON nuclei first"


def no_embeddings(layer: Any) -> str:
    """Why a layer without embeddings cannot have a probe."""
    from napari_lemon.store import EMBEDDING_KEY

    return (
        f"layer {layer.name!r} has no embeddings (obsm[{EMBEDDING_KEY!r}]), which "
        "the probe reads: analyse the image with LEMON nuclei, or load results "
        "saved with their embeddings"
    )


def probe_columns(name: str) -> tuple[str, str]:
    """The features columns of a probe's prediction and its confidence."""
    return f"probe_{name}", f"probe_{name}_proba"


class LayerTyping:
    """Annotations, nucleus rows, brush index and probe of one nuclei layer.

    Parameters
    ----------
    layer : Points
        A LEMON nuclei layer.

    Attributes
    ----------
    annotations : Annotations
    ids : ndarray of shape (n_nuclei,), int64
        ``nucleus_id`` of each row.
    load_error : str or None
        Why the annotations beside the store could not be read (they are then
        kept in memory and never written over the file).
    load_warning : str or None
        What the annotations warned about when they were loaded: that they
        seem to belong to other results.
    save_error : str or None
        Why the last change could not be saved.
    probe : LinearProbe or None
    probe_source : str
        ``"labels"`` (trained here) or the file it was applied from.
    proba : ndarray of shape (n_nuclei, k), float32, or None
    metrics : ProbeMetrics, dict or None
    last_row : int or None
        The nucleus last clicked or jumped to.
    """

    def __init__(self, layer: Points) -> None:
        self.layer = layer
        self.adata = layer.metadata[ADATA_KEY]
        obs = self.adata.obs
        ids = obs["nucleus_id"] if "nucleus_id" in obs else np.arange(len(obs))
        self.ids = np.asarray(ids, dtype=np.int64)
        self._rows = pd.Index(self.ids)
        self._index: BrushIndex | None = None
        self.load_error: str | None = None
        self.load_warning: str | None = None
        self.save_error: str | None = None
        self.shown_error: str | None = None  # the save error last notified
        self.shown: dict[str, str] = {}  # the colours the nuclei were last given
        self.probe: Any = None
        self.probe_source = "labels"
        self.proba: np.ndarray | None = None
        self.metrics: Any = None
        self.last_row: int | None = None
        self.path: Path | None = None
        self._listeners: list = []
        self.annotations = self._load_annotations()

    # ---------------------------------------------------------- annotations
    def _load_annotations(self) -> Any:
        """The annotations beside the store (loaded when there), else new ones.

        NOTE: the panel saves them itself after each change (:meth:`save`), so
        that a failed save is reported once and never interrupts an action:
        their own ``path`` stays None and :attr:`path` holds the file.
        """
        from napari_lemon.annotations import (
            Annotations,
            annotations_path,
            results_identity,
        )

        identity = results_identity(self.adata)
        store = store_path_of(self.layer)
        if store is None:
            # nuclei imported with classes come with their labels
            imported = self.layer.metadata.get(ANNOTATIONS_KEY)
            return imported if imported is not None else Annotations(None, identity)
        try:
            # NOTE: kept for the panel to show; a warning reaches the terminal only
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                annotations = Annotations.for_results(store, identity)
        except (ValueError, OSError) as err:
            self.load_error = str(err)
            return Annotations(None, identity)
        said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        self.load_warning = "; ".join(said) or None
        self.path, annotations.path = annotations_path(store), None
        return annotations

    def save(self) -> bool:
        """Write the annotations to :attr:`path`; False (and ``save_error``) if not.

        Nothing to write to (no store yet, or an unreadable file there) is not
        an error: the labels stay in memory.
        """
        if self.path is None:
            return False
        try:
            self.annotations.save(self.path)
        except OSError as err:
            self.save_error = str(err)
            return False
        self.save_error = None
        return True

    def follow_store(self) -> str | None:
        """Save beside the layer's store once it has one.

        A layer's store is often recorded just after the layer is added. Then an
        annotations file may already lie beside it: it is loaded if nothing was
        labelled here yet, else left alone (the labels made here stay in
        memory, :attr:`load_error` says so).

        Returns
        -------
        "saved", "loaded", "conflict", or None when nothing changed.
        """
        from napari_lemon.annotations import annotations_path

        store = store_path_of(self.layer)
        if store is None or self.path is not None or self.load_error:
            return None
        path = annotations_path(store)
        if not path.exists():
            self.path = path
            if self.annotations.types or self.annotations.labels():
                self.save()  # what was done before the store existed
            return "saved"
        if self.annotations.types or self.annotations.labels():
            self.load_error = (
                f"{path.name} already lies beside {store.name}; the labels made "
                "here are not written over it"
            )
            return "conflict"
        self.annotations = self._load_annotations()
        for callback in self._listeners:
            self.annotations.on_change(callback)
        return "loaded"

    def on_change(self, callback: Any) -> None:
        """Call ``callback()`` after each change of the annotations (even new ones)."""
        self._listeners.append(callback)
        self.annotations.on_change(callback)

    def counts(self) -> dict[str, int]:
        """Labels per type among this layer's nuclei, every type (0 included).

        Labels of nucleus ids the layer does not hold (annotations of other
        results) are not counted: see :meth:`n_elsewhere`.
        """
        _, names = self.labelled()
        counts = dict.fromkeys(self.annotations.type_names(), 0)
        for name, n in pd.Series(names, dtype=object).value_counts().items():
            counts[name] = int(n)
        return counts

    def n_elsewhere(self) -> int:
        """How many labels are of nucleus ids this layer does not hold."""
        return len(self.annotations.labels()) - len(self.labelled()[0])

    def save_state(self) -> str:
        """A sentence on where the labels are kept."""
        if self.load_error:
            return f"labels kept in memory only: {self.load_error}"
        if self.save_error:
            return f"labels kept in memory only: {self.save_error}"
        if self.path is None:
            return NOT_SAVED
        return f"labels saved to {self.path.name}"

    # --------------------------------------------------------------- rows
    @property
    def mpp(self) -> float:
        """Level-0 microns per pixel of the layer's nuclei."""
        return float(self.layer.metadata.get(MPP_KEY) or 1.0)

    @property
    def embeddings(self) -> Any:
        """The nuclei's embeddings (``obsm["X_lemon"]``), or None."""
        from napari_lemon.store import EMBEDDING_KEY

        return self.adata.obsm.get(EMBEDDING_KEY)

    @property
    def centroids_xy(self) -> np.ndarray:
        """Level-0 ``(x, y)`` px of each row."""
        return self.adata.obs[["x", "y"]].to_numpy(dtype=np.float64)

    def brush_index(self) -> BrushIndex:
        """The centroid index of the brush (built on first use)."""
        from napari_lemon.analysis.brush_hits import BrushIndex

        if self._index is None:
            self._index = BrushIndex(self.centroids_xy)
        return self._index

    def rows_of(self, nucleus_ids: Any) -> np.ndarray:
        """Rows of nuclei by id; ids not in this layer are left out."""
        where = self._rows.get_indexer(np.asarray(nucleus_ids, dtype=np.int64))
        return where[where >= 0].astype(np.int64)

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and type names of the labelled nuclei (in row order)."""
        labels = self.annotations.labels()
        if not labels:
            return np.empty(0, np.int64), np.empty(0, object)
        ids = np.fromiter(labels.keys(), np.int64, len(labels))
        names = np.array(list(labels.values()), dtype=object)
        where = self._rows.get_indexer(ids)
        keep = where >= 0
        order = np.argsort(where[keep], kind="stable")
        return where[keep][order].astype(np.int64), names[keep][order]

    def label_codes(self) -> np.ndarray:
        """Type index of every row (in type order), -1 when unlabelled."""
        codes = np.full(len(self.ids), -1, dtype=np.int64)
        rows, names = self.labelled()
        index = {name: i for i, name in enumerate(self.annotations.type_names())}
        codes[rows] = [index[name] for name in names]
        return codes

    def labelled_mask(self) -> np.ndarray:
        """Whether each row is labelled."""
        return self.label_codes() >= 0

    def probe_request(self, generation: int, name: str) -> ProbeRequest | None:
        """What to train a probe ``name`` from: the labels as they are now."""
        from napari_lemon.analysis.probe import region_groups
        from napari_lemon.store import PROVENANCE_KEY

        from ._probe_job import REGION_UM, ProbeRequest

        if self.embeddings is None:
            return None
        rows, names = self.labelled()
        xy = self.centroids_xy[rows]
        groups = region_groups(xy[:, 0], xy[:, 1], REGION_UM / self.mpp)
        classes = self.annotations.type_names()
        colours = [self.annotations.colour_of(c) for c in classes]
        provenance = dict(self.adata.uns.get(PROVENANCE_KEY, {}))
        return ProbeRequest(
            generation, self.embeddings, rows, names, classes, colours, groups,
            provenance, name,
        )  # fmt: skip

    def colours(self) -> dict[str, str]:
        """Type name -> ``#rrggbb``, of the types and of the probe's classes."""
        colours = {}
        if self.probe is not None:
            colours.update(zip(self.probe.classes, self.probe.colours, strict=True))
        annotations = self.annotations
        colours.update(
            {name: annotations.colour_of(name) for name in annotations.type_names()}
        )
        return colours

    # ------------------------------------------------------------- columns
    def write_labels(self) -> pd.Categorical:
        """The ``label`` column into the features and the AnnData."""
        names = self.annotations.type_names()
        column = pd.Categorical.from_codes(self.label_codes(), categories=names)
        self._set_columns({LABEL_COLUMN: column})
        self.adata.uns["label_colors"] = [self.annotations.colour_of(n) for n in names]
        return column

    def write_predictions(self, probe: Any, proba: np.ndarray) -> None:
        """A probe's prediction and confidence columns, and its probabilities."""
        index = proba.argmax(axis=1)
        confidence = proba[np.arange(len(proba)), index].astype(np.float32)
        predicted = pd.Categorical.from_codes(index, categories=list(probe.classes))
        name, proba_name = probe_columns(probe.name)
        self._set_columns({name: predicted, proba_name: confidence})
        self.adata.obsm[name] = np.asarray(proba, dtype=np.float32)
        self.adata.uns[f"{name}_colors"] = list(probe.colours)
        self.probe, self.proba = probe, proba

    def drop_predictions(self) -> None:
        """Forget the probe and remove its columns."""
        probe = self.probe
        self.probe, self.proba, self.metrics = None, None, None
        if probe is None:
            return
        name, proba_name = probe_columns(probe.name)
        features = self.layer.features
        kept = [c for c in features.columns if c not in (name, proba_name)]
        if len(kept) != len(features.columns):
            self.layer.features = features[kept].copy()
        self.adata.obs.drop(columns=[name, proba_name], inplace=True, errors="ignore")
        self.adata.obsm.pop(name, None)
        self.adata.uns.pop(f"{name}_colors", None)

    def prediction_columns(self) -> dict[str, Any]:
        """``obs``, ``obsm`` and ``uns`` entries of the labels and predictions."""
        features = self.layer.features
        obs = {LABEL_COLUMN: self.write_labels()}
        obsm, uns = {}, {"label_colors": self.adata.uns.get("label_colors", [])}
        if self.probe is not None:
            name, proba_name = probe_columns(self.probe.name)
            obs[name] = features[name].array
            obs[proba_name] = features[proba_name].to_numpy(dtype=np.float32)
            obsm[name] = np.asarray(self.proba, dtype=np.float32)
            uns[f"{name}_colors"] = list(self.probe.colours)
        return {"obs": obs, "obsm": obsm, "uns": uns}

    # -------------------------------------------------------------- colours
    def recolour(self, mode: str) -> None:
        """Colour the nuclei by ``mode``: LABELS, PREDICTION or CONFIDENCE.

        The prediction modes fall back to the labels while there is no probe;
        nothing changes while there are no types (the layer keeps its colours).
        """
        from ._nuclei_display import confidence_alpha, recolour

        layer, colours, probe = self.layer, self.colours(), self.probe
        self.shown = colours
        name = None if probe is None else probe_columns(probe.name)
        if mode != LABELS and name is not None and name[0] in layer.features:
            classes = list(probe.classes)
            alpha = None
            if mode == CONFIDENCE:
                confidence = layer.features[name[1]].to_numpy(np.float32)
                alpha = confidence_alpha(confidence, len(classes))
            recolour(layer, name[0], {c: colours[c] for c in classes}, alpha)
        elif LABEL_COLUMN in layer.features and self.annotations.types:
            names = self.annotations.type_names()
            recolour(layer, LABEL_COLUMN, {n: colours[n] for n in names})

    def _set_columns(self, columns: dict[str, Any]) -> None:
        """Put columns into the features and ``obs``.

        NOTE: a column that is there already, with the same dtype (categories
        included), is replaced in the layer's own table: copying and setting
        1,000,000 rows of features takes 0.2 s, too slow for every stroke.
        """
        for name, values in columns.items():
            self.adata.obs[name] = values
        features = self.layer.features
        same = all(
            name in features and features[name].dtype == pd.Series(values).dtype
            for name, values in columns.items()
        )
        if same:
            for name, values in columns.items():
                features[name] = values
            self.layer.events.features()
            return
        features = features.copy()
        for name, values in columns.items():
            features[name] = values
        self.layer.features = features
