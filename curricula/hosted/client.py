"""The env side of a hosted curriculum: batched experience, prefetched draws, failures surfaced.

Usage (what :class:`~syllabus_eval.curricula.CurriculumWrapper` does with a server's client)::

    client = server.client                       # picklable: goes to env processes and actors
    task = client.sample(1)[0]                   # from the tasks drawn ahead: no round trip
    client.observe(Experience("step", env_id, obs=obs, reward=1.0))   # buffered
    client.flush()                               # ship the buffer, wait until it is observed

**Batches.** A client buffers records and ships them in one message every ``batch_records``
records, when its oldest buffered record is ``max_delay`` seconds old (checked at its next
record), and on :meth:`HostedClient.flush`; at every ``close`` record it ships and waits until
the host has taken everything (an env process may exit next). A ship waits while the host is
behind (its curriculum's queue full): back-pressure, never loss.

**Draws ahead.** A client keeps up to ``prefetch`` tasks drawn ahead and asks for more, with
its next ship, once half are used: a reset costs no round trip. How stale a draw can be: a
task is drawn at most ``prefetch`` draws of this client (the resets of the envs sharing it)
before it is played, from the curriculum's distribution as it was then (PLR counts its
staleness at the draw). ``prefetch=0`` draws every task at its reset (a round trip each).

**Failures.** A failure of the curriculum (PLR's worker), a host that died or closed, or a
batch the host refused makes every later reset, step and draw of every env that uses the
client raise :class:`~syllabus_eval.CurriculumError` naming it; ``close`` records never raise,
so a vector env still closes all its envs. Each process (env worker, Ray actor) holds its own
connection, made on first use; several envs (threads) may share one client.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from syllabus_eval.errors import CurriculumError, bad_argument, check_count, check_number

from ..curriculum import EXPERIENCE_KINDS, Experience

_connecting = threading.Lock()
# This process's id, kept here: a record's path compares it with its link's owner, and a
# getpid() call per env step would cost the training thread more than the comparison.
_pid = os.getpid()
os.register_at_fork(after_in_child=lambda: globals().update(_connecting=threading.Lock(),
                                                            _pid=os.getpid()))


FIELDS = len(Experience._fields)  # a record's fields in a buffer of fields


def pack_records(fields: list) -> tuple:
    """Buffered records as columns, for one cheap pickle.

    ``fields`` holds the records' fields one after the other (``FIELDS`` per record, in
    :class:`Experience`'s order), as :class:`Link` buffers them. The observations of a batch
    go as one array where they are arrays of one shape and dtype (pickling each record's
    array cost 4x more, on the training thread).
    """
    kinds = "".join([kind[0] for kind in fields[0::FIELDS]])
    obs = fields[3::FIELDS]
    if "c" in kinds:  # close records carry no observation
        obs = [o for kind, o in zip(kinds, obs) if kind != "c"]
    first = obs[0] if obs else None
    if type(first) is np.ndarray:
        shape, dtype = first.shape, first.dtype
        if all([type(o) is np.ndarray and o.shape == shape and o.dtype == dtype for o in obs]):
            obs = np.array(obs)  # [B, ...]: several times faster than np.stack
    return (kinds, fields[1::FIELDS], fields[2::FIELDS], obs,
            np.array(fields[4::FIELDS], dtype=np.float64),
            np.array(fields[5::FIELDS], dtype=bool), np.array(fields[6::FIELDS], dtype=bool))


_KINDS = {kind[0]: kind for kind in EXPERIENCE_KINDS}


def unpack_records(packed: tuple) -> list[Experience]:
    """The records :func:`pack_records` packed, in order."""
    kinds, env_ids, tasks, obs, rewards, terminated, truncated = packed
    records, row = [], 0
    rewards, terminated, truncated = rewards.tolist(), terminated.tolist(), truncated.tolist()
    for i, letter in enumerate(kinds):
        kind = _KINDS[letter]
        if kind == "close":
            records.append(Experience(kind, env_ids[i]))
            continue
        records.append(Experience(kind, env_ids[i], tasks[i], obs[row], rewards[i],
                                  terminated[i], truncated[i]))
        row += 1
    return records


class Link:
    """One process's connection to the host, and the buffers around it (shared logic; the
    transports implement :meth:`_send`, :meth:`_await_tasks`, :meth:`_sync`, :meth:`_stop`).

    ``send_lock`` orders ships (a batch is taken and sent under it); ``cond`` guards the
    buffers and is never held while sending, so replies are taken while a ship waits. The
    record path, once per env step on the training thread, holds ``cond``'s lock itself: the
    same exclusion without the condition's Python-level enter and exit.

    Records are buffered as their fields in one flat list, not as the records themselves: a
    record is a tuple the garbage collector tracks, and a thousand of them held at a time
    set off the full collections that cost a torch process a tenth of a second each (the
    fields, strings, numbers and arrays, are not tracked).
    """

    def __init__(self, client: HostedClient) -> None:
        self.pid = _pid
        self.batch_fields, self.prefetch = client.batch_records * FIELDS, client.prefetch
        self.max_delay, self.timeout = client.max_delay, client.timeout
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.send_lock = threading.Lock()
        self.fields: list = []  # the buffered records' fields, FIELDS per record
        self.first_at = 0.0  # when the oldest buffered record came
        self.tasks: deque = deque()  # drawn ahead
        self.asked = 0  # draws asked for and not answered yet
        self.failure: str | None = None

    # --- the client's calls --------------------------------------------------------------------

    def observe(self, experience: Experience) -> None:
        if experience.kind == "close":
            self._observe_close(experience)
            return
        with self.lock:
            if self.failure is not None:
                raise CurriculumError(self.failure)
            fields = self.fields
            fields.extend(experience)
            now = time.monotonic()
            if len(fields) == FIELDS:
                self.first_at = now
            due = (len(fields) >= self.batch_fields
                   or now - self.first_at >= self.max_delay)
        if due:
            self.ship(0)

    def _observe_close(self, experience: Experience) -> None:
        with self.lock:
            if self.failure is not None:
                return  # the env is going away; the failure is reported elsewhere
            self.fields.extend(experience)
        # The env may be in a process about to exit: wait until the host took it all.
        with contextlib.suppress(CurriculumError, TimeoutError):
            self.flush(None)

    def sample(self, k: int) -> list:
        deadline = time.monotonic() + self.timeout
        while True:
            with self.cond:
                self.raise_failure()
                have = len(self.tasks)
                if have >= k:
                    drawn = [self.tasks.popleft() for _ in range(k)]
                    ahead = have - k + self.asked
                    refill = self.prefetch - ahead if ahead <= self.prefetch // 2 else 0
                    break
                want = k + self.prefetch - have - self.asked
            if want > 0:
                self.ship(want)
            self._await_tasks(k, deadline)
        if refill > 0:
            self.ship(refill)  # with the records buffered meanwhile
        return drawn

    def ship(self, draws: int, quiet: bool = False) -> None:
        """Send the buffered records (and a request for ``draws`` tasks), in order."""
        with self.send_lock:
            with self.cond:
                fields, self.fields = self.fields, []
                if self.failure is not None:
                    if quiet:
                        return
                    raise CurriculumError(self.failure)
                self.asked += draws
            if not fields and not draws:
                return
            try:
                self._send(fields, draws)
            except (CurriculumError, TimeoutError):
                if not quiet:
                    raise

    def flush(self, timeout: float | None) -> None:
        self.ship(0)
        self._sync(self.timeout if timeout is None else timeout)
        with self.cond:
            self.raise_failure()

    def close(self) -> None:
        try:
            self.ship(0, quiet=True)
        finally:
            self.fail("the client was closed")
            self._stop()

    # --- replies and failures ------------------------------------------------------------------

    def deliver(self, tasks: list) -> None:
        with self.cond:
            self.tasks.extend(tasks)
            self.asked = max(0, self.asked - len(tasks))
            self.cond.notify_all()

    def fail(self, message: str) -> CurriculumError:
        """Mark the link failed (the first reason stays); the error to raise."""
        with self.cond:
            if self.failure is None:
                self.failure = message
            self.cond.notify_all()
            return CurriculumError(self.failure)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise CurriculumError(self.failure)

    # --- the transport ---------------------------------------------------------------------------

    def _send(self, fields: list, draws: int) -> None:
        """Deliver one batch (its records' fields, for :func:`pack_records`) and a draw
        request, after those sent before (``send_lock`` is held); may block while the host is
        behind. Raise ``self.fail(...)`` if it cannot."""
        raise NotImplementedError

    def _await_tasks(self, k: int, deadline: float) -> None:
        """Wait until asked-for tasks came (``k`` of them, or all asked, or a failure);
        ``TimeoutError`` after ``deadline``."""
        raise NotImplementedError

    def _sync(self, timeout: float) -> None:
        """Wait until the host handed everything sent so far to the curriculum."""
        raise NotImplementedError

    def _stop(self) -> None:
        """Let go of the connection and stop this link's thread."""


class HostedClient:
    """A hosted curriculum's stand-in where envs run (module docs); the servers make them.

    It pickles as its settings and the host's address, so it reaches env processes (any start
    method) and Ray actors inside env factories; each process connects on first use.
    """

    def __init__(self, wants_experience: bool, *, batch_records: int = 256, prefetch: int = 32,
                 max_delay: float = 0.5, timeout: float = 60.0) -> None:
        self.wants_experience = bool(wants_experience)
        self.batch_records = check_count("batch_records", batch_records)
        self.prefetch = check_count("prefetch", prefetch, 0)
        self.max_delay = check_number("max_delay", max_delay, 0.0)
        self.timeout = check_number("timeout", timeout, 0.0, low_open=True)
        self._link: Link | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_link": None}

    def sample(self, k: int = 1) -> list:
        """``k`` tasks drawn by the hosted curriculum (from those drawn ahead, if any)."""
        check_count("k", k)
        return self._here().sample(k)

    def observe(self, experience: Experience) -> None:
        """Buffer one record for the curriculum (module docs); ``close`` records never raise."""
        if not isinstance(experience, Experience):
            raise bad_argument("experience", "an Experience record", experience)
        if experience.kind not in EXPERIENCE_KINDS:
            raise bad_argument("experience.kind", f"one of {list(EXPERIENCE_KINDS)}",
                               experience.kind)
        link = self._link
        if link is None or link.pid != _pid:
            try:
                link = self._here()
            except CurriculumError:
                if experience.kind == "close":
                    return  # no host to connect to: nothing to tell it
                raise
        link.observe(experience)

    def flush(self, timeout: float | None = None) -> None:
        """Ship the buffered records and wait until the host has handed them to the
        curriculum (then the server's ``flush`` waits for their scores)."""
        link = self._link
        if link is not None and link.pid == _pid:
            link.flush(timeout)

    def close(self) -> None:
        """Ship what is buffered and let go of this process's connection (idempotent)."""
        link = self._link
        if link is not None and link.pid == _pid:
            link.close()

    def _here(self) -> Link:
        link = self._link
        if link is None or link.pid != _pid:
            with _connecting:
                link = self._link
                if link is None or link.pid != _pid:
                    link = self._link = self._connect()
        return link

    def _connect(self) -> Link:
        raise NotImplementedError
