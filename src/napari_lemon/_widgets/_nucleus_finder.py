"""Nuclei worth a look: the next ones to label, and those like a chosen one.

"Suggest next" asks :func:`napari_lemon.analysis.suggest.suggest_next` for the
unlabelled nuclei the probe is least sure of, a diverse few (before there is a
probe: diverse nuclei to start with). "Find similar" asks
:func:`napari_lemon.analysis.neighbours.nearest_neighbours` for the nuclei whose
embeddings are closest to the chosen one (the last clicked or jumped to, else
the first selected), rings them on the slide and selects them. Both run in a
worker with the thumbnails (:mod:`._layer_thumbnails`) and fill a
:class:`._thumbnail_grid.ThumbnailGrid`; clicking a thumbnail centres the view
on its nucleus and selects it, ready to be labelled with a click.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._highlight import highlight
from ._jump import jump_to
from ._layer_thumbnails import thumbnail_source
from ._layer_typing import NO_LAYER, no_embeddings
from ._probe_job import report_error
from ._thumbnail_grid import ThumbnailGrid

if TYPE_CHECKING:
    import napari

    from ._layer_typing import LayerTyping

DEFAULT_N = 12


class NucleusFinder(QWidget):
    """The "Suggest next" and "Find similar" groups of the cell types panel.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    state : callable
        Returns the panel's current :class:`._layer_typing.LayerTyping` (or None).

    Attributes
    ----------
    n_suggest, n_similar : QSpinBox
        How many nuclei each shows.
    suggestions, similar : ThumbnailGrid
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, state: Callable[[], LayerTyping | None]
    ) -> None:
        super().__init__()
        self._viewer, self._state = viewer, state
        self._jobs: dict[str, Any] = {}
        self.n_suggest, self.n_similar = _count_box(), _count_box()
        self.suggest_button = QPushButton("Suggest next")
        self.suggest_button.setToolTip(
            "The nuclei the probe is least sure of, a diverse few: label them next"
        )
        self.similar_button = QPushButton("Find similar")
        self.similar_button.setToolTip(
            "The nuclei most like the selected (or last clicked) one"
        )
        self.suggestions = ThumbnailGrid(
            empty_text="The nuclei the probe is least sure of show here"
        )
        self.similar = ThumbnailGrid(
            empty_text="Select or click a nucleus, then Find similar"
        )
        self.suggest_button.clicked.connect(lambda: self.suggest_next())
        self.similar_button.clicked.connect(lambda: self.find_similar())
        self.suggestions.on_clicked(self.jump)
        self.similar.on_clicked(self.jump)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for title, count, button, grid in (
            ("Suggest next", self.n_suggest, self.suggest_button, self.suggestions),
            ("Find similar", self.n_similar, self.similar_button, self.similar),
        ):
            box = QGroupBox(title)
            inner = QVBoxLayout(box)
            row = QHBoxLayout()
            for widget in (QLabel("nuclei"), count, button):
                row.addWidget(widget)
            inner.addLayout(row)
            inner.addWidget(grid)
            layout.addWidget(box)

    def clear(self) -> None:
        """Show no thumbnails (another layer was chosen)."""
        self.suggestions.clear()
        self.similar.clear()

    def suggest_next(self) -> Any:
        """Show the nuclei worth labelling next as thumbnails.

        With a probe: the least sure unlabelled nuclei, a diverse few; before
        one: diverse nuclei to start with.
        """
        from napari_lemon.analysis.suggest import suggest_next

        state = self._state()
        if state is None:
            show_error(f"LEMON cell types: {NO_LAYER}")
            return None
        if state.embeddings is None:
            show_error(f"LEMON cell types: {no_embeddings(state.layer)}")
            return None
        proba, embeddings = state.proba, state.embeddings
        labelled, n = state.labelled_mask(), int(self.n_suggest.value())

        def pick() -> np.ndarray:
            return suggest_next(proba, embeddings, labelled, n=n)

        return self._thumbnails_job("suggest", pick, self.suggestions, self._caption)

    def find_similar(self, row: int | None = None) -> Any:
        """Ring and list the nuclei most like ``row`` (default: the chosen one)."""
        from napari_lemon.analysis.neighbours import nearest_neighbours

        state = self._state()
        if state is None:
            show_error(f"LEMON cell types: {NO_LAYER}")
            return None
        if state.embeddings is None:
            show_error(f"LEMON cell types: {no_embeddings(state.layer)}")
            return None
        row = self.chosen_row() if row is None else int(row)
        if row is None:
            show_error(
                "LEMON cell types: Find similar needs a nucleus: click one with the "
                "brush, select one, or click a thumbnail"
            )
            return None
        embeddings, k = state.embeddings, int(self.n_similar.value())
        similarity: dict[int, float] = {}

        def pick() -> np.ndarray:
            rows, sims = nearest_neighbours(embeddings, row, k=k)
            similarity.update(zip(rows.tolist(), sims.tolist(), strict=True))
            return rows

        def caption(r: int) -> str:
            return f"{similarity.get(r, 0.0):.2f}\n{self._caption(r)}"

        def show(rows: np.ndarray) -> None:
            highlight(self._viewer, state.layer, rows)
            state.layer.selected_data = set(rows.tolist())

        return self._thumbnails_job("similar", pick, self.similar, caption, show)

    def chosen_row(self) -> int | None:
        """The nucleus last clicked or jumped to, else the first selected one."""
        state = self._state()
        if state is None:
            return None
        selected = state.layer.selected_data
        if state.last_row is not None and (not selected or state.last_row in selected):
            return state.last_row
        return min(selected) if selected else None

    def jump(self, row: int) -> None:
        """Centre the view on nucleus ``row``, select it and ring it."""
        state = self._state()
        if state is None:
            return
        jump_to(self._viewer, state.layer, row, select=True)
        state.last_row = int(row)
        highlight(self._viewer, state.layer, [int(row)])

    def _caption(self, row: int) -> str:
        state = self._state()
        if state is None or state.probe is None:
            return ""
        k = int(state.proba[row].argmax())
        return f"{state.probe.classes[k]} {state.proba[row, k]:.2f}"

    def _thumbnails_job(
        self,
        what: str,
        pick: Callable[[], np.ndarray],
        grid: ThumbnailGrid,
        caption: Callable[[int], str],
        then: Callable[[np.ndarray], Any] | None = None,
    ) -> Any:
        """Pick rows and read their thumbnails in a worker; show them in ``grid``."""
        if self._jobs.get(what) is not None:
            return None
        state = self._state()
        source = thumbnail_source(self._viewer, state.layer)
        centroids = state.centroids_xy

        def job() -> tuple[np.ndarray, np.ndarray]:
            rows = np.asarray(pick(), dtype=np.int64)
            return rows, source.read(centroids[rows])

        def done(result: tuple[np.ndarray, np.ndarray]) -> None:
            rows, images = result
            if state is not self._state():
                return
            grid.set_items(images, [caption(int(r)) for r in rows], rows.tolist())
            if then is not None:
                then(rows)
            if not source.found:
                show_warning(
                    "LEMON cell types: no slide file or image under the nuclei, so "
                    "the thumbnails are blank; open the slide the nuclei came from"
                )

        worker = thread_worker(job, ignore_errors=True)()
        worker.returned.connect(done)
        worker.errored.connect(
            lambda err: report_error(f"LEMON cell types: {what}", err)
        )
        worker.finished.connect(lambda: self._jobs.pop(what, None))
        self._jobs[what] = worker
        worker.start()
        return worker


def _count_box() -> QSpinBox:
    box = QSpinBox()
    box.setRange(1, 96)
    box.setValue(DEFAULT_N)
    return box
