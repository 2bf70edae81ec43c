"""The worker pool that the ``"process"`` and ``"ray"`` backends share.

Usage (the process and Ray backends are its subclasses; users pick them by name)::

    class ProcessBackend(PooledBackend):
        name = "process"
        def _start_worker(self, index): ...        # a worker on shares[index]: READY/FAILED
        def _poll(self, workers, timeout): ...     # [(worker, Event), ...] within timeout
        def _payload(self, order): ...             # a JobOrder as workers take it
        def _close_workers(self, workers): ...     # gone within seconds

**Workers.** Each of ``num_workers`` workers (spawned processes in
:mod:`.process`, Ray actors in :mod:`.ray`)
builds its own env pool from ``env_fn`` (default: the runner's env factory) and gets its
evaluator, after calling ``init_fn``: from ``evaluator_fn``, or by default the runner's
evaluator itself (its
:meth:`~syllabus_eval.Evaluator.detached` copy on the CPU, pickled once for all workers and
unpickled in each, on the evaluation device). It runs a fixed share of the env slots: the
``num_envs`` slots are split into contiguous blocks, and each worker runs
``run_episodes(..., slots=its block, num_slots=num_envs)``. Quotas, seeds and tasks follow the
global slot indices (see :mod:`syllabus_eval.rollout`), so the merged records, and with greedy
actions the metrics, equal those of the thread backend. The factories (and ``set_task``) are
sent with cloudpickle, as Gymnasium's ``AsyncVectorEnv`` sends its env factories: lambdas and
closures travel by value with what they capture, module-level functions by name. Workers start
with the runner (their start-up errors, such as envs that do not fit the agent, are raised by
``EvalRunner(...)``) and live until ``shutdown``.

**Weights** travel as the evaluation's :class:`~syllabus_eval.Snapshot` (a CPU state
dict, its version and step), serialized once per evaluation (Ray: one object in the object
store, read by every actor) and loaded into each worker's evaluator; the process backend hands
them over through shared memory instead (:mod:`~syllabus_eval.evaluation.backends.shared`).

**The protocol** between the runner's side and a worker, and the worker's side of it, are in
:mod:`~syllabus_eval.evaluation.backends.workers`.

**Failures.** An exception raised in a worker (an env that crashes, an adapter error) fails the
evaluation with the exception itself, its traceback in the worker chained as its cause (a
:class:`RemoteTraceback`); the other workers stop at their next env step. A worker that dies
(killed, out of memory, a crash in native code) is restarted and its share run again, at most
``max_restarts`` times per evaluation; after that the evaluation fails with an
:class:`~syllabus_eval.EvaluationError`. An evaluation whose episodes take longer than
``timeout`` seconds fails with a ``TimeoutError`` and its workers are killed (starting workers
is bounded apart, by :data:`START_TIMEOUT`). Failed evaluations never return partial results,
and the workers that were killed are started again for the next one. ``shutdown`` kills
running workers and closes idle ones, each within seconds; workers nobody shut down are killed
when the interpreter exits.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import cloudpickle
import numpy as np
import torch

from syllabus_eval.errors import (
    ArgumentError,
    EvaluationCancelled,
    EvaluationError,
    bad_argument,
    describe,
)
from syllabus_eval.evaluation.backend_settings import WorkerBackend
from syllabus_eval.evaluation.backends.base import Backend
from syllabus_eval.evaluation.backends.workers import (
    Event,
    EventKind,
    JobOrder,
    ShippedEvaluator,
    WorkerSpec,
)
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.query.protocols import AgentQueries, WeightedAgentQueries
from syllabus_eval.rollout import EnvSpec, EpisodeRecord, RolloutSettings

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often waits for workers look at the stop flag and the clock
CANCEL_GRACE = 5.0  # seconds cancelled workers get to stop at an env step before being killed
CLOSE_GRACE = 2.0  # seconds idle workers get to close their envs at shutdown
# Seconds workers may take to start (spawn, imports, init_fn, envs; Ray: also waiting for free
# CPUs and GPUs): never forever, but generous, since the evaluation timeout is about episodes.
START_TIMEOUT = 300.0


_JOB_EVENTS = frozenset({EventKind.EPISODE, EventKind.DONE, EventKind.ERROR})
_LIFE_EVENTS = frozenset({EventKind.READY, EventKind.FAILED, EventKind.DIED})


class Workers(list):
    """The workers of a backend, by index (``None``: to start before the next job).

    ``closed`` once the backend closed, or the interpreter exits: no worker starts after it.
    """

    closed = False


def kill_all(workers: Workers) -> None:
    """Kill every worker; none starts afterwards (the interpreter's exit)."""
    workers.closed = True
    for worker in workers:
        if worker is not None:
            worker.kill()


class PooledBackend(Backend):
    """What the process and Ray backends share: shares, restarts, timeouts, errors, shutdown.

    Subclasses provide the workers: how to start one, wait for what workers report, hand them
    a job, and close them (the abstract methods).
    """

    name: ClassVar[str]
    streams_episodes: ClassVar[bool] = True  # workers report each episode as it ends
    weights_device = torch.device("cpu")  # state dicts travel between processes on the CPU

    def __init__(self, envs: EnvSpec, evaluator: AgentQueries | None,
                 plan: tuple[RolloutSettings, ...], *, device: str | torch.device | None = None,
                 settings: WorkerBackend | None = None, start_workers: bool = True) -> None:
        super().__init__(envs, evaluator, plan, device=device, settings=settings)
        options = settings if settings is not None else WorkerBackend()
        if options.evaluator_fn is None and evaluator is None:
            raise ArgumentError("evaluator_fn", (
                f"expected a factory that builds the evaluator in each worker "
                f"(backend={self.name!r} runs episodes in other processes), or an evaluator to "
                "send them, got None for both"))
        num_envs, num_workers = envs.num_envs, options.num_workers
        if num_workers > num_envs:
            raise bad_argument("num_workers", f"at most num_envs={num_envs} (each worker runs "
                               "at least one env slot)", num_workers)
        spec = WorkerSpec(envs, options.env_fn, options.evaluator_fn, options.init_fn, plan,
                          device)
        self._spec = self._serialize_spec(spec, evaluator=evaluator)
        # Contiguous blocks of slots: worker w runs slots shares[w] of the num_envs.
        self.shares = [part.tolist() for part in np.array_split(np.arange(num_envs),
                                                                  num_workers)]
        self.max_restarts = options.max_restarts
        self.timeout = options.timeout
        self.workers = Workers([None] * num_workers)
        self._jobs = itertools.count(1)
        self._starting: dict[int, Any] = {}  # launched, not yet READY: index -> worker
        self._start_deadline = 0.0
        self._open()
        if not start_workers:  # they start with the first evaluation (see run)
            return
        try:
            self._start_missing(None)
        except BaseException:
            self.close()
            raise

    # --- what subclasses provide -----------------------------------------------------------

    def _dumps(self, value: Any) -> bytes:
        """Serialize for the workers, which load it with ``pickle.loads``: cloudpickle writes
        plain pickle data, and serializes lambdas and closures by value."""
        return cloudpickle.dumps(value)

    def _open(self) -> None:
        """Get ready to start workers (Ray: connect)."""

    @abc.abstractmethod
    def _start_worker(self, index: int) -> Any:
        """Start worker ``index`` on ``self.shares[index]``; it reports READY or FAILED."""

    @abc.abstractmethod
    def _poll(self, workers: list[Any], timeout: float) -> list[tuple[Any, Event]]:
        """What ``workers`` reported within ``timeout`` seconds (``[]`` if nothing)."""

    @abc.abstractmethod
    def _payload(self, order: JobOrder) -> Any:
        """``order`` in the form ``worker.submit`` takes, serialized once for all workers."""

    @abc.abstractmethod
    def _close_workers(self, workers: list[Any]) -> None:
        """Close idle workers gracefully, then make sure they are gone (bounded in time)."""

    def _disconnect(self) -> None:
        """Undo :meth:`_open` (called by :meth:`close`)."""

    def _slow_start_hint(self) -> str:
        """What may keep workers from starting, for the error message."""
        return ""

    # --- the evaluation --------------------------------------------------------------------

    def run(self, snapshot: Snapshot, stop: threading.Event,
            on_episode: Callable[[EpisodeRecord], None] | None,
            background: bool) -> list[EpisodeRecord]:
        self._start_missing(stop)  # those killed or dead since the last evaluation
        job = next(self._jobs)
        payload = self._payload(JobOrder(job, snapshot,
                                         stream=on_episode is not None and self.streams_episodes))
        busy = {index: worker for index, worker in enumerate(self.workers)}
        for worker in busy.values():
            worker.submit(payload)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        shares: dict[int, list[EpisodeRecord]] = {}
        failure: BaseException | None = None  # raised once the reports at hand are read
        deaths = 0
        restarting: dict[int, float] = {}  # worker index -> when it must be ready
        try:
            while busy and failure is None:
                late = [busy[index] for index, due in restarting.items()
                        if due < time.monotonic()]
                if late:
                    raise TimeoutError(f"{late[0]} did not start again within "
                                       f"{START_TIMEOUT:.0f}s{self._slow_start_hint()}")
                for worker, (kind, event_job, data) in self._events(
                        busy.values(), stop, deadline, "the evaluation's episodes took longer "
                        f"than timeout={self.timeout}s; its workers were killed (they start "
                        "again for the next evaluation)"):
                    if busy.get(worker.index) is not worker or (
                            kind in _JOB_EVENTS and event_job != job):
                        continue  # from a job or worker that was given up
                    if kind is EventKind.READY:  # a restarted worker: now it takes the job
                        restarting.pop(worker.index, None)
                        worker.submit(payload)
                    elif kind is EventKind.EPISODE:
                        if on_episode is not None:
                            on_episode(data)
                    elif kind in (EventKind.DONE, EventKind.ERROR):  # idle again
                        del busy[worker.index]
                        if kind is EventKind.ERROR:
                            failure = failure or data.exception()
                            continue
                        shares[worker.index] = data
                        if on_episode is not None and not self.streams_episodes:
                            for record in data:
                                on_episode(record)
                    elif kind is EventKind.FAILED:  # a restarted worker could not start
                        del busy[worker.index]
                        restarting.pop(worker.index, None)
                        self._retire(worker)
                        failure = failure or data.exception()
                    else:  # DIED: its share runs again on a fresh worker, if allowed
                        del busy[worker.index]
                        restarting.pop(worker.index, None)
                        self._retire(worker)
                        deaths += 1
                        if deaths > self.max_restarts:
                            failure = failure or EvaluationError(
                                f"{worker} died during the evaluation ({data}) after "
                                f"{deaths - 1} restart(s) of its workers, and max_restarts="
                                f"{self.max_restarts} allows no more; the evaluation has no "
                                "result (workers start again for the next one)")
                            continue
                        busy[worker.index] = self._launch(worker.index)
                        restarting[worker.index] = time.monotonic() + START_TIMEOUT
                        logger.warning("%s died during the evaluation (%s); restarted it to "
                                       "run its share again (restart %d of at most %d)",
                                       worker, data, deaths, self.max_restarts)
            if failure is not None:
                raise failure
        except BaseException as error:
            # Stuck or stopped workers are killed; the others only stop their job.
            self._abort(list(busy.values()), job, gently=not isinstance(
                error, (EvaluationCancelled, TimeoutError)))
            raise
        return [record for index in sorted(shares) for record in shares[index]]

    def _events(self, workers: Iterable[Any], stop: threading.Event | None,
                deadline: float | None, late: str, wait: float | None = None
                ) -> list[tuple[Any, Event]]:
        """What ``workers`` report in the next moment (``wait`` seconds at most, default
        ``POLL_SECONDS``); raises once stopped, or past deadline."""
        if stop is not None and stop.is_set():
            raise EvaluationCancelled("the evaluation was stopped before its episodes ended")
        wait = POLL_SECONDS if wait is None else wait
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(late)
            wait = min(wait, left)
        return self._poll(list(workers), wait)

    def launch(self) -> None:
        """Start the workers that are not running, without waiting: :meth:`started` says when
        they are ready (their jobs may be handed out only then)."""
        for index, worker in enumerate(self.workers):
            if worker is None or not worker.alive():
                if worker is not None:
                    worker.kill()  # reap it
                self._starting[index] = self._launch(index)
        self._start_deadline = time.monotonic() + START_TIMEOUT

    def started(self, stop: threading.Event | None = None, wait: bool = True) -> bool:
        """Whether the workers :meth:`launch` started are ready: waits for them (``wait``) or
        reads what they reported so far. Raises what keeps one from starting (its exception,
        a death, ``START_TIMEOUT`` passed), the workers still starting then killed."""
        try:
            while self._starting:
                for worker, (kind, _, data) in self._events(
                        self._starting.values(), stop, self._start_deadline,
                        f"the workers did not start within {START_TIMEOUT:.0f}s"
                        f"{self._slow_start_hint()}", None if wait else 0.0):
                    if kind is EventKind.READY:
                        self._starting.pop(worker.index, None)
                    elif kind is EventKind.FAILED:
                        raise data.exception()
                    elif kind is EventKind.DIED:
                        raise EvaluationError(
                            f"{worker} died while starting ({data}); its output (above) may say "
                            "why. (A script that starts process workers needs the "
                            "`if __name__ == '__main__':` guard: workers import its module.)")
                if not wait:
                    break
        except BaseException:
            for worker in self._starting.values():
                self._retire(worker)
            self._starting.clear()
            raise
        return not self._starting

    def _start_missing(self, stop: threading.Event | None) -> None:
        """Start the workers that are not running; wait until they are ready."""
        self.launch()
        self.started(stop)

    def _abort(self, busy: list[Any], job: int, gently: bool) -> None:
        """Stop the workers still busy with ``job``: cancel it (``gently``), or kill them."""
        if gently:
            for worker in busy:
                worker.cancel(job)
            waiting = {worker.index: worker for worker in busy}
            deadline = time.monotonic() + CANCEL_GRACE
            while waiting and (left := deadline - time.monotonic()) > 0:
                for worker, (kind, event_job, _) in self._poll(list(waiting.values()),
                                                               min(POLL_SECONDS, left)):
                    if kind in _LIFE_EVENTS or (
                            kind in (EventKind.DONE, EventKind.ERROR) and event_job == job):
                        waiting.pop(worker.index, None)
                        if kind in (EventKind.FAILED, EventKind.DIED):
                            self._retire(worker)
            busy = list(waiting.values())
        for worker in busy:
            self._retire(worker)

    def _launch(self, index: int) -> Any:
        """Start worker ``index`` in its slot, unless the backend is closed."""
        if self.workers.closed:
            raise EvaluationCancelled("the runner is shut down (or the interpreter exits): no "
                                      "more workers start")
        self.workers[index] = self._start_worker(index)
        return self.workers[index]

    def _retire(self, worker: Any) -> None:
        """Kill ``worker``; its slot starts a fresh one before the next job."""
        worker.kill()
        if self.workers[worker.index] is worker:
            self.workers[worker.index] = None

    def close(self) -> None:
        self.workers.closed = True
        workers = [worker for worker in self.workers if worker is not None]
        self.workers[:] = [None] * len(self.workers)  # in place: the exit finalizer holds it
        try:
            self._close_workers(workers)
        finally:
            self._disconnect()

    def _serialize_spec(self, spec: WorkerSpec, evaluator: AgentQueries | None) -> bytes:
        """``spec`` serialized, with ``evaluator`` itself standing for a missing
        ``evaluator_fn``; a ``ValueError`` naming the argument that does not serialize."""
        for option, value, what in (
                ("env_fn", spec.factory, "env factory"),
                ("evaluator_fn", spec.evaluator_fn, "evaluator factory"),
                ("init_fn", spec.init_fn, "callable"),
                ("set_task", spec.envs.set_task, "callable"),
                ("tasks", [settings.tasks for settings in spec.plan], "list of tasks")):
            try:
                self._dumps(value)
            except Exception as error:
                used = "" if option != "env_fn" or spec.given_env_fn else (
                    " (the runner's env factory is used when env_fn is not given)")
                raise ArgumentError(option, (
                    f"expected a serializable {what} for backend={self.name!r}, "
                    f"which sends it to each worker with cloudpickle{used}: a function, lambda "
                    f"or closure is sent with everything it captures, which must serialize "
                    f"too; got {describe(value)}, which does not serialize: {error}")) from None
        if spec.evaluator_fn is None:
            spec = dataclasses.replace(spec, evaluator_fn=self._ship(evaluator), device=(
                spec.device if spec.device is not None else getattr(evaluator, "device", None)))
        return self._dumps(spec)

    def _ship(self, evaluator: AgentQueries) -> ShippedEvaluator:
        """``evaluator`` as workers build it: its private copy of the weights, on the CPU (the
        worker puts it on the evaluation device), pickled once for every worker."""
        try:
            portable = (evaluator.detached("cpu") if isinstance(evaluator, WeightedAgentQueries)
                        else evaluator)
            return ShippedEvaluator(self._dumps(portable))
        except Exception as error:
            raise ValueError(
                f"evaluator_fn: expected a factory that builds the evaluator in each worker, "
                f"since the evaluator given does not serialize for backend={self.name!r} (its "
                f"copy of the agent is sent to the workers with cloudpickle); got None, and "
                f"{describe(evaluator)}, which does not serialize: {error}") from None
