"""Evaluation in worker processes: the ``"process"`` backend, and what it shares with ``"ray"``.

Usage::

    from functools import partial

    def make_evaluator():                    # module level: workers import it
        return CleanRLEvaluator(Agent(envs))

    runner = EvalRunner(partial(gym.make, "CartPole-v1"), CleanRLEvaluator(agent), num_envs=8,
                        num_episodes=40, backend="process", evaluator_fn=make_evaluator,
                        num_workers=2, max_restarts=2, timeout=600)
    runner.trigger_eval(agent, step=step)    # the snapshot travels to the workers

**Workers.** Each of ``num_workers`` workers (spawned processes here, Ray actors in
:mod:`syllabus_eval.backends_ray`) builds its own env pool and evaluator from the picklable
factories ``env_fn`` (default: ``make_env``) and ``evaluator_fn``, after calling ``init_fn``,
and runs a fixed share of the env slots: the ``num_envs`` slots are split into contiguous
blocks, and each worker runs ``run_episodes(..., slots=its block, num_slots=num_envs)``. Quotas,
seeds and tasks follow the global slot indices (see :mod:`syllabus_eval.rollout`), so the merged
records, and with greedy actions the metrics, equal those of the thread backend. Workers start
with the runner (their start-up errors, such as envs that do not fit the agent, are raised by
``EvalRunner(...)``) and live until ``shutdown``.

**Weights** travel as a CPU state dict, serialized once per evaluation (Ray: one object in the
object store, read by every actor) and loaded into each worker's evaluator.

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

**Priority.** Process workers run at nice 15 with one torch thread, as Ray runs its workers:
on a busy machine training keeps the CPU it needs and evaluations take what is left.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing import connection
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from .backends import _Backend, _Episodes
from .errors import (
    EvaluationCancelled,
    EvaluationError,
    bad_argument,
    check_count,
    check_number,
    describe,
)
from .rollout import EpisodeRecord, RolloutSettings

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often waits for workers look at the stop flag and the clock
CANCEL_GRACE = 5.0  # seconds cancelled workers get to stop at an env step before being killed
CLOSE_GRACE = 2.0  # seconds idle workers get to close their envs at shutdown
NICENESS = 15  # of worker processes, as Ray's (its worker_niceness)
# Seconds workers may take to start (spawn, imports, init_fn, envs; Ray: also waiting for free
# CPUs and GPUs): never forever, but generous, since the evaluation timeout is about episodes.
START_TIMEOUT = 300.0

# What workers report, as (kind, job, data): "ready" (data: its pid) or "failed" (a _Failure)
# once started; "episode" (a record, when streamed), then "done" (its records) or "error" (a
# _Failure) for each job. The runner's side adds "died" (data: why) for a worker that is gone.
Event = tuple[Any, str, int | None, Any]


class RemoteTraceback(Exception):
    """The traceback, as text, of an exception raised in a worker: its copy's ``__cause__``."""

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class _Failure:
    """An exception raised in a worker, as it travels back: pickled where possible, and text."""

    pickled: bytes | None
    summary: str  # "ValueError: message"
    traceback: str

    @classmethod
    def of(cls, error: BaseException) -> _Failure:
        try:
            pickled = pickle.dumps(error)
        except Exception:  # an exception that holds something unpicklable
            pickled = None
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return cls(pickled, f"{type(error).__name__}: {error}", text)

    def exception(self) -> BaseException:
        """The worker's exception (or an ``EvaluationError`` that names it), to raise here."""
        error = None
        if self.pickled is not None:
            try:
                error = pickle.loads(self.pickled)
            except Exception:  # e.g. its class cannot be imported here
                error = None
        if not isinstance(error, BaseException):
            error = EvaluationError(f"a worker raised {self.summary}")
        error.__cause__ = RemoteTraceback(f'\n"""\n{self.traceback}"""')
        return error


