"""Environments that take their task from a curriculum and feed it the stream it learns from.

Usage::

    import gymnasium as gym
    from syllabus_eval.curricula import CurriculumServer, CurriculumWrapper

    # Envs in this process (SyncVectorEnv, or threads): wrap each env around the curriculum.
    envs = gym.vector.SyncVectorEnv(
        [lambda: CurriculumWrapper(gym.make("MyEnv-v0"), plr) for _ in range(8)])

    # Envs in worker processes (AsyncVectorEnv): serve the curriculum from this process and
    # give each wrapper the server's client (the factories carry the client, not the server).
    with CurriculumServer(plr) as server:
        client = server.client
        envs = gym.vector.AsyncVectorEnv(
            [lambda: CurriculumWrapper(gym.make("MyEnv-v0"), client) for _ in range(8)])
        ...
        envs.close()                     # first the envs, so that their last records arrive

At every reset the wrapper draws a task (``curriculum.sample(1)``) and starts the episode with
``env.reset(options={"task": task, ...})``, or, with a ``set_task`` hook, calls
``set_task(env, task)`` first and passes the options through. A ``"task"`` the caller puts in
the reset options is used instead of a draw. ``info["task"]`` carries the task at reset and at
every step. When the curriculum ``wants_experience`` (PLR), the wrapper also sends it one
:class:`~syllabus_eval.curricula.Experience` record per reset, step and close.

Because the wrapper sits on the single env, under the vector env, its stream is the
single-env stream whatever the vector env's autoreset mode. Across processes each env's
client holds a connection to the server (any start method: fork, spawn, forkserver); the
server reads each connection in order on its own thread, answers draws with tasks and hands
records to the curriculum in this process.
"""

from __future__ import annotations

import os
import secrets
import threading
import uuid
from collections.abc import Callable, Hashable
from contextlib import suppress
from functools import partial
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, NamedTuple, SupportsFloat

import gymnasium as gym
import numpy as np

from syllabus_eval.errors import bad_argument, check_count, check_number

from .background import POLL_S, BackgroundThread
from .curriculum import Experience, TaskSource


class CurriculumWrapper(gym.Wrapper):
    """Takes each episode's task from a curriculum and reports the episode back to it.

    Args:
        env: the single environment to wrap.
        curriculum: a curriculum in this process, or :attr:`CurriculumServer.client` for
            envs in other processes (anything with ``sample(k)``, ``observe(experience)`` and
            ``wants_experience``).
        set_task: optional ``set_task(env, task)`` called before each reset, for envs that do
            not read ``options["task"]``; the options then reach the env unchanged.
        env_id: names this env's stream; default: a new unique id.

    :meth:`close` always closes the env, and a curriculum's failure does not stop it: PLR and
    :class:`CurriculumClient` take the ``close`` record without raising one (issue #19), so a
    vector env closes every sub-env. Resets and steps raise the failure (every time: the
    curriculum is broken); closes never do, and if nothing raised it before, the curriculum's
    own ``close()`` (PLR's, or the server's) raises it, once.
    """

    def __init__(self, env: gym.Env, curriculum: TaskSource, *,
                 set_task: Callable[[gym.Env, Any], None] | None = None,
                 env_id: Hashable | None = None) -> None:
        super().__init__(env)
        if not isinstance(curriculum, TaskSource):
            raise bad_argument("curriculum", "a curriculum or a CurriculumServer client "
                               "(sample(k), observe(experience), wants_experience)", curriculum)
        if set_task is not None and not callable(set_task):
            raise bad_argument("set_task", "a callable set_task(env, task) or None", set_task)
        self.curriculum = curriculum
        self.set_task = set_task
        self.env_id = uuid.uuid4().hex if env_id is None else env_id
        self.task: Any = None
        self._streaming = False  # a reset record went out, and no close record yet

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        options = dict(options or {})
        task = options.pop("task") if "task" in options else self.curriculum.sample(1)[0]
        if self.set_task is None:
            options["task"] = task
        else:
            self.set_task(self.env, task)
        obs, info = self.env.reset(seed=seed, options=options or None)
        self.task = task
        if self.curriculum.wants_experience:
            self.curriculum.observe(Experience("reset", self.env_id, task, _snapshot(obs)))
            self._streaming = True
        return obs, {**info, "task": task}

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._streaming:  # once per env step: positional fields, arrays copied inline
            self.curriculum.observe(Experience(
                "step", self.env_id, None, obs.copy() if type(obs) is np.ndarray
                else _snapshot(obs), float(reward), bool(terminated), bool(truncated)))
        return obs, reward, terminated, truncated, {**info, "task": self.task}

    def close(self) -> None:
        """Tell the curriculum the stream ended, then close the env (whatever happened)."""
        try:
            if self._streaming:
                self._streaming = False
                self.curriculum.observe(Experience("close", self.env_id))
        finally:
            super().close()


def _snapshot(obs: Any) -> Any:
    """A copy of array observations: envs may reuse their buffers for the next step."""
    if isinstance(obs, np.ndarray):
        return obs.copy()
    if isinstance(obs, dict):
        return {key: _snapshot(value) for key, value in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_snapshot(value) for value in obs)
    return obs


