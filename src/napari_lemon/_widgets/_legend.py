"""The legend of a nuclei layer: one entry per category of its colour column.

Each entry is a swatch in the category's colour, its name and how many nuclei
have it; clicking an entry selects those nuclei (the layer's ``selected_data``,
napari's own selection) and rings them (:func:`._highlight.highlight`), clicking
it again clears the selection. A numeric colour column (a probability, an area)
has no categories: the legend names the column and its range instead.

The colour column is the one :func:`._nuclei_display.recolour` last used
(``metadata["lemon_colour"]``), whichever panel called it. NOTE: ``recolour``
keeps napari's face-colour events quiet (each would send every point to the
canvas again), so there is no event to follow: the legend looks every
:data:`POLL_MS` whether the layer's colour record was replaced, a dictionary
identity check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._highlight import clear_highlight, highlight
from ._nuclei_display import COLOUR_KEY, MISSING_RGBA, category_palette, is_categorical

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

DEFAULT_COLUMN = "cluster"  # what a nuclei layer is coloured by when first shown
MISSING_NAME = "(none)"
POLL_MS = 400
SWATCH_PX = 14
MIN_TABLE_PX = 160


@dataclass
class LegendEntry:
    """One category of the colour column.

    Attributes
    ----------
    name : str
        The category as text (:data:`MISSING_NAME` for nuclei without a value).
    rgba : ndarray of shape (4,), float32
        Its colour, 0..1.
    count : int
        Nuclei of the category.
    code : int
        Its position among the column's categories; -1 for the missing ones.
    """

    name: str
    rgba: np.ndarray
    count: int
    code: int


def colour_column(layer: Points) -> str | None:
    """The features column ``layer`` is coloured by, or None when it has none."""
    column = layer.metadata.get(COLOUR_KEY, {}).get("column", DEFAULT_COLUMN)
    return column if column in layer.features else None


def legend_entries(layer: Points, column: str | None = None) -> list[LegendEntry]:
    """The categories of ``column`` (default: the colour column) with counts.

    Empty when the column is numeric or missing. The colours are those
    :func:`._nuclei_display.recolour` gives (same palette).
    """
    column = column or colour_column(layer)
    if column is None or not is_categorical(layer.features[column]):
        return []
    record = layer.metadata.get(COLOUR_KEY, {})
    palette = record.get("palette") if record.get("column") == column else None

    # counts and colours per category
    labels = pd.Categorical(layer.features[column])
    names = [str(c) for c in labels.categories]
    table = category_palette(list(labels.categories), palette)
    codes = np.asarray(labels.codes)
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    entries = [
        LegendEntry(name, table[i], int(counts[i]), i) for i, name in enumerate(names)
    ]

    # nuclei without a value, in grey
    missing = int((codes < 0).sum())
    if missing:
        grey = np.asarray(MISSING_RGBA, np.float32)
        entries.append(LegendEntry(MISSING_NAME, grey, missing, -1))
    return entries


def rows_of(layer: Points, column: str, code: int) -> np.ndarray:
    """Rows of the nuclei whose ``column`` is the category numbered ``code``."""
    codes = np.asarray(pd.Categorical(layer.features[column]).codes)
    return np.flatnonzero(codes == code)


def _swatch(rgba: np.ndarray) -> QIcon:
    pixmap = QPixmap(SWATCH_PX, SWATCH_PX)
    r, g, b, a = (int(round(255 * float(v))) for v in rgba)
    pixmap.fill(QColor(r, g, b, max(a, 128)))
    return QIcon(pixmap)


class Legend(QWidget):
    """Swatch, name and count per category of a nuclei layer's colour column.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Where the selection rings are drawn.
    on_selected : callable, optional
        Called with ``(layer, rows)`` after an entry is clicked (``rows`` empty
        when the click cleared the selection).
    parent : QWidget, optional

    Attributes
    ----------
    layer : Points or None
        The nuclei layer shown.
    entries : list of LegendEntry
        What the table shows, in order.
    table : QTableWidget
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        on_selected: Callable[[Any, np.ndarray], None] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._on_selected = on_selected
        self.layer: Points | None = None
        self.entries: list[LegendEntry] = []
        self._column: str | None = None
        self._record: Any = None
        self._chosen: int | None = None  # code of the entry last clicked

        # a header line and a two-column table
        self._title = QLabel("")
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["category", "nuclei"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setIconSize(QSize(SWATCH_PX, SWATCH_PX))
        self.table.setMinimumHeight(MIN_TABLE_PX)
        self.table.cellClicked.connect(lambda row, _col: self.click(row))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._title)
        layout.addWidget(self.table)

        # follow recolours while shown
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._check_colour_record)
        self._timer.start()

    @property
    def column(self) -> str | None:
        """The column the legend shows."""
        return self._column

    def set_layer(self, layer: Points | None) -> None:
        """Show the legend of ``layer`` (None: nothing)."""
        self.layer = layer
        self._chosen = None
        self.refresh()

    def _check_colour_record(self) -> None:
        if self.layer is None:
            return
        if self.layer.metadata.get(COLOUR_KEY) is not self._record:
            self.refresh()

    def refresh(self) -> None:
        """Rebuild the entries from the layer's colour column now."""
        layer = self.layer
        self._record = None if layer is None else layer.metadata.get(COLOUR_KEY)
        self._column = None if layer is None else colour_column(layer)
        self.entries = [] if layer is None else legend_entries(layer)
        self._fill_table()

        # the title says what is shown, or why nothing is
        if layer is None:
            self._title.setText("No nuclei layer")
        elif self._column is None:
            self._title.setText(f"{layer.name!r} has no colour column")
        elif not self.entries:
            values = layer.features[self._column].to_numpy(dtype=float)
            low, high = np.nanmin(values), np.nanmax(values)
            self._title.setText(
                f"coloured by {self._column} (a number, {low:.3g} to {high:.3g})"
            )
        else:
            self._title.setText(f"coloured by {self._column}: click to select")

    def _fill_table(self) -> None:
        self.table.setRowCount(len(self.entries))
        for row, entry in enumerate(self.entries):
            name = QTableWidgetItem(_swatch(entry.rgba), entry.name)
            count = QTableWidgetItem(f"{entry.count:,}")
            count.setTextAlignment(
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
            )
            self.table.setItem(row, 0, name)
            self.table.setItem(row, 1, count)

    def click(self, index: int) -> np.ndarray:
        """Select the nuclei of entry ``index``; the chosen entry again: none.

        Returns
        -------
        ndarray of int64
            The rows now selected.
        """
        layer, entry = self.layer, self.entries[index]
        if layer is None or self._column is None:
            return np.empty(0, np.int64)
        if self._chosen == entry.code:
            rows = np.empty(0, np.int64)
            self._chosen = None
            self.table.clearSelection()
            clear_highlight(self._viewer)
        else:
            rows = rows_of(layer, self._column, entry.code)
            self._chosen = entry.code
            highlight(self._viewer, layer, rows)
        layer.selected_data = set(rows.tolist())
        if self._on_selected is not None:
            self._on_selected(layer, rows)
        return rows