@dataclass(frozen=True)
class _WorkerSpec:
    """What a worker builds its share of the evaluation from (pickled once, for every worker)."""

    env_fn: Callable[[], Any]
    evaluator_fn: Callable[[], Any]
    init_fn: Callable[[], Any] | None
    settings: RolloutSettings
    num_envs: int
    vectorization_mode: str
    set_task: Callable[[gym.Env, Any], None] | None
    device: str | torch.device | None

    def build(self, slots: Sequence[int]) -> _Episodes:
        if self.init_fn is not None:
            self.init_fn()  # before anything else: simulators, env variables, devices
        evaluator = self.evaluator_fn()
        if not callable(getattr(evaluator, "get_action", None)):
            raise bad_argument("evaluator_fn", "a factory returning an Evaluator (an object "
                               "with get_action)", evaluator)
        env_fn = self.env_fn
        if len(slots) != self.num_envs:  # a share: its env slots are built one by one
            env_fn = partial(_one_env, env_fn, len(slots), self.num_envs)
        return _Episodes(env_fn, evaluator, self.settings, num_slots=self.num_envs,
                         slots=slots, vectorization_mode=self.vectorization_mode,
                         set_task=self.set_task, device=self.device)


def _one_env(env_fn: Callable[[], Any], share: int, num_envs: int) -> Any:
    env = env_fn()
    if isinstance(env, gym.vector.VectorEnv):
        env.close()
        raise ValueError(f"num_workers: expected 1 when the env factory returns a VectorEnv "
                         f"(it cannot be split between workers), got more: this worker's "
                         f"share is {share} of the {num_envs} env slots")
    return env


class _JobStop:
    """The ``stop`` flag of one job in a worker: set once the runner cancels that job."""

    def __init__(self, cancelled: Any, job: int) -> None:
        self.cancelled = cancelled  # .value: the last job cancelled
        self.job = job

    def is_set(self) -> bool:
        return self.cancelled.value == self.job


def _set_up(spec: bytes, slots: Sequence[int]) -> tuple[_Episodes | None, tuple]:
    """Worker side: build a share from the pickled spec; the episodes and the report."""
    try:
        return pickle.loads(spec).build(slots), ("ready", None, os.getpid())
    except BaseException as error:
        return None, ("failed", None, _Failure.of(error))


def _run_job(episodes: _Episodes, job: int, weights: Mapping[str, torch.Tensor] | None,
             version: int | None, stop: _JobStop,
             on_episode: Callable[[EpisodeRecord], None] | None = None) -> tuple:
    """Worker side: run one job on this share; the report."""
    try:
        return "done", job, episodes.run(weights, version, stop, on_episode)
    except BaseException as error:
        return "error", job, _Failure.of(error)


class _Workers(list):
    """The workers of a backend, by index (``None``: to start before the next job).

    ``closed`` once the backend closed, or the interpreter exits: no worker starts after it.
    """

    closed = False


def _kill_all(workers: _Workers) -> None:
    workers.closed = True
    for worker in workers:
        if worker is not None:
            worker.kill()


