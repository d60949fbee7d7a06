"""One background job at a time for a panel: worker thread, progress, messages.

The clusters, map and import/export panels run core functions that take seconds
to minutes (k-means, Leiden, UMAP, thumbnails, exports, embedding imported
nuclei). Each runs as a generator in a worker thread (superqt's
``GeneratorWorker``): it yields ``(stage, done, total)`` for napari's activity
dock (``total`` 0: no count known) and returns its result, which the panel turns
into layers and columns in the main thread. Core functions that report through
a callback instead get :meth:`PanelJob.report`, callable from the worker thread
(a Qt signal crosses to the main thread). Problems the user can fix from the
message (ValueError, OSError) become error notifications; anything else comes
with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import notification_manager, show_error
from superqt.utils import GeneratorWorker

logger = logging.getLogger(__name__)

USER_ERRORS = (ValueError, OSError)
DEVELOPER_WARNINGS = (ImportWarning, DeprecationWarning, PendingDeprecationWarning)
Step = tuple[str, int, int]


class JobError(Exception):
    """A RuntimeError of a job, re-raised so that the worker reports it.

    NOTE: superqt's GeneratorWorker takes a RuntimeError raised inside the
    generator for a deleted worker, and only warns about it.
    """


def _guarded(job: Callable[..., Generator], *args: Any, **kwargs: Any) -> Generator:
    try:
        return (yield from job(*args, **kwargs))
    except RuntimeError as err:
        raise JobError(f"{type(err).__name__}: {err}") from err


def _notify_warning(args: tuple) -> None:
    """A warning of a job as a notification, unless it is meant for developers.

    NOTE: the worker records every warning, also those Python hides by default
    (umap-learn's ImportWarning about TensorFlow, deprecations in libraries).
    """
    message, category = args[0], args[1]
    if issubclass(category, DEVELOPER_WARNINGS):
        logger.debug("%s: %s", category.__name__, message)
        return
    notification_manager.receive_warning(*args)


class PanelJob:
    """Runs a panel's jobs one at a time and reports them.

    Parameters
    ----------
    what : str
        Names the panel in messages ("LEMON clusters").
    on_running : callable, optional
        Called with True when a job starts and False when it ends (to enable and
        disable buttons).
    """

    def __init__(
        self, what: str, on_running: Callable[[bool], None] | None = None
    ) -> None:
        self.what = what
        self._on_running = on_running
        self.worker: Any = None
        self._bar: progress | None = None

    @property
    def running(self) -> bool:
        """Whether a job is running."""
        return self.worker is not None

    def start(
        self,
        job: Callable[..., Generator[Step, None, Any]],
        *args: Any,
        on_result: Callable[[Any], None],
        on_error: Callable[[Exception], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the generator function ``job(*args, **kwargs)`` in a worker.

        ``on_result`` receives its return value in the main thread; ``on_error``
        (after the notification) the exception it raised. The job counts as
        ended when they are called, so they may start the next one.

        Returns
        -------
        GeneratorWorker, or None when a job is already running.
        """
        if self.running:
            show_error(f"{self.what}: wait for the running job to finish")
            return None
        make = thread_worker(_guarded, worker_class=GeneratorWorker, ignore_errors=True)
        worker = make(job, *args, **kwargs)
        worker.warned.connect(_notify_warning)
        worker.yielded.connect(self._on_step)
        worker.returned.connect(
            lambda result: self._on_returned(worker, result, on_result)
        )
        worker.errored.connect(lambda err: self._on_error(worker, err, on_error))
        worker.finished.connect(lambda: self._end(worker))
        self.worker = worker
        self._bar = progress(total=0, desc=f"{self.what}: starting")
        if self._on_running is not None:
            self._on_running(True)
        worker.start()
        return worker

    def report(self, stage: str, done: int, total: int) -> None:
        """Show a step of the running job; may be called from its thread."""
        worker = self.worker
        if worker is not None:
            # NOTE: emitted from the worker thread, queued to the main thread
            worker.yielded.emit((str(stage), int(done), int(total)))

    def quit(self) -> None:
        """Ask the running job to stop at its next step."""
        if self.worker is not None:
            self.worker.quit()

    def _on_step(self, step: Step) -> None:
        stage, done, total = step
        bar = self._bar
        if bar is None:
            return
        if bar.desc != f"{self.what}: {stage}":
            bar.set_description(f"{self.what}: {stage}")
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.update(0)

    def _on_returned(
        self, worker: Any, result: Any, on_result: Callable[[Any], None]
    ) -> None:
        self._end(worker)
        on_result(result)

    def _on_error(
        self, worker: Any, err: Exception, on_error: Callable[[Exception], None] | None
    ) -> None:
        self._end(worker)
        logger.debug("%s failed", self.what, exc_info=err)
        if isinstance(err, USER_ERRORS):
            show_error(f"{self.what} failed: {err}")
        else:
            notification_manager.receive_error(type(err), err, err.__traceback__)
        if on_error is not None:
            on_error(err)

    def _end(self, worker: Any) -> None:
        """Close the progress of ``worker`` unless a later job has started."""
        if worker is not self.worker:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.worker = None
        if self._on_running is not None:
            self._on_running(False)
