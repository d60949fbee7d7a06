"""The picture of the morphology map: points, marks, thumbnails and a lasso.

A matplotlib figure in a Qt canvas (``FigureCanvasQTAgg``). It shows what it is
given and reports what the user points at; it knows nothing of napari layers:

- the map: one dot per mapped nucleus at its 2-D position, in the colour the
  nuclei have on the slide;
- marks: rings around the nuclei selected on the slide;
- thumbnails: pictures of representative nuclei, each filling its cell of a grid
  over the map (the paper's Figure 4), the dots dimmed under them;
- a lasso: the dots inside a drawn loop are reported to ``on_lasso``; a click
  without a drag reports the nearest dot (or the thumbnail clicked) to
  ``on_click``. The toolbar's pan and zoom take the mouse while they are on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg, NavigationToolbar2QT
from matplotlib.figure import Figure
from matplotlib.widgets import LassoSelector
from qtpy.QtWidgets import QVBoxLayout, QWidget

MARK_COLOUR = "#ffff00"  # as the rings on the slide
CLICK_PX = 6  # a lasso shorter than this is a click
PICK_PX = 10  # a click picks the nearest dot within this distance
DIMMED = 0.25  # dot opacity under thumbnails
MIN_CANVAS_PX = 320


class MapCanvas(QWidget):
    """A 2-D map of nuclei with marks, thumbnails and a lasso.

    Parameters
    ----------
    on_lasso : callable
        Called with the indices (into the map's points) inside a lasso loop,
        ndarray of int64.
    on_click : callable
        Called with the index of the clicked point.
    background, foreground : str
        Colours of the figure and its text (napari's theme).
    parent : QWidget, optional

    Attributes
    ----------
    xy : ndarray of shape (m, 2), float32
        The points shown.
    marked : ndarray of int64
        Indices of the marked points.
    thumbnail_rows : ndarray of int64
        Index of the point each thumbnail shows.
    """

    def __init__(
        self,
        on_lasso: Callable[[np.ndarray], None],
        on_click: Callable[[int], None],
        background: str = "#262930",
        foreground: str = "#f0f1f2",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._on_lasso, self._on_click = on_lasso, on_click
        self._foreground = foreground
        self.xy = np.empty((0, 2), np.float32)
        self.marked = np.empty(0, np.int64)
        self.thumbnail_rows = np.empty(0, np.int64)
        self._boxes = np.empty((0, 4))
        self._thumbnails: list = []
        self._scatter = self._marks = None
        self._colours = np.empty((0, 4), np.float32)

        # figure, axes without ticks (map units mean nothing), toolbar
        self.figure = Figure(figsize=(4, 4), facecolor=background, layout="tight")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumSize(MIN_CANVAS_PX, MIN_CANVAS_PX)
        self.axes = self.figure.add_subplot()
        self.axes.set_facecolor(background)
        self.axes.set_xticks([])
        self.axes.set_yticks([])
        for spine in self.axes.spines.values():
            spine.set_color(foreground)
        self.toolbar = NavigationToolbar2QT(self.canvas, self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.canvas)
        self.lasso = LassoSelector(
            self.axes, self.lasso_path, props={"color": MARK_COLOUR}
        )
        self.show_message("No map yet")

    # ---------------------------------------------------------------- drawing
    def show_message(self, text: str) -> None:
        """Clear the map and say ``text`` in its middle."""
        self._clear()
        self.axes.text(
            0.5, 0.5, text, ha="center", va="center", wrap=True,
            color=self._foreground, transform=self.axes.transAxes,
        )  # fmt: skip
        self.canvas.draw_idle()

    def _clear(self) -> None:
        for artist in [*self.axes.texts, *self.axes.collections, *self.axes.images]:
            artist.remove()
        self.axes.set_title("")
        self._scatter = self._marks = None
        self._thumbnails, self._boxes = [], np.empty((0, 4))
        self.thumbnail_rows = np.empty(0, np.int64)
        self.xy = np.empty((0, 2), np.float32)
        self.marked = np.empty(0, np.int64)

    def set_map(self, xy: np.ndarray, colours: np.ndarray, title: str = "") -> None:
        """Show points ``xy`` (m, 2) in ``colours`` (m, 4) RGBA 0..1."""
        self._clear()
        self.xy = np.asarray(xy, dtype=np.float32)
        size = float(np.clip(20_000 / max(len(xy), 1), 0.5, 16))  # points^2
        self._colours = np.array(colours, dtype=np.float32).reshape(-1, 4)
        self._scatter = self.axes.scatter(
            self.xy[:, 0], self.xy[:, 1], s=size, c=self._colours, linewidths=0,
            rasterized=True,
        )  # fmt: skip
        self._marks = self.axes.scatter(
            [], [], s=max(4 * size, 30), facecolors="none", edgecolors=MARK_COLOUR,
            linewidths=1.2, zorder=4,
        )  # fmt: skip
        self.axes.set_title(title, color=self._foreground, fontsize=9)
        self.axes.set_aspect("equal", adjustable="datalim")
        self.axes.autoscale()
        self.canvas.draw_idle()

    def set_colours(self, colours: np.ndarray) -> None:
        """Recolour the points, (m, 4) RGBA 0..1."""
        self._colours = np.array(colours, dtype=np.float32).reshape(-1, 4)
        if self._scatter is None:
            return
        shown = self._colours.copy()
        if self._thumbnails:
            shown[:, 3] *= DIMMED
        self._scatter.set_facecolors(shown)
        self.canvas.draw_idle()

    def set_marks(self, indices: np.ndarray) -> None:
        """Ring the points ``indices``; empty: none."""
        if self._marks is None:
            return
        self.marked = np.asarray(indices, dtype=np.int64)
        self._marks.set_offsets(self.xy[self.marked].reshape(-1, 2))
        self.canvas.draw_idle()

    def set_thumbnails(
        self, images: np.ndarray, boxes: np.ndarray, rows: np.ndarray
    ) -> None:
        """Draw ``images`` (t, h, w, 3) in ``boxes`` (t, 4) of map units.

        ``rows`` are the points (indices into the map) the thumbnails show.
        Empty ``images`` remove the thumbnails.
        """
        for image in self._thumbnails:
            image.remove()
        self._thumbnails = []
        self._boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        self.thumbnail_rows = np.asarray(rows, dtype=np.int64)
        for picture, (x0, y0, x1, y1) in zip(images, self._boxes, strict=True):
            self._thumbnails.append(
                self.axes.imshow(
                    picture,
                    extent=(x0, x1, y0, y1),
                    origin="upper",
                    aspect="auto",
                    zorder=3,
                    interpolation="antialiased",
                )  # fmt: skip
            )
        self.set_colours(self._colours)  # dimmed under thumbnails
        self.axes.set_aspect("equal", adjustable="datalim")
        self.axes.autoscale()
        self.canvas.draw_idle()

    @property
    def has_thumbnails(self) -> bool:
        """Whether thumbnails are drawn."""
        return bool(self._thumbnails)

    # --------------------------------------------------------------- pointing
    def lasso_path(self, vertices: list | np.ndarray) -> np.ndarray:
        """Handle a finished lasso loop of ``(x, y)`` map vertices.

        A loop shorter than :data:`CLICK_PX` on screen is a click. Returns the
        indices reported (empty when nothing was hit).
        """
        from napari_lemon.analysis.morphology_map import rows_in_polygon

        vertices = np.asarray(vertices, dtype=float).reshape(-1, 2)
        if len(self.xy) == 0 or len(vertices) == 0:
            return np.empty(0, np.int64)
        screen = self.axes.transData.transform(vertices)
        extent = np.ptp(screen, axis=0).max() if len(screen) > 1 else 0.0
        if len(vertices) < 3 or extent < CLICK_PX:
            index = self.point_at(vertices[-1])
            if index is None:
                return np.empty(0, np.int64)
            self._on_click(index)
            return np.array([index], np.int64)
        inside = np.asarray(rows_in_polygon(self.xy, vertices), dtype=np.int64)
        self._on_lasso(inside)
        return inside

    def point_at(self, xy: np.ndarray) -> int | None:
        """The thumbnail's point under ``xy`` (map units), else the nearest dot."""
        x, y = float(xy[0]), float(xy[1])
        if self._thumbnails:
            b = self._boxes
            hit = np.flatnonzero(
                (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
            )
            if len(hit):
                return int(self.thumbnail_rows[hit[0]])

        # the nearest dot, if near enough on screen
        screen = self.axes.transData.transform(self.xy)
        target = self.axes.transData.transform([[x, y]])[0]
        distance = np.hypot(*(screen - target).T)
        nearest = int(np.argmin(distance))
        return nearest if distance[nearest] <= PICK_PX else None