class _PooledBackend(_Backend):
    """What the process and Ray backends share: shares, restarts, timeouts, errors, shutdown.

    Subclasses provide the workers: how to start one, wait for what workers report, hand them
    a job, and close them (see the methods that raise ``NotImplementedError``).
    """

    name: ClassVar[str]
    options = frozenset({"env_fn", "evaluator_fn", "init_fn", "num_workers", "max_restarts",
                         "timeout"})
    streams_episodes: ClassVar[bool] = True  # workers report each episode as it ends
    weights_device = torch.device("cpu")  # state dicts travel between processes on the CPU

    def __init__(self, make_env: Callable[[], Any], evaluator: Any, num_envs: int,
                 settings: RolloutSettings, *, vectorization_mode: str = "sync",
                 set_task: Callable[[gym.Env, Any], None] | None = None,
                 device: str | torch.device | None = None,
                 env_fn: Callable[[], Any] | None = None,
                 evaluator_fn: Callable[[], Any] | None = None,
                 init_fn: Callable[[], Any] | None = None, num_workers: int = 1,
                 max_restarts: int = 2, timeout: float | None = None) -> None:
        super().__init__(make_env, evaluator, num_envs, settings,
                         vectorization_mode=vectorization_mode, set_task=set_task)
        if evaluator_fn is None:
            raise ValueError(
                f"evaluator_fn: expected a factory that builds the evaluator in each worker "
                f"(backend={self.name!r} runs episodes in other processes, which the evaluator "
                "given to EvalRunner does not reach), got None")
        for option, value in (("env_fn", env_fn), ("evaluator_fn", evaluator_fn),
                              ("init_fn", init_fn)):
            if value is not None and not callable(value):
                raise bad_argument(option, "a callable or None", value)
        check_count("num_workers", num_workers, 1)
        if num_workers > num_envs:
            raise bad_argument("num_workers", f"at most num_envs={num_envs} (each worker runs "
                               "at least one env slot)", num_workers)
        check_count("max_restarts", max_restarts, 0)
        if timeout is not None:
            check_number("timeout", timeout, 0, low_open=True)
        if vectorization_mode not in ("sync", "async"):
            raise bad_argument("vectorization_mode", "'sync' or 'async'", vectorization_mode)
        spec = _WorkerSpec(make_env if env_fn is None else env_fn, evaluator_fn, init_fn,
                           settings, num_envs, vectorization_mode, set_task, device)
        self._spec = self._serialize_spec(spec, env_fn_given=env_fn is not None)
        # Contiguous blocks of slots: worker w runs slots shares[w] of the num_envs.
        self.shares = [part.tolist() for part in np.array_split(np.arange(num_envs),
                                                                  num_workers)]
        self.max_restarts = max_restarts
        self.timeout = timeout
        self.workers = _Workers([None] * num_workers)
        self._jobs = itertools.count(1)
        self._open()
        try:
            self._start_missing(None)
        except BaseException:
            self.close()
            raise

    # --- what subclasses provide -----------------------------------------------------------

    def _dumps(self, value: Any) -> bytes:
        """Serialize for the workers."""
        return pickle.dumps(value)

    def _open(self) -> None:
        """Get ready to start workers (Ray: connect)."""

    def _start_worker(self, index: int) -> Any:
        """Start worker ``index`` on ``self.shares[index]``; it reports "ready" or "failed"."""
        raise NotImplementedError

    def _poll(self, workers: list[Any], timeout: float) -> list[Event]:
        """What ``workers`` reported within ``timeout`` seconds (``[]`` if nothing)."""
        raise NotImplementedError

    def _payload(self, job: int, weights: Mapping[str, torch.Tensor] | None,
                 version: int | None, stream: bool) -> Any:
        """Job ``job`` in the form ``worker.submit`` takes, serialized once for all workers."""
        raise NotImplementedError

    def _close_workers(self, workers: list[Any]) -> None:
        """Close idle workers gracefully, then make sure they are gone (bounded in time)."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Undo :meth:`_open` (called by :meth:`close`)."""

    def _slow_start_hint(self) -> str:
        """What may keep workers from starting, for the error message."""
        return ""

    # --- the evaluation --------------------------------------------------------------------

    def run(self, weights: Mapping[str, torch.Tensor] | None, version: int | None,
            stop: threading.Event, on_episode: Callable[[EpisodeRecord], None] | None,
            background: bool) -> list[EpisodeRecord]:
        self._start_missing(stop)  # those killed or dead since the last evaluation
        job = next(self._jobs)
        payload = self._payload(job, weights, version,
                                stream=on_episode is not None and self.streams_episodes)
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
                for worker, kind, event_job, data in self._events(
                        busy.values(), stop, deadline, "the evaluation's episodes took longer "
                        f"than timeout={self.timeout}s; its workers were killed (they start "
                        "again for the next evaluation)"):
                    if busy.get(worker.index) is not worker or (
                            kind in ("episode", "done", "error") and event_job != job):
                        continue  # from a job or worker that was given up
                    if kind == "ready":  # a restarted worker: now it takes the job
                        restarting.pop(worker.index, None)
                        worker.submit(payload)
                    elif kind == "episode":
                        if on_episode is not None:
                            on_episode(data)
                    elif kind in ("done", "error"):  # the worker is idle again
                        del busy[worker.index]
                        if kind == "error":
                            failure = failure or data.exception()
                            continue
                        shares[worker.index] = data
                        if on_episode is not None and not self.streams_episodes:
                            for record in data:
                                on_episode(record)
                    elif kind == "failed":  # a restarted worker could not start
                        del busy[worker.index]
                        restarting.pop(worker.index, None)
                        self._retire(worker)
                        failure = failure or data.exception()
                    else:  # "died": its share runs again on a fresh worker, if allowed
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
        return sorted((record for share in shares.values() for record in share),
                      key=lambda r: (r.env_index, r.episode_index))

    def _events(self, workers: Iterable[Any], stop: threading.Event | None,
                deadline: float | None, late: str) -> list[Event]:
        """What ``workers`` report in the next moment; raises once stopped, or past deadline."""
        if stop is not None and stop.is_set():
            raise EvaluationCancelled("the evaluation was stopped before its episodes ended")
        wait = POLL_SECONDS
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(late)
        return self._poll(list(workers), wait)

    def _start_missing(self, stop: threading.Event | None) -> None:
        """Start the workers that are not running; wait until they are ready."""
        starting = {}
        for index, worker in enumerate(self.workers):
            if worker is None or not worker.alive():
                if worker is not None:
                    worker.kill()  # reap it
                starting[index] = self._launch(index)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while starting:
                for worker, kind, _, data in self._events(
                        starting.values(), stop, deadline,
                        f"the workers did not start within {START_TIMEOUT:.0f}s"
                        f"{self._slow_start_hint()}"):
                    if kind == "ready":
                        starting.pop(worker.index, None)
                    elif kind == "failed":
                        raise data.exception()
                    elif kind == "died":
                        raise EvaluationError(
                            f"{worker} died while starting ({data}); its output (above) may say "
                            "why. (A script that starts process workers needs the "
                            "`if __name__ == '__main__':` guard: workers import its module.)")
        except BaseException:
            for worker in starting.values():
                self._retire(worker)
            raise

    def _abort(self, busy: list[Any], job: int, gently: bool) -> None:
        """Stop the workers still busy with ``job``: cancel it (``gently``), or kill them."""
        if gently:
            for worker in busy:
                worker.cancel(job)
            waiting = {worker.index: worker for worker in busy}
            deadline = time.monotonic() + CANCEL_GRACE
            while waiting and (left := deadline - time.monotonic()) > 0:
                for worker, kind, event_job, _ in self._poll(list(waiting.values()),
                                                             min(POLL_SECONDS, left)):
                    if kind in ("ready", "failed", "died") or (
                            kind in ("done", "error") and event_job == job):
                        waiting.pop(worker.index, None)
                        if kind in ("failed", "died"):
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

    def _serialize_spec(self, spec: _WorkerSpec, env_fn_given: bool) -> bytes:
        """``spec`` serialized; a ``ValueError`` naming the argument that does not serialize."""
        for option, value, what in (
                ("env_fn", spec.env_fn, "env factory"),
                ("evaluator_fn", spec.evaluator_fn, "evaluator factory"),
                ("init_fn", spec.init_fn, "callable"), ("set_task", spec.set_task, "callable"),
                ("tasks", spec.settings.tasks, "list of tasks")):
            try:
                self._dumps(value)
            except Exception as error:
                used = "" if option != "env_fn" or env_fn_given else (
                    " (make_env is used when env_fn is not given)")
                raise ValueError(
                    f"{option}: expected a picklable {what} for backend={self.name!r}, which "
                    f"sends it to each worker{used}: use a module-level function or class, or "
                    f"functools.partial of one; got {describe(value)}, which does not pickle: "
                    f"{error}") from None
        return self._dumps(spec)