class _ServerFailed(NamedTuple):
    """The server's reply to a client whose request failed there."""

    message: str


class CurriculumClient:
    """A curriculum's stand-in in other processes: draws and experience go to the server.

    Made by :class:`CurriculumServer` (its :attr:`~CurriculumServer.client`). It pickles as an
    address and a key, so it reaches env processes with any start method (fork, spawn,
    forkserver), inside the env factories; each process connects on first use. Thread-safe.
    """

    def __init__(self, address: Any, authkey: bytes, wants_experience: bool, timeout: float
                 ) -> None:
        self.wants_experience = wants_experience
        self.timeout = timeout
        self._address = address
        self._authkey = authkey
        self._pid: int | None = None  # the process that owns _conn (a forked child does not)
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": None, "_conn": None, "_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def sample(self, k: int = 1) -> list:
        """``k`` tasks drawn by the curriculum in the server's process."""
        check_count("k", k)
        with self._lock:
            conn = self._send(k)
            if not conn.poll(self.timeout):
                raise TimeoutError(f"no task came from the CurriculumServer within "
                                   f"{self.timeout} s")
            try:
                reply = conn.recv()
            except EOFError:
                raise RuntimeError("the CurriculumServer closed the connection: is it "
                                   "closed?") from None
        if isinstance(reply, _ServerFailed):
            raise RuntimeError(reply.message)
        return reply

    def observe(self, experience: Experience) -> None:
        """Send one record to the curriculum (blocks while the server is behind).

        A ``close`` record to a server that is gone is dropped: the env is closing, and
        :meth:`CurriculumServer.close` reports why the server went (raising here would stop a
        vector env's ``close`` at its first sub-env).
        """
        with self._lock:
            try:
                self._send(experience)
            except RuntimeError:
                if experience.kind != "close":
                    raise

    def _send(self, item: int | Experience) -> Connection:
        try:
            if self._conn is None or self._pid != os.getpid():
                self._conn = Client(self._address, authkey=self._authkey)
                self._pid = os.getpid()
            self._conn.send(item)
        except OSError as error:
            raise RuntimeError(f"the CurriculumServer is gone (closed?): {error!r}") from None
        return self._conn


class CurriculumServer:
    """Serves a curriculum in this process to :class:`CurriculumWrapper` s in other processes.

    Args:
        curriculum: the curriculum (``sample``, ``observe``, ``wants_experience``).
        timeout: seconds a client waits for drawn tasks before raising ``TimeoutError``.

    It listens on a local connection (a Unix socket on Linux and macOS) that only holders
    of its client's key can use. One thread accepts clients, one thread per client reads its
    requests in order: draws are answered with tasks from the curriculum, records handed to
    ``curriculum.observe``. A client's sends block while its thread is behind (the OS socket
    buffer bounds what is in flight), so PLR's back-pressure reaches the env processes.
    :meth:`close` (after the envs are closed, so that their last records are in) handles what
    the clients sent, stops the threads and raises the first failure of one, if any; a client
    whose request failed gets a ``RuntimeError`` naming it.
    """

    def __init__(self, curriculum: TaskSource, *, timeout: float = 60.0) -> None:
        if not isinstance(curriculum, TaskSource):
            raise bad_argument("curriculum", "a curriculum (sample(k), observe(experience), "
                               "wants_experience)", curriculum)
        self.curriculum = curriculum
        self._authkey = secrets.token_bytes(32)
        self._listener = Listener(authkey=self._authkey)
        self.client = CurriculumClient(self._listener.address, self._authkey,
                                       bool(curriculum.wants_experience),
                                       check_number("timeout", timeout, 0.0, low_open=True))
        self._closing = False
        self._handlers: list[BackgroundThread] = []
        self._acceptor = BackgroundThread(self._accept, "CurriculumServer")

    def _accept(self) -> None:
        while True:
            conn = self._listener.accept()
            if self._closing:  # the wake-up connection of close()
                conn.close()
                return
            self._handlers.append(BackgroundThread(partial(self._serve, conn),
                                                   "CurriculumServer connection"))

    def _serve(self, conn: Connection) -> None:
        try:
            while True:
                if not conn.poll(POLL_S):
                    if self._closing:
                        return
                    continue
                try:
                    item = conn.recv()
                except EOFError:  # the client's process closed it
                    return
                if isinstance(item, int):
                    conn.send(self.curriculum.sample(item))
                else:
                    self.curriculum.observe(item)
                if self._closing and not conn.poll(0):
                    return
        except BaseException as error:
            with suppress(OSError):
                conn.send(_ServerFailed(f"the CurriculumServer failed: {error!r}"))
            raise
        finally:
            conn.close()

    def check(self) -> None:
        """Raise the first failure of a server thread, if any."""
        for thread in (self._acceptor, *self._handlers):
            thread.check()

    def close(self) -> None:
        """Handle what the clients sent, stop the server threads (idempotent)."""
        if not self._closing:
            self._closing = True
            if self._acceptor.alive:
                Client(self._listener.address, authkey=self._authkey).close()
        try:
            for thread in (self._acceptor, *self._handlers):
                thread.join()
        finally:
            self._listener.close()

    def __enter__(self) -> CurriculumServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
