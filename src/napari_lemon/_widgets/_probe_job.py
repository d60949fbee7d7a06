"""The live probe: retrained in a worker after each labelling action.

Each change of the labels asks for a new probe (:meth:`ProbeRunner.request`).
Requests are debounced (:data:`DEBOUNCE_MS`): a brushing spree trains once, after
it. The training itself, :func:`train_and_predict`, runs in a worker thread:
:func:`napari_lemon.analysis.probe.cross_validate` (folds of whole regions of
:data:`REGION_UM` when the labels allow), then
:func:`~napari_lemon.analysis.probe.fit_probe` on all labels, then the class
probabilities of every nucleus. Every request has a generation number; a result
whose generation is not the latest is dropped (a newer labelling came in while
it trained), and the newest request starts as soon as the worker is free. With
labels of fewer than two types the outcome carries the
:class:`~napari_lemon.analysis.probe.NotEnoughLabels` message instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import notification_manager, show_error

logger = logging.getLogger(__name__)

DEBOUNCE_MS = 300
REGION_UM = 250.0  # side of the spatial blocks cross-validation keeps whole
USER_ERRORS = (ValueError, OSError)


@dataclass
class ProbeRequest:
    """What a probe is trained from (a snapshot taken in the main thread).

    Attributes
    ----------
    generation : int
    embeddings : array-like of shape (n_nuclei, d)
        All nuclei's embeddings (read, never written, by the worker).
    rows : ndarray of shape (n_labelled,), int64
        Rows of the labelled nuclei.
    labels : ndarray of shape (n_labelled,), object
        Their type names.
    classes, colours : list of str
        All types in panel order, and their colours.
    groups : ndarray of shape (n_labelled,), int64, or None
        Region of each labelled nucleus (cross-validation folds).
    provenance : dict
        ``uns["lemon"]`` of the results (encoder recorded in the probe).
    name : str
        The probe's name (result columns ``probe_<name>``).
    """

    generation: int
    embeddings: Any
    rows: np.ndarray
    labels: np.ndarray
    classes: list[str]
    colours: list[str]
    groups: np.ndarray | None
    provenance: dict
    name: str = "cell_type"


@dataclass
class ProbeOutcome:
    """A trained probe with its metrics and predictions, or why there is none.

    Attributes
    ----------
    generation : int
    probe : LinearProbe or None
    metrics : ProbeMetrics or None
    proba : ndarray of shape (n_nuclei, k), float32, or None
        Class probabilities of every nucleus, columns in ``probe.classes`` order.
    waiting : str or None
        Why no probe was trained (fewer than two types labelled).
    seconds : dict
        Seconds spent in ``cv``, ``fit`` and ``predict``.
    """

    generation: int
    probe: Any = None
    metrics: Any = None
    proba: np.ndarray | None = None
    waiting: str | None = None
    seconds: dict = field(default_factory=dict)


def train_and_predict(request: ProbeRequest) -> ProbeOutcome:
    """Cross-validate, fit and predict every nucleus (runs in the worker)."""
    from napari_lemon.analysis.probe import NotEnoughLabels, cross_validate, fit_probe

    x = np.asarray(request.embeddings[request.rows], dtype=np.float32)
    labels, classes = request.labels, request.classes
    seconds = {}

    # how good is it: folds of whole regions where possible
    started = time.perf_counter()
    try:
        metrics = cross_validate(x, labels, groups=request.groups, classes=classes)
    except NotEnoughLabels as err:
        return ProbeOutcome(request.generation, waiting=str(err))
    seconds["cv"] = time.perf_counter() - started

    # the probe from all labels, then every nucleus
    started = time.perf_counter()
    probe = fit_probe(
        x, labels, classes, request.colours, request.name, request.provenance,
        metrics=metrics,
    )  # fmt: skip
    seconds["fit"] = time.perf_counter() - started
    started = time.perf_counter()
    proba = probe.predict_proba(request.embeddings)
    seconds["predict"] = time.perf_counter() - started
    return ProbeOutcome(request.generation, probe, metrics, proba, None, seconds)


def predict_job(probe: Any, embeddings: Any, generation: int) -> ProbeOutcome:
    """Probabilities of every nucleus from a given probe (runs in the worker)."""
    started = time.perf_counter()
    proba = probe.predict_proba(embeddings)
    seconds = {"predict": time.perf_counter() - started}
    return ProbeOutcome(generation, probe, None, proba, None, seconds)


def report_error(what: str, err: Exception) -> None:
    """A worker's error as a notification: the message, or with its traceback."""
    logger.debug("%s failed", what, exc_info=err)
    if isinstance(err, USER_ERRORS):
        show_error(f"{what} failed: {err}")
    else:
        notification_manager.receive_error(type(err), err, err.__traceback__)


