"""The runner's thread: triggered evaluations run on it one at a time, in trigger order.

Usage (what :class:`~syllabus_eval.EvalRunner` does with it)::

    jobs = JobQueue(run=run_one_evaluation, close=backend.close)
    job = jobs.submit(lambda: take_snapshot(...), blocking=False, busy_policy="skip")
    result = jobs.poll()              # None while it runs
    jobs.shutdown(timeout=10)

A job is reserved before its snapshot is taken (the snapshot may wait for an optimizer step),
queued, and run by a daemon thread started on the first job. Its outcome is a future: a
blocking caller waits for it, background ones wait in :attr:`JobQueue.unclaimed` until
:meth:`~JobQueue.poll` or :meth:`~JobQueue.wait` takes them. Failures are kept with their job
and raised from there as :class:`~syllabus_eval.EvaluationError` chained to the original.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from syllabus_eval.errors import EvaluationCancelled, EvaluationError
from syllabus_eval.evaluation.schedule import BusyPolicy
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.results.metrics import EvalResult

logger = logging.getLogger(__name__)

@dataclass(eq=False)  # jobs are told apart by identity
class Job:
    """One triggered evaluation."""

    snapshot: Snapshot  # taken at trigger time
    blocking: bool
    future: Future = field(default_factory=Future)
    source: Callable[[], Any] | None = None  # a weak reference to the module it read

    @property
    def step(self) -> int | None:
        return self.snapshot.step


class JobQueue:
    """The evaluations waiting for the runner's thread, and the thread (module docs).

    Args:
        run: runs one job on the thread and returns its result (given the stop flag that
            :meth:`shutdown` sets).
        close: frees the backend; called once, on the thread when it ends (or by
            :meth:`shutdown` if no thread ever started).
    """

    def __init__(self, run: Callable[[Job, threading.Event], EvalResult],
                 close: Callable[[], None]) -> None:
        self._run, self._close = run, close
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.unclaimed: deque[Job] = deque()  # background results not yet polled
        self._busy = 0  # evaluations queued or running
        self.stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> bool:
        """Whether an evaluation is queued or running."""
        with self._lock:
            return self._busy > 0

    def submit(self, snapshot: Callable[[], Snapshot], blocking: bool,
               busy_policy: BusyPolicy) -> Job | None:
        """Queue a job on ``snapshot()``, taken now; ``None`` if skipped (busy, ``"skip"``).

        Raises:
            RuntimeError: busy and ``busy_policy="error"`` (or a blocking job under ``"skip"``),
                or shut down.
        """
        with self._lock:
            self._check_open()
            if self._busy and busy_policy != "queue":
                if busy_policy == "skip" and not blocking:
                    return None
                raise RuntimeError(
                    f"EvalRunner: an evaluation is still pending (busy_policy="
                    f"{str(busy_policy)!r}); wait() for it, or use "
                    "schedule=EvalSchedule(busy_policy='queue')")
            self._busy += 1  # reserved before the snapshot, which may wait for a step
        try:
            job = Job(snapshot(), blocking)
        except BaseException:
            with self._lock:
                self._busy -= 1
            raise
        with self._lock:
            if self._closed:  # shut down during the snapshot: its thread may be gone already
                self._busy -= 1
                self._check_open()
            if not blocking:
                self.unclaimed.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name="syllabus-eval-runner")
                self._thread.start()
            self._jobs.put(job)  # under the lock: before shutdown's stop signal, or not at all
        return job

    def poll(self) -> EvalResult | None:
        """The oldest background result not yet returned; ``None`` while it runs (or if none)."""
        with self._lock:
            if not self.unclaimed or not self.unclaimed[0].future.done():
                return None
            job = self.unclaimed.popleft()
        return self.outcome(job)

    def wait(self, timeout: float | None = None) -> EvalResult | None:
        """Block until the oldest background evaluation not yet returned is done; return it
        (``None`` if none is left)."""
        with self._lock:
            if not self.unclaimed:
                return None
            job = self.unclaimed[0]
        if not wait_futures([job.future], timeout).done:
            raise TimeoutError(f"the evaluation triggered at step {job.step} is still running "
                               f"after {timeout}s")
        self.claim(job)
        return self.outcome(job)

    def claim(self, job: Job) -> None:
        """Take ``job`` out of the unclaimed results (its result is returned elsewhere)."""
        with self._lock:
            if job in self.unclaimed:
                self.unclaimed.remove(job)

    def outcome(self, job: Job) -> EvalResult:
        """``job``'s result once done, or its failure as :class:`EvaluationError`."""
        wait_futures([job.future])
        error = job.future.exception()
        if error is not None:
            raise EvaluationError(f"the evaluation triggered at step {job.step} failed: "
                                  f"{error!r}") from error
        return job.future.result()

    def shutdown(self, timeout: float) -> bool:
        """Stop the thread (the running job at its next env step; queued ones cancelled);
        ``False`` if it was still inside a call after ``timeout`` seconds."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self.stop.set()
        self._jobs.put(None)  # wakes the idle thread; jobs queued before it are cancelled
        if thread is None:
            self._close()
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("EvalRunner.shutdown: the evaluation thread is still inside a call "
                           "after %ss; it will end when that call returns", timeout)
            return False
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("EvalRunner: shut down; create a new runner to evaluate")

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                if self.stop.is_set():
                    self._finish(job, error=EvaluationCancelled(
                        "the runner was shut down before this evaluation started"))
                    continue
                try:
                    result = self._run(job, self.stop)
                except BaseException as error:
                    self._finish(job, error=error)
                else:
                    self._finish(job, result=result)
            while (job := self._get_nowait()) is not None:  # triggered during shutdown
                self._finish(job, error=EvaluationCancelled("the runner was shut down"))
        finally:
            self._close()

    def _get_nowait(self) -> Job | None:
        try:
            return self._jobs.get_nowait()
        except queue.Empty:
            return None

    def _finish(self, job: Job, result: EvalResult | None = None,
                error: BaseException | None = None) -> None:
        with self._lock:
            self._busy -= 1  # before the future: whoever wait()s may trigger at once
        if error is not None:
            if not job.blocking and not isinstance(error, EvaluationCancelled):
                # A loop that only listens to on_result would otherwise not hear of it until
                # it next calls poll() or wait().
                logger.error("the background evaluation at step %s failed (poll() and wait() "
                             "raise it): %r", job.step, error)
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
