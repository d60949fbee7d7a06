"""A grid of nucleus thumbnails with captions; a click names the nucleus' row.

Panels show nuclei this way: the ones to label next, the nuclei most like a chosen
one, one representative per cell of the morphology map. Each thumbnail is a flat
button (the picture above its caption) that stands for one row of the results
table; clicking it calls the callbacks given to :meth:`ThumbnailGrid.on_clicked`
(and emits :attr:`ThumbnailGrid.clicked`) with that row. The grid only shows what
it is given: reading the pixels is :mod:`napari_lemon.thumbnails`' job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QGridLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

DEFAULT_COLUMNS = 4
DEFAULT_ICON_PX = 72


def to_pixmap(image: np.ndarray) -> QPixmap:
    """A QPixmap of an RGB picture, ndarray of shape (h, w, 3), uint8."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"thumbnail of shape {image.shape} is not an RGB picture: give an "
            "array of shape (height, width, 3), uint8"
        )
    height, width = image.shape[:2]
    qimage = QImage(image.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(qimage.copy())  # the copy owns its pixels


class ThumbnailGrid(QWidget):
    """Thumbnails in rows of ``columns``, each with a caption; scrolls when long.

    Parameters
    ----------
    columns : int
        Thumbnails per row.
    icon_px : int
        Side of a thumbnail on screen, in screen pixels.
    empty_text : str
        What the grid says when it shows nothing.
    parent : QWidget, optional

    Attributes
    ----------
    clicked : Signal(int)
        Emitted with the row of a clicked thumbnail.
    rows : list of int
        The rows shown, in order.
    buttons : list of QToolButton
        The thumbnails shown, in order (one per row).
    """

    clicked = Signal(int)

    def __init__(
        self,
        columns: int = DEFAULT_COLUMNS,
        icon_px: int = DEFAULT_ICON_PX,
        empty_text: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if columns < 1:
            raise ValueError(f"columns={columns!r}: give at least 1")
        self.columns, self.icon_px = int(columns), int(icon_px)
        self.rows: list[int] = []
        self.buttons: list[QToolButton] = []

        # a scrolled page holding the grid, and a line for "nothing to show"
        self._grid = QGridLayout()
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(4)
        page = QWidget()
        page.setLayout(self._grid)
        scroll = QScrollArea()
        scroll.setWidget(page)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self._empty = QLabel(empty_text)
        self._empty.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._empty)
        layout.addWidget(scroll)
        self._scroll = scroll
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self._show_empty(True)

    def on_clicked(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(row)`` whenever a thumbnail is clicked."""
        self.clicked.connect(callback)

    def set_items(
        self, images: np.ndarray, captions: Sequence[str], rows: Sequence[int]
    ) -> None:
        """Show ``images`` and ``captions``; clicking thumbnail ``i`` names ``rows[i]``.

        Parameters
        ----------
        images : ndarray of shape (n, h, w, 3), uint8
        captions : sequence of n str
            Shown under each thumbnail (a newline makes two lines).
        rows : sequence of n int
            The results rows the thumbnails stand for.
        """
        images = np.asarray(images)
        if not (len(images) == len(captions) == len(rows)):
            raise ValueError(
                f"{len(images)} images, {len(captions)} captions and {len(rows)} "
                "rows: give one caption and one row per image"
            )
        if len(images) and (images.ndim != 4 or images.shape[3] != 3):
            raise ValueError(
                f"images of shape {images.shape}: give an array of shape "
                "(n, height, width, 3), uint8"
            )
        self.clear()
        for i, (image, caption, row) in enumerate(
            zip(images, captions, rows, strict=True)
        ):
            button = self._button(image, str(caption), int(row))
            self._grid.addWidget(button, i // self.columns, i % self.columns)
            self.buttons.append(button)
            self.rows.append(int(row))
        self._show_empty(not self.rows)

    def clear(self, empty_text: str | None = None) -> None:
        """Show nothing (and ``empty_text``, when given, in place of the grid)."""
        for button in self.buttons:
            self._grid.removeWidget(button)
            button.deleteLater()
        self.buttons, self.rows = [], []
        if empty_text is not None:
            self._empty.setText(empty_text)
        self._show_empty(True)

    def click(self, index: int) -> None:
        """Click the thumbnail at ``index`` (as the user would)."""
        self.buttons[index].click()

    def _button(self, image: np.ndarray, caption: str, row: int) -> QToolButton:
        button = QToolButton()
        button.setIcon(QIcon(to_pixmap(image)))
        button.setIconSize(QSize(self.icon_px, self.icon_px))
        button.setText(caption)
        button.setToolTip(caption.replace("\n", ", "))
        button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
        button.setAutoRaise(True)
        button.clicked.connect(lambda _checked=False, row=row: self.clicked.emit(row))
        return button

    def _show_empty(self, empty: bool) -> None:
        self._empty.setVisible(empty and bool(self._empty.text()))
        self._scroll.setVisible(not empty)
