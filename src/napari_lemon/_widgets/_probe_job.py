"""The live probe: retrained in a worker after each labelling action.

Each change of the labels asks for a new probe (:meth:`ProbeRunner.request`).
Requests are debounced (:data:`DEBOUNCE_MS`): a brushing spree trains once, after
it. Training, :func:`train_and_predict`, runs in a worker thread:
:func:`napari_lemon.analysis.probe.fit_probe` on all labels, then the class
probabilities of every nucleus, which the panel shows at once. Then, in a worker
of its own, :func:`~napari_lemon.analysis.probe.cross_validate` (folds of whole
regions of :data:`REGION_UM` when the labels allow) measures it; with many labels
that takes several times longer than the fit, so the colours do not wait for it
and a new training never waits for a measurement.

Every request has a generation number; a result whose generation is not the
latest is dropped (a newer labelling came in meanwhile), and the newest request
starts as soon as the training worker is free (one measurement at a time, the
latest). With labels of fewer than two types the outcome carries the
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

from napari_lemon.analysis.probe import CV_BLOCK_UM

logger = logging.getLogger(__name__)

DEBOUNCE_MS = 300
REGION_UM = CV_BLOCK_UM  # side of the spatial blocks cross-validation keeps whole
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
    """A trained probe and its predictions, or why there is none.

    Attributes
    ----------
    generation : int
    probe : LinearProbe or None
    proba : ndarray of shape (n_nuclei, k), float32, or None
        Class probabilities of every nucleus, columns in ``probe.classes`` order.
    waiting : str or None
        Why no probe was trained (fewer than two types labelled).
    seconds : dict
        Seconds spent in ``fit`` and ``predict``.
    metrics : ProbeMetrics or None
        Filled in later by the cross-validation (see ``on_metrics``).
    """

    generation: int
    probe: Any = None
    proba: np.ndarray | None = None
    waiting: str | None = None
    seconds: dict = field(default_factory=dict)
    metrics: Any = None


def train_and_predict(request: ProbeRequest) -> ProbeOutcome:
    """Fit the probe on the labels and predict every nucleus (runs in a worker)."""
    from napari_lemon.analysis.probe import NotEnoughLabels, fit_probe

    x = np.asarray(request.embeddings[request.rows], dtype=np.float32)
    seconds = {}

    # the probe from all labels
    started = time.perf_counter()
    try:
        probe = fit_probe(
            x, request.labels, request.classes, request.colours, request.name,
            request.provenance,
        )  # fmt: skip
    except NotEnoughLabels as err:
        return ProbeOutcome(request.generation, waiting=str(err))
    seconds["fit"] = time.perf_counter() - started

    # every nucleus
    started = time.perf_counter()
    proba = probe.predict_proba(request.embeddings)
    seconds["predict"] = time.perf_counter() - started
    return ProbeOutcome(request.generation, probe, proba, None, seconds)


def measure(request: ProbeRequest) -> tuple[int, Any, float]:
    """Cross-validated metrics of a probe on the request's labels (a worker).

    Returns
    -------
    (generation, ProbeMetrics, seconds)
    """
    from napari_lemon.analysis.probe import cross_validate

    started = time.perf_counter()
    x = np.asarray(request.embeddings[request.rows], dtype=np.float32)
    metrics = cross_validate(
        x, request.labels, groups=request.groups, classes=request.classes
    )
    return request.generation, metrics, time.perf_counter() - started


def predict_job(probe: Any, embeddings: Any, generation: int) -> ProbeOutcome:
    """Probabilities of every nucleus from a given probe (runs in the worker)."""
    started = time.perf_counter()
    proba = probe.predict_proba(embeddings)
    seconds = {"predict": time.perf_counter() - started}
    return ProbeOutcome(generation, probe, proba, None, seconds)


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
    on_metrics : callable, optional
        ``on_metrics(generation, metrics, seconds)``: the cross-validation of the
        latest probe trained from labels.
    debounce_ms : int
    parent : QObject, optional
        Owns the debounce timer (it goes with the panel).

    Attributes
    ----------
    dropped : int
        Stale outcomes dropped so far.
    """

    def __init__(
        self,
        make_request: Callable[[int], ProbeRequest | None],
        on_outcome: Callable[[ProbeOutcome], Any],
        on_busy: Callable[[bool], Any] | None = None,
        on_metrics: Callable[[int, Any, float], Any] | None = None,
        debounce_ms: int = DEBOUNCE_MS,
        parent: Any = None,
    ) -> None:
        from qtpy.QtCore import QTimer

        self._make_request, self._on_outcome = make_request, on_outcome
        self._on_busy, self._on_metrics = on_busy, on_metrics
        self.generation = 0
        self.worker: Any = None
        self.measuring: Any = None
        self._pending: Callable[[], Any] | None = None
        self._requests: dict[int, ProbeRequest] = {}
        self._measure_next: ProbeRequest | None = None
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(debounce_ms))
        self._timer.timeout.connect(self._start_training)
        self.dropped = 0

    @property
    def busy(self) -> bool:
        """Whether a request waits for its debounce or a training job runs."""
        return self._timer.isActive() or self.worker is not None

    @property
    def idle(self) -> bool:
        """Whether nothing waits or runs, cross-validation included."""
        return not self.busy and self.measuring is None

    def request(self) -> int:
        """Ask for a probe from the labels as they are now; returns its generation."""
        self.generation += 1
        self._timer.start()
        return self.generation

    def cancel(self) -> int:
        """Forget pending requests; running jobs' outcomes will be dropped."""
        self.generation += 1
        self._timer.stop()
        self._pending = self._measure_next = None
        return self.generation

    def predict(self, probe: Any, embeddings: Any) -> int:
        """Predict every nucleus with ``probe`` (instead of training one)."""
        generation = self.cancel()
        self._run(lambda: predict_job(probe, embeddings, generation))
        return generation

    # ------------------------------------------------------------ training
    def _start_training(self) -> None:
        if self.worker is not None:  # the newest request runs after this one
            self._pending = self._start_training
            return
        request = self._make_request(self.generation)
        if request is None:
            return
        self._requests = {request.generation: request}
        self._run(lambda: train_and_predict(request))

    def _run(self, job: Callable[[], ProbeOutcome]) -> None:
        if self.worker is not None:
            self._pending = lambda: self._run(job)
            return
        worker = thread_worker(job, ignore_errors=True)()
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda err: report_error("LEMON probe", err))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        if self._on_busy is not None:
            self._on_busy(True)
        worker.start()

    def _on_returned(self, outcome: ProbeOutcome) -> None:
        if outcome.generation != self.generation:
            self.dropped += 1
            logger.debug("probe of generation %d dropped", outcome.generation)
            return
        self._on_outcome(outcome)
        request = self._requests.pop(outcome.generation, None)
        if outcome.probe is not None and request is not None:
            self._measure(request)

    def _on_finished(self) -> None:
        self.worker = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending()
        elif self._on_busy is not None:
            self._on_busy(False)

    # ------------------------------------------------------- measurement
    def _measure(self, request: ProbeRequest) -> None:
        if self._on_metrics is None:
            return
        if self.measuring is not None:  # the latest waits for the running one
            self._measure_next = request
            return
        worker = thread_worker(measure, ignore_errors=True)(request)
        worker.returned.connect(self._on_measured)
        worker.errored.connect(lambda err: report_error("LEMON probe accuracy", err))
        worker.finished.connect(self._on_measure_finished)
        self.measuring = worker
        worker.start()

    def _on_measured(self, result: tuple[int, Any, float]) -> None:
        generation, metrics, seconds = result
        if generation != self.generation:
            self.dropped += 1
            return
        self._on_metrics(generation, metrics, seconds)

    def _on_measure_finished(self) -> None:
        self.measuring = None
        following, self._measure_next = self._measure_next, None
        if following is not None and following.generation == self.generation:
            self._measure(following)
