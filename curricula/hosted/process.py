"""A curriculum hosted in a worker process on this machine (or, optionally, in this process).

Usage::

    import gymnasium as gym
    from syllabus_eval.adapters import CleanRLEvaluator
    from syllabus_eval.curricula import (CurriculumWrapper, LocalCurriculumServer,
                                         PrioritizedLevelReplay)

    def make_plr():                       # runs in the worker process: its own agent copy
        return PrioritizedLevelReplay(tasks, CleanRLEvaluator(Agent(spec)), seed=0)

    if __name__ == "__main__":            # the worker is spawned
        with LocalCurriculumServer(make_plr, agent=agent) as server:
            envs = gym.vector.SyncVectorEnv(      # or AsyncVectorEnv: the client travels
                [lambda: CurriculumWrapper(make_env(), server.client)] * 4)
            ...                           # train: each optimizer step's weights reach PLR
            envs.close()
            print(server.task_scores())

The curriculum is built in a spawned process from ``curriculum_fn`` (sent with cloudpickle),
which runs at a lower priority (``nice``) with one torch thread, so that its scoring takes the
CPU training leaves. Experience reaches it in batches over a local socket per client process
(the OS buffer bounds what is in flight; a full PLR queue holds the sender back). Weights
travel through shared memory (:mod:`~syllabus_eval.curricula.hosted.weights`): with
``agent=``, after every optimizer step on the agent (copied on the training thread, in the
step's post-hook), and on :meth:`~HostedServer.load_weights`; PLR loads the newest before each
batch it scores, so it scores with the weights of the last finished step, or of the one before
while a step runs, never a mix. ``process=False`` hosts the curriculum in this process instead
(today's in-process worker thread, behind the same interface; ``server.client`` is then the
curriculum itself).
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import connection
from typing import Any

import torch
from torch import nn

from syllabus_eval.errors import CurriculumError, bad_argument, check_count

from .client import HostedClient, Link, pack_records
from .host import CurriculumHost, HostedServer, pack_factories
from .weights import SharedWeightsWriter, StepFollower, WeightsInbox, layout_of
from .worker import CLOSE_GRACE, START_TIMEOUT, WorkerProcess

NICENESS = 10  # of the worker process, by default: below training, not starved by it


# --- the client ------------------------------------------------------------------------------

_GONE = ("the curriculum's worker process is gone (it died, or its server was closed): "
         "the connection to it closed")


class _ProcessLink(Link):
    """One process's socket to the worker: sends in the caller's thread, a daemon thread
    reading replies (tasks, sync marks, failures, the close)."""

    def __init__(self, client: LocalCurriculumClient) -> None:
        super().__init__(client)
        try:
            self.conn = connection.Client(client.address, authkey=client.authkey)
        except OSError as error:
            raise CurriculumError(f"{_GONE}: {error!r}") from None
        self.synced = self.sync_sent = 0
        self.reader = threading.Thread(target=self._read, daemon=True,
                                       name="hosted curriculum client")
        self.reader.start()

    def _send(self, fields: list, draws: int) -> None:
        # Plain pickle: multiprocessing's pickler copies its reducer table (torch registers
        # dozens) at every send, on the training thread; the worker's recv unpickles it alike.
        message = pickle.dumps(("exchange", pack_records(fields), draws),
                               protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.conn.send_bytes(message)
        except (OSError, ValueError):
            raise self.fail(_GONE) from None

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                self.fail(_GONE)
                return
            kind = message[0]
            if kind == "tasks":
                self.deliver(message[1])
            elif kind == "sync":
                with self.cond:
                    self.synced = message[1]
                    self.cond.notify_all()
            elif kind == "failed":
                self.fail(message[1])
            else:  # "closing"
                self.fail("the hosted curriculum was closed (server.close())")
                return

    def _await_tasks(self, k: int, deadline: float) -> None:
        with self.cond:
            came = self.cond.wait_for(
                lambda: len(self.tasks) >= k or self.asked == 0 or self.failure is not None,
                max(0.0, deadline - time.monotonic()))
        if not came:
            raise TimeoutError(f"no task came from the hosted curriculum within "
                               f"{self.timeout} s")

    def _sync(self, timeout: float) -> None:
        with self.send_lock:
            self.sync_sent += 1
            mark = self.sync_sent
            try:
                self.conn.send(("sync", mark))
            except (OSError, ValueError):
                raise self.fail(_GONE) from None
        with self.cond:
            if not self.cond.wait_for(lambda: self.synced >= mark or self.failure is not None,
                                      timeout):
                raise TimeoutError(f"flush: the hosted curriculum did not take the records "
                                   f"within {timeout} s")

    def _stop(self) -> None:
        # Shutting the socket down wakes the reader's recv (closing the fd would not).
        with contextlib.suppress(OSError):
            socket.socket(fileno=os.dup(self.conn.fileno())).shutdown(socket.SHUT_RDWR)
        if self.reader is not threading.current_thread():
            self.reader.join(5)
        with contextlib.suppress(OSError):
            self.conn.close()


class LocalCurriculumClient(HostedClient):
    """:class:`LocalCurriculumServer`'s client: the worker's socket address and key."""

    def __init__(self, address: Any, authkey: bytes, wants_experience: bool, **settings: Any
                 ) -> None:
        super().__init__(wants_experience, **settings)
        self.address, self.authkey = address, authkey

    def _connect(self) -> Link:
        return _ProcessLink(self)


# --- the learner's side ----------------------------------------------------------------------


def _release(worker: WorkerProcess | None, weights: list, grace: list) -> None:
    """At close, at garbage collection or at exit: no process or shared memory left behind."""
    if worker is not None:
        worker.kill(grace[0])
    for writer in weights:
        writer.unlink()
    weights.clear()


class LocalCurriculumServer(HostedServer):
    """A curriculum built by ``curriculum_fn`` in a worker process on this machine (module docs).

    Args:
        curriculum_fn: builds the curriculum there (e.g. PLR with its own evaluator, built on
            a fresh agent whose weights the pushes replace); sent with cloudpickle.
        agent: the training agent; its weights are pushed after every optimizer step on it.
            ``None``: push them with :meth:`load_weights`.
        process: ``False`` builds the curriculum in this process (a thread scores, as with
            PLR itself); the interface and the weight pushes stay the same.
        init_fn: runs first in the worker (env variables, imports).
        batch_records, prefetch, max_delay, timeout: the client's batching, draws ahead and
            waits (:mod:`~syllabus_eval.curricula.hosted.client`). Large batches by default:
            the worker wakes less often and scores each batch with warm caches (its CPU per
            step fell from 22.8 to 9.8 us going from 64 to 256 records and to 6.5 us at
            2,048); a record waits at most ``max_delay`` seconds to be shipped.
        nice: the worker's niceness (0 to 19): higher leaves more CPU to training.

    :meth:`close` (or leaving the ``with`` block; after the envs are closed) ships this
    process's buffered records, has the curriculum score them and stop, keeps its final
    ``task_scores``/``scored_steps``/``distribution``, and ends the worker; the worker also
    ends at garbage collection, at interpreter exit, and when this process dies.
    """

    def __init__(self, curriculum_fn: Callable[[], Any], *, agent: nn.Module | None = None,
                 process: bool = True, init_fn: Callable[[], Any] | None = None,
                 batch_records: int = 1024, prefetch: int = 32, max_delay: float = 0.5,
                 timeout: float = 60.0, nice: int = NICENESS) -> None:
        super().__init__()
        if agent is not None and not isinstance(agent, nn.Module):
            raise bad_argument("agent", "the training agent (an nn.Module) or None", agent)
        if not isinstance(process, bool):
            raise bad_argument("process", "True or False", process)
        settings = {"batch_records": batch_records, "prefetch": prefetch,
                    "max_delay": max_delay, "timeout": timeout}
        HostedClient(False, **settings)  # checks them before anything starts
        self.timeout = timeout
        self._writers: list[SharedWeightsWriter] = []
        self._worker: WorkerProcess | None = None
        self.pid: int | None = None  # the worker's
        self._local: CurriculumHost | None = None
        self._inbox = WeightsInbox()
        self._follower: StepFollower | None = None
        self._follower_state: Mapping[str, torch.Tensor] | None = None
        self._following = False  # process=False: the curriculum pulls from the inbox
        self._push_lock = threading.Lock()
        spec = pack_factories(curriculum_fn, init_fn)
        if process:
            self._start(spec, check_count("nice", nice, 0), settings)
        else:
            self._local = CurriculumHost.from_spec(spec)
            self.client = self._local.curriculum
        self._grace = [0.0]  # seconds the worker gets to exit by itself: set by close()
        self._finalizer = multiprocessing.util.Finalize(
            self, _release, args=(self._worker, self._writers, self._grace), exitpriority=10)
        if agent is not None:
            self._follower = StepFollower(agent, self._push)
            self._follower_state = self._follower.state
            try:
                self._follower.push_now()
            except BaseException:
                self._abort()
                raise

    def _start(self, spec: bytes, nice: int, settings: dict[str, Any]) -> None:
        worker = self._worker = WorkerProcess(spec, min(nice, 19))
        try:
            address, wants_experience, self.pid = worker.ready(START_TIMEOUT)
        except BaseException:
            worker.kill()
            raise
        self.client = LocalCurriculumClient(address, worker.authkey, wants_experience,
                                            **settings)

    # --- weights ---------------------------------------------------------------------------------

    def _push(self, state: Mapping[str, torch.Tensor], version: int | None) -> None:
        """Hand ``state`` to the scorer: into shared memory, or this process's inbox."""
        with self._push_lock:  # the training thread's steps and load_weights may meet here
            self._push_now(state, version)

    def _push_now(self, state: Mapping[str, torch.Tensor], version: int | None) -> None:
        if self._local is not None:
            if not self._following:
                self._local.take_weights(self._inbox.pull, {name: tuple(t.shape)
                                                            for name, t in state.items()})
                self._following = True
            self._inbox.put({name: t.detach().to("cpu", copy=True)
                             for name, t in state.items()}, version)
            return
        if not self._writers:
            self._attach(layout_of(state))
        elif state is not self._follower_state and layout_of(state) != self._writers[0].layout:
            raise bad_argument("weights", f"the layout of the first weights pushed "
                               f"({len(self._writers[0].layout)} tensors)", state)
        self._writers[0].write(state.values(), version)

    def _attach(self, layout: list) -> None:
        writer = SharedWeightsWriter(layout, self._worker.locks)
        try:
            try:
                outcome = self._worker.request(("weights", writer.name, layout), self.timeout)
            except CurriculumError as error:
                raise self._host_gone(error) from None
            outcome.unwrap()
        except BaseException:
            writer.unlink()
            raise
        self._writers.append(writer)

    # --- calls and close -------------------------------------------------------------------------

    def _call(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              timeout: float | None) -> Any:
        if self._local is not None:
            return self._local.call(name, args, kwargs)
        wait = None if timeout is None and name == "flush" else (
            self.timeout if timeout is None else timeout + self.timeout)
        try:
            outcome = self._worker.request(("call", name, tuple(args), dict(kwargs)), wait)
        except CurriculumError as error:
            raise self._host_gone(error) from None
        return outcome.unwrap()

    def close(self) -> None:
        """Score what was observed, keep the final tables, end the worker (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._follower is not None:
            self._follower.close()
        if self._local is not None:
            self._finish(self._local.close(), None)
            return
        with contextlib.suppress(Exception):  # a dead worker: told below
            self.client.flush()
        try:
            outcome, error = self._close_host(lambda: self._worker.request(("close",),
                                                                         CLOSE_GRACE))
            self._grace[0] = 5.0
        finally:
            self._close_client()
            self._abort()
        self._finish(outcome, error)

    def _abort(self) -> None:
        self._finalizer()  # kills the worker if still there, unlinks the shared memory

    def __enter__(self) -> LocalCurriculumServer:
        return self