# --- the process backend ---------------------------------------------------------------------


def _process_main(conn: connection.Connection, cancelled: Any, spec: bytes,
                  slots: list[int]) -> None:
    """A worker process: build the share, then run jobs until told to close (or orphaned)."""
    # Ctrl-C reaches the whole process group; the runner's process decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Like Ray's workers: a lower priority (nice 15), so that on a busy machine training keeps
    # the CPU and the evaluation takes what is left...
    if hasattr(os, "nice"):
        os.nice(max(0, NICENESS - os.nice(0)))
    # ... and like its 1-CPU actors, one intra-op thread, so that workers and training do not
    # oversubscribe the cores. init_fn may set another number.
    torch.set_num_threads(1)
    episodes, report = _set_up(spec, slots)
    code = 0
    try:
        conn.send(report)
        while episodes is not None:
            message = pickle.loads(conn.recv_bytes())
            if message[0] == "close":
                break
            _, job, weights, version, stream = message
            stop = _JobStop(cancelled, job)
            on_episode = partial(_send_episode, conn, job) if stream else None
            conn.send(_run_job(episodes, job, weights, version, stop, on_episode))
    except (EOFError, OSError):
        pass  # the runner's process is gone
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        if episodes is not None:
            episodes.close()
    # Exit handlers run (init_fn may have registered some), but not the interpreter's
    # teardown, which takes about a second once torch is loaded.
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _send_episode(conn: connection.Connection, job: int, record: EpisodeRecord) -> None:
    conn.send(("episode", job, record))


