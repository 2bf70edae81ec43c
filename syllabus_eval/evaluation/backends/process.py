"""The ``"process"`` backend: evaluation in spawned worker processes, without Ray.

Usage::

    runner = EvalRunner(EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=8),
                        CleanRLEvaluator(agent), num_episodes=40,
                        backend=ProcessBackend(num_workers=2, max_restarts=2, timeout=600))
    runner.trigger_eval(agent, step=step)    # one copy into shared memory, read by the workers

Shares, restarts, timeouts and errors work as :mod:`.pool` describes.
The workers get the runner's evaluator (its private copy, pickled once) or build their own with
``evaluator_fn``; the factories travel with cloudpickle, as Gymnasium's ``AsyncVectorEnv``
sends env factories: lambdas and closures work, and carry what they capture with them (capture
no training agent or open env, which would be copied or refused). Workers are spawned (a fork
of a process that trains, with its threads, CUDA and locks, is unsafe), so a script that uses
them needs the ``if __name__ == "__main__":`` guard: without it the backend refuses to start
(a worker would run the script again), as :mod:`.main_guard` tells.

**Weights** go through shared memory (:mod:`.shared`): one buffer the
size of the agent's state dict, handed to each worker when it is spawned. A trigger copies the
training weights into it (one copy, on the training thread; nothing is pickled) and the job
order carries a two-integer ticket; each worker copies the weights from it into its own agent,
checking the buffer's sequence number before and after. The buffer is held until the
evaluation ends; a trigger queued behind a running evaluation (``busy_policy="queue"``) takes
a private copy, pickled to the workers. Without an evaluator (``evaluator_fn`` only) the
weights' layout is unknown in advance and every snapshot travels pickled.

**Priority.** Process workers run at nice 15 with one torch thread, as Ray runs its workers:
on a busy machine training keeps the CPU it needs and evaluations take what is left.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from functools import partial
from multiprocessing import connection
from typing import Any

import torch

from syllabus_eval.evaluation.backends.main_guard import unguarded_main
from syllabus_eval.evaluation.backends.pool import CLOSE_GRACE, PooledBackend, kill_all
from syllabus_eval.evaluation.backends.shared import SharedWeights
from syllabus_eval.evaluation.backends.workers import (
    Event,
    EventKind,
    JobOrder,
    JobStop,
    run_job,
    set_up,
)
from syllabus_eval.evaluation.snapshot import Snapshot, take_snapshot
from syllabus_eval.processes import stop_process
from syllabus_eval.query.protocols import AgentQueries, WeightedAgentQueries
from syllabus_eval.rollout import EnvSpec, EpisodeRecord, RolloutSettings

NICENESS = 15  # of worker processes, as Ray's (its worker_niceness)


def _process_main(conn: connection.Connection, cancelled: Any, spec: bytes,
                  slots: list[int], shared: SharedWeights | None) -> None:
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
    episodes, report = set_up(spec, slots)
    code = 0
    try:
        conn.send(report)
        while episodes is not None:
            order: JobOrder | None = pickle.loads(conn.recv_bytes())
            if order is None:  # close
                break
            stop = JobStop(cancelled, order.job)
            on_episode = partial(_send_episode, conn, order.job) if order.stream else None
            conn.send(run_job(episodes, order, stop, on_episode, shared))
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
    """An episode that ended, for the runner's progress (the loop attaches clips later)."""
    conn.send(Event(EventKind.EPISODE, job, record))


def _lower_priority(pid: int | None) -> None:
    """Nice 15 from the start: the worker sets it itself only after its imports (torch:
    seconds of CPU), which would otherwise compete with training at full priority."""
    if pid is None or not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):  # already nicer, or not allowed: the worker's own try
        os.setpriority(os.PRIO_PROCESS, pid, max(NICENESS, os.getpriority(os.PRIO_PROCESS, 0)))


class _ProcessWorker:
    """The runner's handle on one spawned worker process."""

    def __init__(self, context: Any, index: int, count: int, slots: list[int],
                 spec: bytes, shared: SharedWeights | None) -> None:
        self.index, self.count, self.slots = index, count, slots
        self._killing = threading.Lock()
        self.conn, child = context.Pipe()
        self.cancelled = context.RawValue("q", 0)  # the last job cancelled
        # Not a daemon: a daemonic process could not start the subprocesses of an async vector
        # env. The backend's exit finalizer stops it instead.
        self.process = context.Process(target=_process_main,
                                       # The shared buffer goes as a file descriptor.
                                       args=(child, self.cancelled, spec, slots, shared),
                                       name=f"syllabus-eval-worker-{index}")
        self.process.start()
        child.close()
        _lower_priority(self.process.pid)

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

    def receive(self) -> list[tuple[_ProcessWorker, Event]]:
        """What it reported, and DIED if it is gone."""
        # Checked first: once it has exited, everything it sent is in the pipe.
        exited = self.process.exitcode is not None
        events: list[tuple[_ProcessWorker, Event]] = []
        try:
            while self.conn.poll():
                events.append((self, self.conn.recv()))
        except (EOFError, OSError):
            exited = True
        if exited:
            self.process.join(5)
            code = self.process.exitcode
            why = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exit code {code}")
            events.append((self, Event(EventKind.DIED, None, why)))
        return events

    def kill(self) -> None:
        """Terminate it (SIGTERM, then SIGKILL), within a few seconds."""
        with self._killing:  # the runner's thread and the exit finalizer may race here
            stop_process(self.process)
            if not self.conn.closed:  # closing twice would close a reused descriptor
                self.conn.close()


