"""The list of cell types: a swatch, the name and the label count of each.

It edits an :class:`napari_lemon.annotations.Annotations` (add, rename,
recolour, delete) and keeps one type active: the one the brush labels with.
Every edit goes through the annotations, which save themselves and tell their
listeners; the list redraws itself from them. The methods take their values as
arguments (tests and scripts call them); the buttons ask with a dialog first.
Problems (an empty or taken name, a bad colour) come back as ValueError from the
annotations and are shown as error notifications.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from napari_lemon.annotations import Annotations

SWATCH_PX = 16
NAME_COLUMN, COUNT_COLUMN = 0, 1
MIN_ROWS_SHOWN = 4  # the table stays this tall when several panels share the dock


def swatch(colour: str, size: int = SWATCH_PX) -> QIcon:
    """A square icon of ``colour`` (``#rrggbb``)."""
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(colour))
    return QIcon(pixmap)


class TypesList(QWidget):
    """Cell types of one result, the active one highlighted.

    Parameters
    ----------
    on_active : callable, optional
        Called with the active type's name (or None) when it changes.

    Attributes
    ----------
    table : QTableWidget
        One row per type: swatch and name, count.
    annotations : Annotations or None
    """

    def __init__(self, on_active: Callable[[str | None], Any] | None = None) -> None:
        super().__init__()
        self.annotations: Annotations | None = None
        self._counts: Callable[[], dict[str, int]] | None = None
        self._on_active = on_active
        self._active: str | None = None
        self._filling = False

        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["cell type", "labels"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setIconSize(QSize(SWATCH_PX, SWATCH_PX))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(NAME_COLUMN, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(
            COUNT_COLUMN, QHeaderView.ResizeMode.ResizeToContents
        )
        self.table.setEditTriggers(
            QAbstractItemView.EditTrigger.DoubleClicked
            | QAbstractItemView.EditTrigger.EditKeyPressed
        )
        rows = MIN_ROWS_SHOWN * self.table.verticalHeader().defaultSectionSize()
        frame = 2 * self.table.frameWidth()
        header_px = self.table.horizontalHeader().sizeHint().height()
        self.table.setMinimumHeight(rows + header_px + frame)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.table.itemChanged.connect(self._on_item_edited)

        # buttons: add, rename, colour, delete
        self.add_button = QPushButton("Add…")
        self.rename_button = QPushButton("Rename…")
        self.colour_button = QPushButton("Colour…")
        self.delete_button = QPushButton("Delete")
        self.add_button.clicked.connect(lambda: self.ask_add())
        self.rename_button.clicked.connect(lambda: self.ask_rename())
        self.colour_button.clicked.connect(lambda: self.ask_colour())
        self.delete_button.clicked.connect(lambda: self.delete_type(self._active))
        buttons = QHBoxLayout()
        for button in (
            self.add_button,
            self.rename_button,
            self.colour_button,
            self.delete_button,
        ):
            buttons.addWidget(button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self.refresh()

    # ------------------------------------------------------------- content
    def set_annotations(
        self,
        annotations: Annotations | None,
        counts: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        """Show (and edit) ``annotations``; the first type becomes active.

        ``counts()`` gives the label count of each type shown; default
        ``annotations.counts()`` (every label, also of nuclei not shown).
        """
        self.annotations = annotations
        self._counts = counts
        names = [] if annotations is None else annotations.type_names()
        self._active = names[0] if names else None
        self.refresh()
        self._tell_active()

    @property
    def active_type(self) -> str | None:
        """The type the brush labels with (None when there are no types)."""
        return self._active

    def set_active(self, name: str | None) -> None:
        """Make ``name`` the active type."""
        names = self._names()
        if name is not None and name not in names:
            raise ValueError(f"unknown cell type {name!r}; the types are {names}")
        if name != self._active:
            self._active = name
            self._select_row()
            self._tell_active()

    def refresh(self) -> None:
        """Redraw the rows from the annotations (after any change)."""
        annotations = self.annotations
        names = self._names()
        if self._active not in names:
            self._active = names[0] if names else None
        if annotations is None:
            counts = {}
        else:
            counts = self._counts() if self._counts else annotations.counts()
        self._filling = True
        try:
            self.table.setRowCount(len(names))
            for row, name in enumerate(names):
                item = QTableWidgetItem(swatch(annotations.colour_of(name)), name)
                item.setToolTip(f"{name}: {annotations.colour_of(name)}")
                count = QTableWidgetItem(f"{counts.get(name, 0):,}")
                count.setFlags(count.flags() & ~Qt.ItemFlag.ItemIsEditable)
                count.setTextAlignment(Qt.AlignmentFlag.AlignRight)
                self.table.setItem(row, NAME_COLUMN, item)
                self.table.setItem(row, COUNT_COLUMN, count)
            self._select_row()
        finally:
            self._filling = False
        has = annotations is not None
        self.add_button.setEnabled(has)
        for button in (self.rename_button, self.colour_button, self.delete_button):
            button.setEnabled(has and self._active is not None)

    def row_texts(self) -> list[tuple[str, str]]:
        """``(name, count)`` as shown, row by row."""
        return [
            (
                self.table.item(r, NAME_COLUMN).text(),
                self.table.item(r, COUNT_COLUMN).text(),
            )
            for r in range(self.table.rowCount())
        ]

    # --------------------------------------------------------------- edits
    def add_type(self, name: str, colour: str | None = None) -> str | None:
        """Add a type (and make it active); its name, or None on a bad name."""
        try:
            cell_type = self.annotations.add_type(name, colour)
        except ValueError as err:
            show_error(f"Cannot add cell type: {err}")
            return None
        self._active = cell_type.name
        self.refresh()
        self._tell_active()
        return cell_type.name

    def rename_type(self, old: str, new: str) -> bool:
        """Rename type ``old``; False (and an error notification) on a bad name."""
        names = self._names()
        index = names.index(old) if old in names else 0
        try:
            self.annotations.rename_type(old, new)
        except ValueError as err:
            show_error(f"Cannot rename cell type {old!r}: {err}")
            self.refresh()
            return False
        if self._active == old:
            self._active = self._names()[index]  # the name as the annotations keep it
        self.refresh()
        self._tell_active()
        return True

    def recolour_type(self, name: str, colour: str) -> bool:
        """Give type ``name`` a new ``#rrggbb`` colour; False on a bad colour."""
        try:
            self.annotations.recolour_type(name, colour)
        except ValueError as err:
            show_error(f"Cannot recolour cell type {name!r}: {err}")
            return False
        self.refresh()
        return True

    def delete_type(self, name: str | None) -> int:
        """Delete type ``name`` and its labels (undoable); labels dropped."""
        if name is None or self.annotations is None:
            return 0
        try:
            dropped = self.annotations.remove_type(name)
        except ValueError as err:
            show_error(f"Cannot delete cell type: {err}")
            return 0
        self.refresh()
        self._tell_active()
        return dropped

    # ------------------------------------------------------------- dialogs
    def ask_add(self) -> str | None:
        from qtpy.QtWidgets import QInputDialog

        if self.annotations is None:
            return None
        name, ok = QInputDialog.getText(self, "Add a cell type", "name:")
        return self.add_type(name) if ok else None

    def ask_rename(self) -> bool:
        from qtpy.QtWidgets import QInputDialog

        old = self._active
        if old is None:
            return False
        new, ok = QInputDialog.getText(self, f"Rename {old!r}", "new name:", text=old)
        return self.rename_type(old, new) if ok and new != old else False

    def ask_colour(self) -> bool:
        from qtpy.QtWidgets import QColorDialog

        name = self._active
        if name is None:
            return False
        start = QColor(self.annotations.colour_of(name))
        colour = QColorDialog.getColor(start, self, f"Colour of {name!r}")
        return self.recolour_type(name, colour.name()) if colour.isValid() else False

    # ------------------------------------------------------------- helpers
    def _names(self) -> list[str]:
        return [] if self.annotations is None else self.annotations.type_names()

    def _select_row(self) -> None:
        names = self._names()
        blocked = self.table.blockSignals(True)
        try:
            self.table.clearSelection()
            if self._active in names:
                self.table.selectRow(names.index(self._active))
        finally:
            self.table.blockSignals(blocked)

    def _on_selection(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        names = self._names()
        if len(rows) == 1 and (row := rows.pop()) < len(names):
            if names[row] != self._active:
                self._active = names[row]
                self._tell_active()
                self.refresh()

    def _on_item_edited(self, item: QTableWidgetItem) -> None:
        """A name edited in place renames the type."""
        if self._filling or item.column() != NAME_COLUMN:
            return
        names = self._names()
        if item.row() < len(names) and item.text() != names[item.row()]:
            self.rename_type(names[item.row()], item.text())

    def _tell_active(self) -> None:
        if self._on_active is not None:
            self._on_active(self._active)
