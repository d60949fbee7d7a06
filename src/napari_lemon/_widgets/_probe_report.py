"""How good the live probe is: balanced accuracy, folds, confusion matrix.

Shows :class:`napari_lemon.analysis.probe.ProbeMetrics` (or the metrics dict a
saved probe carries): one line with the cross-validated balanced accuracy, the
number of folds and what they keep whole (regions or single nuclei), the
metrics' own sentence, and the confusion matrix as a small table of counts with
the type names (rows: the labelled type, columns: the predicted one). While the
probe waits for labels it shows why instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QLabel,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


def summary_of(metrics: dict) -> str:
    """One line: balanced accuracy, folds and grouping (or why there is none)."""
    score = metrics.get("balanced_accuracy")
    folds, grouping = int(metrics.get("n_folds") or 0), metrics.get("grouping")
    if score is None:
        return "no cross-validated accuracy yet"
    what = "whole regions" if grouping == "regions" else "single nuclei"
    return f"balanced accuracy {score:.2f} ({folds} folds of {what})"


def _news_in(metrics: dict) -> str:
    """What the metrics' message adds to :func:`summary_of` (why the folds, ...)."""
    message = str(metrics.get("message", ""))
    if metrics.get("grouping") == "regions" and "folds of whole regions" in message:
        return ""  # the summary says it
    prefix = f"{int(metrics.get('n_folds') or 0)} folds: "
    return message.removeprefix(prefix)


def as_dict(metrics: Any) -> dict:
    """ProbeMetrics or a saved probe's metrics dict, as a dict."""
    if metrics is None:
        return {}
    if hasattr(metrics, "to_dict"):
        return metrics.to_dict()
    return dict(metrics)


class ProbeReport(QWidget):
    """A status line, the metrics' message and the confusion matrix.

    Attributes
    ----------
    status : QLabel
        What the probe does, or its accuracy.
    message : QLabel
        How the folds were made, or why the probe waits.
    confusion : QTableWidget
        Rows: labelled type; columns: predicted type; counts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.status = QLabel("no probe yet: label nuclei of two cell types")
        self.message = QLabel("")
        for label in (self.status, self.message):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.confusion = QTableWidget(0, 0)
        self.confusion.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.confusion.setToolTip("rows: labelled type; columns: predicted type")
        self.confusion.setSizePolicy(
            QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum
        )
        self.confusion.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.status, self.message, self.confusion):
            layout.addWidget(widget)

    def show_training(self) -> None:
        """Say that a probe is being trained (the last numbers stay shown)."""
        if not self.status.text().startswith("training"):
            self.status.setText("training the probe…")

    def show_measuring(self, n_labels: dict[str, int]) -> None:
        """A new probe is shown; its accuracy is being measured."""
        counts = ", ".join(f"{name} {n:,}" for name, n in n_labels.items())
        self.status.setText(f"probe from {counts} labels; measuring its accuracy…")

    def show_waiting(self, why: str) -> None:
        """No probe: say why (e.g. labels of one type only)."""
        self.status.setText("the probe waits for labels")
        self.message.setText(why)
        self.confusion.setVisible(False)

    def show_metrics(self, metrics: Any, source: str = "") -> None:
        """Show the accuracy, folds, message and confusion matrix of ``metrics``."""
        metrics = as_dict(metrics)
        head = summary_of(metrics)
        self.status.setText(f"{source}: {head}" if source else head)
        self.message.setText(_news_in(metrics))
        classes = list(metrics.get("classes", []))
        confusion = np.asarray(metrics.get("confusion", []), dtype=np.int64)
        shown = bool(classes) and confusion.shape == (len(classes), len(classes))
        self.confusion.setVisible(bool(shown and confusion.sum() > 0))
        if shown:
            self._fill(classes, confusion)

    def table(self) -> list[list[int]]:
        """The confusion counts as shown (row by row)."""
        rows, cols = self.confusion.rowCount(), self.confusion.columnCount()
        return [
            [int(self.confusion.item(r, c).text()) for c in range(cols)]
            for r in range(rows)
        ]

    def _fill(self, classes: list[str], confusion: np.ndarray) -> None:
        k = len(classes)
        table = self.confusion
        table.setRowCount(k)
        table.setColumnCount(k)
        table.setVerticalHeaderLabels(classes)
        table.setHorizontalHeaderLabels(classes)
        for r in range(k):
            for c in range(k):
                item = QTableWidgetItem(str(int(confusion[r, c])))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if r == c:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        height = table.horizontalHeader().height() + sum(
            table.rowHeight(r) for r in range(k)
        )
        table.setFixedHeight(height + 4)