class ProcessEngine(PooledBackend):
    """Runs the episodes in ``num_workers`` spawned processes (module docs).

    Each worker runs at nice 15 (Ray's workers too), so that training keeps the CPU it needs,
    and torch with one thread (``init_fn`` may change that). The factories are sent with
    cloudpickle: functions, lambdas and closures, with what they capture; without
    ``evaluator_fn``, the evaluator's private copy. Weights go through shared memory.
    """

    name = "process"

    def __init__(self, envs: EnvSpec, evaluator: AgentQueries | None,
                 plan: tuple[RolloutSettings, ...], *, start_workers: bool = True,
                 **options: Any) -> None:
        if start_workers:
            # Spawned now: refuse before a worker runs the script again (main_guard docs).
            script = unguarded_main()
            if script is not None:
                raise ValueError(
                    f"backend: 'process' spawns workers, which run the main script again "
                    f"before they start: expected {script} to keep its training code under "
                    "`if __name__ == \"__main__\":`, got a script whose code runs without "
                    "it; add the guard, or use backend='thread' (or the default, which then "
                    "stays in this process)")
        # The layout of the shared weights: the evaluator's agent (none without an evaluator:
        # the weights then travel pickled, as their shapes are unknown until a trigger).
        self._layout_agent = (evaluator.agent if isinstance(evaluator, WeightedAgentQueries)
                              else None)
        super().__init__(envs, evaluator, plan, start_workers=start_workers, **options)

    def _open(self) -> None:
        # "spawn": a fork of a process that trains (threads, CUDA, locks held) is unsafe.
        self._context = multiprocessing.get_context("spawn")
        self.shared = SharedWeights.for_agent(self._layout_agent)
        self._layout_agent = None
        # Stop the workers at interpreter exit, before multiprocessing joins its children
        # (which would wait forever for workers nobody closed).
        self._finalizer = multiprocessing.util.Finalize(self, kill_all, args=(self.workers,),
                                                        exitpriority=10)

    def snapshot(self, evaluator: AgentQueries | None, weights: Any, step: int | None = None,
                 obs_norm: Any = None, *, background: bool = False) -> Snapshot:
        # Straight into shared memory when it is free: one copy, nothing pickled.
        return take_snapshot(evaluator, weights, self.weights_device, step, obs_norm,
                             shared=self.shared)

    def release(self, snapshot: Snapshot) -> None:
        if snapshot.shared is not None and self.shared is not None:
            self.shared.release(snapshot.shared)

    def _start_worker(self, index: int) -> _ProcessWorker:
        return _ProcessWorker(self._context, index, len(self.shares), self.shares[index],
                              self._spec, self.shared)

    def _poll(self, workers: list[_ProcessWorker], timeout: float
              ) -> list[tuple[_ProcessWorker, Event]]:
        try:
            ready = set(connection.wait([w.conn for w in workers]
                                        + [w.process.sentinel for w in workers], timeout))
        except OSError:  # the exit finalizer closed a pipe meanwhile: its worker is gone
            ready = {w.conn for w in workers if w.conn.closed}
        events: list[tuple[_ProcessWorker, Event]] = []
        for worker in workers:
            if worker.conn in ready or worker.process.sentinel in ready:
                events.extend(worker.receive())
        return events

    def _payload(self, order: JobOrder) -> bytes:
        if order.snapshot.shared is not None:  # workers read the weights from shared memory
            order = dataclasses.replace(order, snapshot=dataclasses.replace(order.snapshot,
                                                                            weights=None))
        return pickle.dumps(order, protocol=pickle.HIGHEST_PROTOCOL)

    def _close_workers(self, workers: list[_ProcessWorker]) -> None:
        close = pickle.dumps(None)
        for worker in workers:
            worker.submit(close)
        deadline = time.monotonic() + CLOSE_GRACE
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            worker.kill()

    def _disconnect(self) -> None:
        if self.shared is not None:  # the workers are gone: the memory goes with this copy
            self.shared.close()