class ProbeRunner:
    """Debounced, one-at-a-time probe jobs whose stale results are dropped.

    Parameters
    ----------
    make_request : callable
        ``make_request(generation)`` -> :class:`ProbeRequest`, or None when
        there is nothing to train (called in the main thread when a job starts).
    on_outcome : callable
        Receives the :class:`ProbeOutcome` of the latest request.
    on_busy : callable, optional
        Called with True when a job starts, False when the worker is free.
    debounce_ms : int
    """

    def __init__(
        self,
        make_request: Callable[[int], ProbeRequest | None],
        on_outcome: Callable[[ProbeOutcome], Any],
        on_busy: Callable[[bool], Any] | None = None,
        debounce_ms: int = DEBOUNCE_MS,
    ) -> None:
        from qtpy.QtCore import QTimer

        self._make_request, self._on_outcome, self._on_busy = (
            make_request,
            on_outcome,
            on_busy,
        )
        self.generation = 0
        self.worker: Any = None
        self._pending: Callable[[], Any] | None = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(debounce_ms))
        self._timer.timeout.connect(self._start_training)
        self.dropped = 0  # stale outcomes dropped (for tests and logs)

    @property
    def busy(self) -> bool:
        """Whether a request waits for its debounce or a job runs."""
        return self._timer.isActive() or self.worker is not None

    def request(self) -> int:
        """Ask for a probe from the labels as they are now; returns its generation."""
        self.generation += 1
        self._timer.start()
        return self.generation

    def cancel(self) -> int:
        """Forget pending requests; a running job's outcome will be dropped."""
        self.generation += 1
        self._timer.stop()
        self._pending = None
        return self.generation

    def predict(self, probe: Any, embeddings: Any) -> int:
        """Predict every nucleus with ``probe`` (instead of training one)."""
        generation = self.cancel()
        self._run(lambda: predict_job(probe, embeddings, generation))
        return generation

    # ------------------------------------------------------------- worker
    def _start_training(self) -> None:
        generation = self.generation

        def job() -> ProbeOutcome | None:
            return None if request is None else train_and_predict(request)

        if self.worker is not None:  # the newest request runs after this one
            self._pending = self._start_training
            return
        request = self._make_request(generation)
        if request is None:
            return
        self._run(job)

    def _run(self, job: Callable[[], ProbeOutcome | None]) -> None:
        if self.worker is not None:
            self._pending = lambda: self._run(job)
            return
        worker = thread_worker(job, ignore_errors=True)()
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        if self._on_busy is not None:
            self._on_busy(True)
        worker.start()

    def _on_returned(self, outcome: ProbeOutcome | None) -> None:
        if outcome is None:
            return
        if outcome.generation != self.generation:
            self.dropped += 1
            logger.debug("probe of generation %d dropped", outcome.generation)
            return
        self._on_outcome(outcome)

    def _on_error(self, err: Exception) -> None:
        report_error("LEMON probe", err)

    def _on_finished(self) -> None:
        self.worker = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending()
        elif self._on_busy is not None:
            self._on_busy(False)
