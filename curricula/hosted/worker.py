"""The worker process of a :class:`~syllabus_eval.curricula.LocalCurriculumServer`: its main
loop and its side of the client connections, and the learner's handle on it.

Usage (what the server does)::

    worker = WorkerProcess(spec, nice=10)        # spawned: builds the curriculum from spec
    address, wants_experience, pid = worker.receive(START_TIMEOUT).unwrap()
    worker.request(("call", "task_scores", (), {}), timeout=60).unwrap()
    worker.request(("close",), timeout=30)       # scores what it has, tells the clients, exits

The worker runs at a lower priority (``nice``) with one torch thread. It reads each client
connection on a thread of its own, in order, and answers the learner on the control pipe; it
exits when told to close or when the learner's process goes (the pipe closes).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from multiprocessing import connection
from typing import Any

import torch

from syllabus_eval.errors import CurriculumError, RemoteFailure
from syllabus_eval.processes import stop_process

from .client import unpack_records
from .host import CurriculumHost, Outcome, attempt
from .weights import SLOTS, SharedWeightsReader

START_TIMEOUT = 300.0  # seconds the worker may take to start (torch import, curriculum_fn)
CLOSE_GRACE = 30.0  # seconds the worker gets to score what it has and stop


# --- the worker process ----------------------------------------------------------------------


def host_main(control: connection.Connection, spec: bytes, authkey: bytes,
               locks: Sequence[Any], nice: int) -> None:
    """The worker: build the curriculum, serve clients, answer the learner until told to
    close or orphaned (the control pipe closes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle
    if hasattr(os, "nice"):
        os.nice(max(0, nice - os.nice(0)))
    torch.set_num_threads(1)  # the learner keeps the cores' intra-op threads
    try:
        host = CurriculumHost.from_spec(spec)
    except BaseException as error:
        control.send(Outcome(failure=RemoteFailure.of(error)))
        _exit(1)
    # What exists now (torch, the curriculum and its agent) lives as long as the process: out
    # of the collector's sight, a full collection no longer walks it (0.3 s of CPU for PLR's
    # worker, taken from the learner's cores).
    gc.freeze()
    listener = _listen(authkey)
    clients = _ClientConnections(host, listener)
    control.send(Outcome((listener.address, host.wants_experience, os.getpid())))
    reader = None  # of the shared weights, once the learner pushes some
    try:
        while True:
            message = control.recv()
            if message[0] == "close":
                break
            if message[0] == "weights":
                _, name, layout = message
                reader = reader or SharedWeightsReader(name, layout, locks)
                shapes = {entry[0]: entry[1] for entry in layout}
                control.send(attempt(host.take_weights, reader.pull, shapes))
            else:  # ("call", name, args, kwargs)
                if message[1] == "flush":  # what reached the sockets first, departures too
                    clients.drain(CLOSE_GRACE / 2)
                control.send(attempt(host.call, *message[1:]))
    except (EOFError, OSError):
        pass  # the learner's process is gone: close and exit
    clients.drain(CLOSE_GRACE / 2)
    outcome = host.close()
    clients.stop()
    with contextlib.suppress(OSError):
        control.send(outcome)
    address = listener.address
    with contextlib.suppress(OSError):
        listener.close()  # unlinks the socket (its exit finalizer would, and complain after us)
    _forget(address)
    _exit(0)


def _listen(authkey: bytes) -> connection.Listener:
    """A listener on a Unix socket in a folder of its own (multiprocessing's default folder is
    the learner's, shared with its other children), where the platform has them."""
    if not hasattr(socket, "AF_UNIX"):
        return connection.Listener(authkey=authkey)
    folder = tempfile.mkdtemp(prefix="syllabus-eval-curriculum-")
    return connection.Listener(os.path.join(folder, "socket"), "AF_UNIX", authkey=authkey)


def _forget(address: Any) -> None:
    """Remove a worker's socket and its folder (by the worker, or by the learner once the
    worker was killed)."""
    if isinstance(address, str) and os.path.basename(os.path.dirname(address)).startswith(
            "syllabus-eval-curriculum-"):
        with contextlib.suppress(OSError):
            os.unlink(address)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(address))


