"""The "LEMON clusters" panel: group the nuclei of a layer by their embeddings.

Two methods, both in :mod:`napari_lemon.analysis`: k-means with a chosen number
of clusters (``cluster`` column; "Suggest k" scores k = 2..12 by silhouette on a
sample and picks the best) and Leiden on a nearest-neighbour graph at a chosen
resolution (``leiden`` column). A run goes in a worker thread; its labels go
into the layer's features and ``adata.obs`` (a categorical), colour the nuclei,
and are written into the layer's results store when it has one
(:func:`napari_lemon.store_columns.write_analysis`), so reopening shows them.

Below, the legend (:mod:`._legend`) lists the categories of the layer's colour
column with their counts; clicking one selects and rings its nuclei.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info, show_warning

from . import _results
from ._legend import Legend
from ._nuclei_display import recolour
from ._panel_job import PanelJob

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

KMEANS, LEIDEN = "k-means", "Leiden"
COLUMNS = {KMEANS: "cluster", LEIDEN: "leiden"}
SUGGEST_KS = range(2, 13)
LEIDEN_NEIGHBOURS = 15  # each nucleus linked to this many in Leiden's graph
WHAT = "LEMON clusters"


# ------------------------------------------------------------- worker jobs
def embeddings_of(layer: Points) -> np.ndarray:
    """The embeddings of a nuclei layer; ValueError when it has none."""
    from napari_lemon.store import EMBEDDING_KEY

    adata = layer.metadata[_results.ADATA_KEY]
    embeddings = adata.obsm.get(EMBEDDING_KEY)
    if embeddings is None or np.shape(embeddings)[-1] == 0:
        raise ValueError(
            f"layer {layer.name!r} has no embeddings (obsm[{EMBEDDING_KEY!r}]): "
            "cluster results made by the LEMON analysis, or load them from their "
            ".lemon.zarr / .h5ad file"
        )
    return embeddings


def cluster_job(
    embeddings: np.ndarray,
    method: str,
    column: str,
    store: Path | None,
    n_clusters: int = 8,
    resolution: float = 1.0,
    seed: int = 0,
    report: Callable[[str, int, int], None] | None = None,
) -> Generator[tuple[str, int, int], None, tuple[np.ndarray, str | None]]:
    """Cluster in the worker thread and save the labels into ``store``.

    Returns
    -------
    (labels, problem)
        ``labels`` of shape (n_nuclei,), int64; ``problem`` the reason the store
        could not be written, else None.
    """
    from napari_lemon.analysis.clusters import cluster_kmeans

    # cluster
    yield f"{method} of {len(embeddings):,} nuclei", 0, 0
    if method == KMEANS:
        labels = cluster_kmeans(embeddings, n_clusters=n_clusters, seed=seed)
    else:
        from napari_lemon.analysis.graph_clusters import cluster_leiden

        labels = cluster_leiden(
            embeddings,
            resolution=resolution,
            n_neighbors=LEIDEN_NEIGHBOURS,
            seed=seed,
            progress=report,
        )
    labels = np.asarray(labels, dtype=np.int64)

    # save beside the embeddings; the labels are kept even when this fails
    if store is None:
        return labels, None
    yield f"saving {column} into {Path(store).name}", 0, 0
    try:
        from napari_lemon.store_columns import write_analysis

        write_analysis(store, obs={column: categorical_of(labels)})
    except (OSError, ValueError) as err:
        return labels, f"{type(err).__name__}: {err}"
    return labels, None


def suggest_job(
    embeddings: np.ndarray,
    ks: range = SUGGEST_KS,
    seed: int = 0,
    report: Callable[[str, int, int], None] | None = None,
) -> Generator[tuple[str, int, int], None, tuple[dict[int, float], int]]:
    """Silhouette scores per k and the best k, in the worker thread."""
    from napari_lemon.analysis.clusters import best_k, silhouette_hint

    yield f"silhouette for k = {ks.start}..{ks.stop - 1}", 0, 0
    scores = silhouette_hint(embeddings, ks=ks, seed=seed, progress=report)
    return scores, best_k(scores)


def categorical_of(labels: np.ndarray) -> pd.Categorical:
    """Integer labels as a categorical of ``0 .. max``."""
    n = int(labels.max()) + 1 if len(labels) else 0
    return pd.Categorical(labels, categories=range(n))


def put_column(layer: Points, column: str, labels: np.ndarray) -> None:
    """Write labels into ``adata.obs`` (ints) and the layer's features (text)."""
    from napari_lemon.store import set_clusters

    set_clusters(layer.metadata[_results.ADATA_KEY], labels, name=column)
    n = int(labels.max()) + 1 if len(labels) else 0
    features = layer.features.copy()
    # text categories: napari takes 16+ integer values for a continuous column
    names = [str(i) for i in range(n)]
    features[column] = pd.Categorical.from_codes(labels, categories=names)
    layer.features = features


