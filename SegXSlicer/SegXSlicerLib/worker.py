"""Background jobs that keep Slicer responsive.

A job is a plain function run in a daemon thread. It must not touch Qt or MRML: it gets
its inputs as plain data (numpy arrays, strings), reports progress through its
:class:`JobContext`, and returns plain data. The main thread polls :meth:`JobRunner.poll`
(from a ``qt.QTimer``) and applies finished results to the scene itself.
"""

import queue
import threading
from typing import Any, Callable, List, Optional, Tuple


class Cancelled(Exception):
    """Raised inside a job by :meth:`JobContext.check` once the job was cancelled."""


class JobContext:
    """What a running job sees: progress reporting and cancellation."""

    def __init__(self):
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._progress: Tuple[float, str] = (0.0, "waiting")

    def report(self, fraction: float, message: str) -> None:
        """Record progress (``fraction`` in [0, 1]) and raise :class:`Cancelled` if the
        job was cancelled meanwhile."""
        with self._lock:
            self._progress = (min(max(float(fraction), 0.0), 1.0), message)
        self.check()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled."""
        if self._cancelled.is_set():
            raise Cancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def progress(self) -> Tuple[float, str]:
        with self._lock:
            return self._progress


class Job:
    """One submitted job; read ``result`` / ``error`` once :meth:`JobRunner.poll` returned it.

    Attributes:
        name: what the job does (``"run"``, ``"next sample"``, ...).
        result: the function's return value (``None`` until done or on error).
        error: the exception it raised, or ``None``; a cancelled job has
            ``cancelled == True`` and its result is to be ignored.
    """

    def __init__(self, name: str, context: JobContext):
        self.name = name
        self.context = context
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.done = False

    @property
    def cancelled(self) -> bool:
        return self.context.cancelled

    def cancel(self) -> None:
        """Ask the job to stop. A blocking HTTP call finishes first (its timeout bounds
        the wait); its result is then discarded."""
        self.context._cancelled.set()


class JobRunner:
    """Runs jobs in threads; finished jobs are collected by :meth:`poll` on the main thread."""

    def __init__(self):
        self._finished: "queue.Queue[Job]" = queue.Queue()
        self._running: List[Job] = []

    def submit(self, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        """Start ``function(context, *args, **kwargs)`` in a daemon thread."""
        job = Job(name, JobContext())

        def run():
            try:
                job.result = function(job.context, *args, **kwargs)
            except BaseException as error:  # delivered to the main thread, never lost
                job.error = error
            finally:
                job.done = True
                self._finished.put(job)

        self._running.append(job)
        threading.Thread(target=run, name=f"SegX {name}", daemon=True).start()
        return job

    @property
    def running(self) -> List[Job]:
        """Jobs submitted and not yet returned by :meth:`poll`."""
        return list(self._running)

    def poll(self) -> List[Job]:
        """The jobs that finished since the last call (without blocking)."""
        finished = []
        while True:
            try:
                job = self._finished.get_nowait()
            except queue.Empty:
                return finished
            self._running.remove(job)
            finished.append(job)

    def cancel_all(self) -> None:
        """Cancel every running job."""
        for job in self._running:
            job.cancel()