def _exit(code: int) -> None:
    # Exit handlers run, not the interpreter's teardown (a second once torch is loaded).
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class _ClientConnections:
    """The worker's side of the clients: a thread per client connection, reading its messages
    in order. A client whose process goes away has its open streams closed (scored as
    truncated); a failure of the curriculum is told to every client at once."""

    def __init__(self, host: CurriculumHost, listener: connection.Listener) -> None:
        self.host, self.listener = host, listener
        # connection -> its lock, held while a message of it is handled or replied to
        self.connections: dict[connection.Connection, threading.Lock] = {}
        self._lock = threading.Lock()
        self._told = False
        self.stopping = False
        threading.Thread(target=self._accept, name="curriculum host", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except (OSError, EOFError, connection.AuthenticationError):
                if self.stopping:
                    return  # the listener is closing
                continue  # a client that failed the handshake
            with self._lock:
                self.connections[conn] = threading.Lock()
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="curriculum host connection").start()

    def _serve(self, conn: connection.Connection) -> None:
        open_envs: set = set()
        lock = self.connections[conn]
        try:
            while True:
                conn.poll(None)  # wait without the lock, so that drain() can look in between
                with lock:
                    message = conn.recv()
                    if message[0] == "sync":
                        self._send(conn, message)
                    else:
                        self._exchange(conn, message, open_envs)
        except (EOFError, OSError):
            pass  # the client's process closed the connection, or died
        finally:
            with self._lock:
                self.connections.pop(conn, None)
            self.host.abandon(open_envs)
            conn.close()

    def _exchange(self, conn: connection.Connection, message: tuple, open_envs: set) -> None:
        _, packed, draws = message  # ("exchange", packed records, draws)
        try:
            tasks = self.host.exchange(unpack_records(packed), draws, open_envs)
        except Exception as error:
            self._send(conn, ("failed", f"the hosted curriculum failed: {error!r}"))
            if self.host.failure is not None:
                threading.Thread(target=self._tell_everyone, daemon=True).start()
            return
        if draws:
            self._send(conn, ("tasks", tasks))

    @staticmethod
    def _send(conn: connection.Connection, message: tuple) -> None:
        with contextlib.suppress(OSError):
            conn.send(message)

    def _tell_everyone(self) -> None:
        with self._lock:
            if self._told:
                return
            self._told = True
            connections = list(self.connections.items())
        message = ("failed", f"the hosted curriculum failed: {self.host.failure.summary}")
        for conn, lock in connections:
            with lock:
                self._send(conn, message)

    def drain(self, timeout: float) -> None:
        """Wait until every message the clients sent so far has been handled (their envs
        closed before the server: their last records are in the sockets)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            connections = list(self.connections.items())
        for conn, lock in connections:
            while time.monotonic() < deadline:
                with lock:
                    try:
                        if conn.closed or not conn.poll(0):
                            break
                    except OSError:
                        break
                time.sleep(0.005)

    def stop(self) -> None:
        """Tell every client the curriculum closed (their envs raise from then on)."""
        self.stopping = True
        with self._lock:
            connections = list(self.connections.items())
        for conn, lock in connections:
            with lock:
                self._send(conn, ("closing",))


class WorkerProcess:
    """The learner's handle on the spawned worker: its process, control pipe and locks."""

    def __init__(self, spec: bytes, nice: int) -> None:
        # "spawn": a fork of a process that trains (threads, CUDA, locks held) is unsafe.
        context = multiprocessing.get_context("spawn")
        self.locks = [context.Lock() for _ in range(SLOTS)]
        self.authkey = secrets.token_bytes(32)
        self.conn, child = context.Pipe()
        self.process = context.Process(target=host_main, name="syllabus-eval-curriculum",
                                       args=(child, spec, self.authkey, self.locks, nice))
        self.process.start()
        child.close()
        self._lock = threading.Lock()  # one request at a time on the pipe
        self.address: Any = None  # the worker's socket, once it is ready

    def request(self, message: tuple, timeout: float | None) -> Outcome:
        with self._lock:
            try:
                self.conn.send(message)
            except OSError:
                raise self.died() from None
            return self.receive(timeout)

    def ready(self, timeout: float) -> tuple[Any, bool, int]:
        """Wait for the worker to start: its socket address, whether its curriculum wants
        experience, its pid (raises what building the curriculum raised)."""
        self.address, wants_experience, pid = self.receive(timeout).unwrap()
        return self.address, wants_experience, pid

    def receive(self, timeout: float | None) -> Outcome:
        ready = connection.wait([self.conn, self.process.sentinel], timeout)
        if self.conn in ready:
            with contextlib.suppress(EOFError, OSError):
                return self.conn.recv()
        if ready:
            raise self.died()
        raise TimeoutError(f"the curriculum's worker process did not answer within {timeout} s")

    def died(self) -> CurriculumError:
        self.process.join(1)
        code = self.process.exitcode
        why = ("is still running" if code is None
               else f"was killed by {signal.Signals(-code).name}" if code < 0
               else f"exited with code {code}")
        return CurriculumError(f"the curriculum's worker process (pid {self.process.pid}) "
                               f"{why}: its curriculum is gone")

    def kill(self, grace: float = 0.0) -> None:
        self.process.join(grace)  # a worker that was told to close exits by itself
        stop_process(self.process)
        with contextlib.suppress(OSError):
            self.conn.close()
        if not self.process.is_alive():
            _forget(self.address)  # a worker that was killed left them behind