def format_scores(scores: dict[int, float], best: int) -> str:
    """One line per k: its silhouette, a bar, the best marked."""
    top = max(scores.values()) if scores else 1.0
    lines = []
    for k, score in sorted(scores.items()):
        bar = "█" * max(int(round(12 * score / top)), 0) if top > 0 else ""
        mark = "  ◀ best" if k == best else ""
        lines.append(f"k={k:<3d}{score:6.3f} {bar}{mark}")
    return "\n".join(lines)


# ------------------------------------------------------------------ panel
class ClustersWidget(Container):
    """Dock panel: nuclei layer, method, k or resolution; suggest, run; legend.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Whose nuclei layers are clustered.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = _results.unwrapped(viewer)  # see unwrapped()
        self.job = PanelJob(WHAT, self._set_running)
        self.scores: dict[int, float] = {}
        self._make_controls()
        self._connect()
        self._on_layer(self._layer.value)

    # ---------------------------------------------------------------- layout
    def _make_controls(self) -> None:
        self._layer = ComboBox(label="nuclei", choices=self._nuclei_layers)
        self._method = ComboBox(label="method", choices=[KMEANS, LEIDEN])
        self._k = SpinBox(
            label="clusters (k)",
            min=2,
            max=64,
            value=8,
            tooltip="Number of k-means clusters; 'Suggest k' scores 2 to 12",
        )
        self._resolution = FloatSpinBox(
            label="resolution",
            min=0.05,
            max=10.0,
            step=0.05,
            value=1.0,
            tooltip="Leiden resolution: higher gives more, smaller clusters",
        )
        self._resolution.visible = False
        self._suggest = PushButton(text="Suggest k")
        self._scores = Label(value="")
        self._scores.native.setStyleSheet("font-family: monospace")
        self._run = PushButton(text="Run")
        self._status = Label(value="")
        self.extend(
            [self._layer, self._method, self._k, self._resolution, self._suggest]
            + [self._scores, self._run, self._status]
        )
        self.legend = Legend(self._viewer)
        self.native.layout().addWidget(self.legend)

    def _connect(self) -> None:
        self._layer.changed.connect(self._on_layer)
        self._method.changed.connect(self._on_method)
        self._suggest.changed.connect(self.suggest_k)
        self._run.changed.connect(self.run)
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._layer.reset_choices)
        self._viewer.layers.selection.events.active.connect(self._follow_active)

    def _nuclei_layers(self, _widget: Any = None) -> list[tuple[str, Points]]:
        return [(layer.name, layer) for layer in _results.nuclei_layers(self._viewer)]

    def _follow_active(self, _event: Any = None) -> None:
        active = self._viewer.layers.selection.active
        if _results.is_nuclei_layer(active) and self._layer.value is not active:
            self._layer.value = active

    def _on_layer(self, layer: Points | None) -> None:
        self.legend.set_layer(layer)
        self._status.value = ""  # it spoke of the layer before
        self._scores.value = ""
        self.scores = {}

    def _on_method(self, method: str) -> None:
        self._k.visible = self._suggest.visible = method == KMEANS
        self._resolution.visible = method == LEIDEN
        self._scores.visible = method == KMEANS

    def _set_running(self, running: bool) -> None:
        self._run.enabled = self._suggest.enabled = not running
        if running:
            self._status.value = "running…"

    # ------------------------------------------------------------- actions
    @property
    def worker(self) -> Any:
        """The running worker, or None."""
        return self.job.worker

    @property
    def layer(self) -> Points | None:
        """The chosen nuclei layer."""
        return self._layer.value

    def _checked_embeddings(self, need: tuple[int, str] | None = None) -> Any:
        """The chosen layer's embeddings, or None after an error notification.

        ``need`` is ``(n, why)``: at least ``n`` nuclei, else the message says
        ``why`` they are needed and what to do in the panel (``{n}`` in it is
        replaced by the layer's count, ``{name}`` by its name).
        """
        layer = self.layer
        if layer is None:
            show_error(
                f"{WHAT}: no nuclei layer; run the LEMON analysis or load results first"
            )
            return None
        try:
            embeddings = embeddings_of(layer)
        except ValueError as err:
            show_error(f"{WHAT}: {err}")
            return None
        n = len(embeddings)
        if need is not None and n < need[0]:
            show_error(f"{WHAT}: " + need[1].format(n=n, name=layer.name))
            return None
        return embeddings

    def run(self) -> Any:
        """Cluster the chosen layer; the worker, or None after an error message."""
        method = self._method.value
        k = int(self._k.value) if method == KMEANS else None
        if k is not None:
            need = (
                k,
                f"k={k} clusters need at least {k} nuclei and {{name!r}} has {{n}}; "
                "lower 'clusters (k)'",
            )
        else:
            leiden = LEIDEN_NEIGHBOURS + 1
            need = (
                leiden,
                f"Leiden needs at least {leiden} nuclei (it links each nucleus to "
                f"its {LEIDEN_NEIGHBOURS} most similar) and {{name!r}} has {{n}}; "
                "choose method 'k-means' with 'clusters (k)' at most {n}",
            )
        embeddings = self._checked_embeddings(need)
        if embeddings is None:
            return None
        layer, column = self.layer, COLUMNS[method]
        store = _results.store_path_of(layer)
        return self.job.start(
            cluster_job,
            embeddings,
            method,
            column,
            store,
            n_clusters=k or 8,
            resolution=float(self._resolution.value),
            report=self.job.report,
            on_result=lambda result: self._on_clustered(layer, column, *result),
            on_error=lambda _err: setattr(self._status, "value", "failed"),
        )

    def _on_clustered(
        self, layer: Points, column: str, labels: np.ndarray, problem: str | None
    ) -> None:
        if layer not in self._viewer.layers:
            return  # removed while clustering
        put_column(layer, column, labels)
        recolour(layer, column)
        self.legend.set_layer(layer)
        n = int(labels.max()) + 1 if len(labels) else 0
        store = _results.store_path_of(layer)
        self._status.value = f"{n} clusters in '{column}'"
        if problem is not None:
            show_warning(
                f"{WHAT}: {column!r} is shown but could not be saved into {store}: "
                f"{problem}"
            )
        elif store is not None:
            show_info(f"{WHAT}: {n} clusters saved as {column!r} in {store.name}")

    def suggest_k(self) -> Any:
        """Score k = 2..12 by silhouette in a worker; the best k is then set."""
        least = SUGGEST_KS[-1] + 1
        embeddings = self._checked_embeddings(
            (
                least,
                f"Suggest k scores k = {SUGGEST_KS.start}..{SUGGEST_KS[-1]} and "
                f"needs at least {least} nuclei; {{name!r}} has {{n}}: set "
                "'clusters (k)' yourself (at most {n}) and Run",
            )
        )
        if embeddings is None:
            return None
        return self.job.start(
            suggest_job,
            embeddings,
            report=self.job.report,
            on_result=lambda result: self._on_scores(*result),
            on_error=lambda _err: setattr(self._status, "value", "failed"),
        )

    def _on_scores(self, scores: dict[int, float], best: int) -> None:
        self.scores = dict(scores)
        self._scores.value = format_scores(scores, best)
        self._k.value = best
        self._status.value = f"suggested k = {best} (highest silhouette)"