class _ProcessWorker:
    """The runner's handle on one spawned worker process."""

    def __init__(self, context: Any, index: int, count: int, slots: list[int],
                 spec: bytes) -> None:
        self.index, self.count, self.slots = index, count, slots
        self._killing = threading.Lock()
        self.conn, child = context.Pipe()
        self.cancelled = context.RawValue("q", 0)  # the last job cancelled
        # Not a daemon: a daemonic process could not start the subprocesses of an async vector
        # env. The backend's exit finalizer stops it instead.
        self.process = context.Process(target=_process_main,
                                       args=(child, self.cancelled, spec, slots),
                                       name=f"syllabus-eval-worker-{index}")
        self.process.start()
        child.close()

    def __str__(self) -> str:
        return (f"worker {self.index + 1} of {self.count} (pid {self.process.pid}, env slots "
                f"{self.slots[0]}-{self.slots[-1]})")

    def alive(self) -> bool:
        return self.process.is_alive()

    def submit(self, payload: bytes) -> None:
        with contextlib.suppress(OSError):  # it died: the next poll says so
            self.conn.send_bytes(payload)

    def cancel(self, job: int) -> None:
        self.cancelled.value = job

    def receive(self) -> list[Event]:
        """What it reported, and "died" if it is gone."""
        # Checked first: once it has exited, everything it sent is in the pipe.
        exited = self.process.exitcode is not None
        events: list[Event] = []
        try:
            while self.conn.poll():
                kind, job, data = self.conn.recv()
                events.append((self, kind, job, data))
        except (EOFError, OSError):
            exited = True
        if exited:
            self.process.join(5)
            code = self.process.exitcode
            why = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exit code {code}")
            events.append((self, "died", None, why))
        return events

    def kill(self) -> None:
        """Terminate it (SIGTERM, then SIGKILL), within a few seconds."""
        with self._killing:  # the runner's thread and the exit finalizer may race here
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(2)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(2)
            if not self.conn.closed:  # closing twice would close a reused descriptor
                self.conn.close()


class _ProcessBackend(_PooledBackend):
    """Runs the episodes in ``num_workers`` spawned processes (module docs).

    Each worker runs at nice 15 (Ray's workers too), so that training keeps the CPU it needs,
    and torch with one thread (``init_fn`` may change that). The factories must pickle, so they
    are module-level functions or classes (or ``functools.partial`` of them).
    """

    name = "process"

    def _open(self) -> None:
        # "spawn": a fork of a process that trains (threads, CUDA, locks held) is unsafe.
        self._context = multiprocessing.get_context("spawn")
        # Stop the workers at interpreter exit, before multiprocessing joins its children
        # (which would wait forever for workers nobody closed).
        self._finalizer = multiprocessing.util.Finalize(self, _kill_all, args=(self.workers,),
                                                        exitpriority=10)

    def _start_worker(self, index: int) -> _ProcessWorker:
        return _ProcessWorker(self._context, index, len(self.shares), self.shares[index],
                              self._spec)

    def _poll(self, workers: list[_ProcessWorker], timeout: float) -> list[Event]:
        try:
            ready = set(connection.wait([w.conn for w in workers]
                                        + [w.process.sentinel for w in workers], timeout))
        except OSError:  # the exit finalizer closed a pipe meanwhile: its worker is gone
            ready = {w.conn for w in workers if w.conn.closed}
        events: list[Event] = []
        for worker in workers:
            if worker.conn in ready or worker.process.sentinel in ready:
                events.extend(worker.receive())
        return events

    def _payload(self, job: int, weights: Mapping[str, torch.Tensor] | None,
                 version: int | None, stream: bool) -> bytes:
        return pickle.dumps(("run", job, weights, version, stream),
                            protocol=pickle.HIGHEST_PROTOCOL)

    def _close_workers(self, workers: list[_ProcessWorker]) -> None:
        close = pickle.dumps(("close",))
        for worker in workers:
            worker.submit(close)
        deadline = time.monotonic() + CLOSE_GRACE
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            worker.kill()
