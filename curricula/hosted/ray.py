"""A curriculum hosted in a Ray actor, for env actors on any node of a cluster.

Usage::

    import ray
    from syllabus_eval.curricula import CurriculumWrapper, RayCurriculumServer

    server = RayCurriculumServer(make_plr, address=None)   # local Ray, or "head:6379"
    runners = [EnvRunner.remote(server.client) for _ in range(4)]   # the client pickles
    ...                                    # each runner: CurriculumWrapper(make_env(), client)
    server.load_weights(agent, version=step)   # after each update: one object in the store
    server.task_scores(); server.distribution(); server.flush(timeout=60)
    server.close()                         # no actor left behind

The actor builds the curriculum from ``curriculum_fn`` (Ray sends it with cloudpickle) and
answers clients' batches one at a time, in order (``exchange``: records in, drawn tasks out);
pings, weights, queries and the close run beside them (a ``control`` concurrency group). A
client has one batch in flight at a time, so a host that falls behind holds its env back
(back-pressure; nothing is dropped), and a watcher thread in each client process pings the
actor every ``check_interval`` seconds, so that a dead actor fails the next reset or step of
every env that uses it. A dead env actor leaves the curriculum running (its open episode is
scored as truncated at the close).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from syllabus_eval.errors import CurriculumError, RemoteFailure, bad_argument, check_number

from .client import HostedClient, Link, pack_records, unpack_records
from .host import CurriculumHost, HostedServer, Outcome, attempt, pack_factories
from .weights import WeightsInbox

START_TIMEOUT = 300.0  # seconds the actor may take to start (free CPUs, imports, the factory)
PING_TIMEOUT = 30.0  # an actor slower than this to answer a ping is busy, not dead
CLOSE_GRACE = 30.0  # seconds the actor gets to score what it has and stop


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError("RayCurriculumServer needs Ray, which is not installed: "
                          "pip install 'syllabus-eval[ray]'") from error
    return ray


class _CurriculumActor:
    """The actor's body (made a Ray actor class by the server): never raises, returns
    :class:`Outcome` s, so that Ray wraps no error of the curriculum in its own types."""

    def __init__(self, spec: bytes) -> None:
        self.inbox = WeightsInbox()
        self.host: CurriculumHost | None = None
        self.failure: RemoteFailure | None = None
        try:
            self.host = CurriculumHost.from_spec(spec)
        except Exception as error:
            self.failure = RemoteFailure.of(error)
        gc.freeze()  # as the worker process does (worker.py): full collections skip the rest

    def ready(self) -> Outcome:
        if self.host is None:
            return Outcome(failure=self.failure)
        return Outcome((self.host.wants_experience, os.getpid()))

    def exchange(self, packed: tuple, draws: int) -> Outcome:
        # Streams are not tracked per client: Ray does not say when a caller dies.
        return attempt(lambda: self.host.exchange(unpack_records(packed), draws, set()))

    def ping(self) -> str | None:
        return self.host.health()

    def call(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Outcome:
        return attempt(self.host.call, name, args, kwargs)

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int | None
                     ) -> Outcome:
        def take() -> None:
            self.host.take_weights(self.inbox.pull, {name: tuple(tensor.shape)
                                                     for name, tensor in state_dict.items()})
            self.inbox.put(state_dict, version)

        return attempt(take)

    def close(self) -> Outcome:
        return self.host.close()


def _died(name: str, error: BaseException) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"the curriculum actor {name} died: {first}"


class _RayLink(Link):
    """One process's line to the actor: one ``exchange`` call in flight, settled before the
    next; a daemon thread pinging the actor."""

    def __init__(self, client: RayCurriculumClient) -> None:
        super().__init__(client)
        self.ray = _import_ray()
        self.actor, self.name = client.actor, client.name
        self.check_interval = client.check_interval
        self.in_flight: tuple[Any, int] | None = None  # (the call, draws it asked for)
        self.stopped = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True,
                                        name="hosted curriculum watcher")
        self.watcher.start()

    def _send(self, fields: list, draws: int) -> None:
        self._settle(self.timeout)
        try:
            call = self.actor.exchange.remote(pack_records(fields), draws)
        except Exception as error:  # Ray gone in this process
            raise self.fail(_died(self.name, error)) from None
        self.in_flight = call, draws

    def _settle(self, timeout: float, stuck_fails: bool = True) -> None:
        """Take the reply of the call in flight (``send_lock`` held). One that takes the
        client's whole ``timeout`` fails the link (``stuck_fails``: a ship or a draw), rather
        than a batch being dropped; a flush's own timeout only raises ``TimeoutError``."""
        if self.in_flight is None:
            return
        call, draws = self.in_flight
        ray = self.ray
        try:
            outcome = ray.get(call, timeout=max(0.0, timeout))
        except ray.exceptions.GetTimeoutError:
            message = (f"the curriculum actor {self.name} did not take a batch within "
                       f"{timeout:.1f} s")
            if stuck_fails:
                raise self.fail(message) from None
            raise TimeoutError(message) from None
        except ray.exceptions.RayError as error:
            self.in_flight = None
            raise self.fail(_died(self.name, error)) from None
        self.in_flight = None
        if outcome.failure is not None:
            raise self.fail(f"the hosted curriculum failed: {outcome.failure.summary}")
        if draws:
            self.deliver(outcome.value)

    def _await_tasks(self, k: int, deadline: float) -> None:
        with self.send_lock:
            self._settle(max(deadline - time.monotonic(), 0.0))

    def _sync(self, timeout: float) -> None:
        with self.send_lock:
            self._settle(timeout, stuck_fails=False)

    def _watch(self) -> None:
        ray = self.ray
        while not self.stopped.wait(self.check_interval):
            try:
                message = ray.get(self.actor.ping.options(concurrency_group="control").remote(),
                                  timeout=PING_TIMEOUT)
            except ray.exceptions.GetTimeoutError:
                continue  # busy, not dead
            except ray.exceptions.RayActorError as error:
                self.fail(_died(self.name, error))
                return
            except Exception:  # Ray shut down in this process: nothing to watch
                return
            if message is not None:
                self.fail(f"the hosted curriculum failed: {message}")
                return

    def _stop(self) -> None:
        self.stopped.set()
        if self.watcher is not threading.current_thread():
            self.watcher.join(PING_TIMEOUT + 5)


class RayCurriculumClient(HostedClient):
    """:class:`RayCurriculumServer`'s client: the actor's handle (picklable) and settings."""

    def __init__(self, actor: Any, name: str, wants_experience: bool, *,
                 check_interval: float = 1.0, **settings: Any) -> None:
        super().__init__(wants_experience, **settings)
        self.actor, self.name = actor, name
        self.check_interval = check_number("check_interval", check_interval, 0.0,
                                           low_open=True)

    def _connect(self) -> Link:
        return _RayLink(self)


def _kill(ray: Any, actor: Any) -> None:
    """Kill the actor, and wait (briefly) until Ray reports it gone."""
    if not ray.is_initialized():
        return  # Ray was shut down, with its actors (and a call now would start a new Ray)
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.options(concurrency_group="control").remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except Exception:
            return
        time.sleep(0.05)


class RayCurriculumServer(HostedServer):
    """A curriculum built by ``curriculum_fn`` in a Ray actor (module docs).

    Args:
        curriculum_fn: builds the curriculum in the actor (e.g. PLR with its own evaluator);
            what it refers to by name must be importable there (``ray_kwargs``'s
            ``runtime_env`` ships code to a cluster).
        address: a Ray cluster to join when Ray is not initialized (``"head:6379"``,
            ``"ray://head:10001"``); ``None``: start Ray locally. An initialized Ray is used
            as it is.
        ray_kwargs: more ``ray.init`` arguments, when this server initializes Ray.
        init_fn: runs first in the actor.
        num_cpus, num_gpus: what the actor reserves.
        batch_records, prefetch, max_delay, timeout: the clients' batching, draws ahead and
            waits (:mod:`~syllabus_eval.curricula.hosted.client`).
        check_interval: seconds between a client's pings of the actor.

    :meth:`close` ships this process's buffered records, has the curriculum score what it was
    sent and stop, keeps its final tables, kills the actor and waits until Ray reports it
    gone, and shuts down the Ray it started (only that one). The actor is also killed at
    interpreter exit.
    """

    def __init__(self, curriculum_fn: Callable[[], Any], *, address: str | None = None,
                 ray_kwargs: Mapping[str, Any] | None = None,
                 init_fn: Callable[[], Any] | None = None, num_cpus: float = 1,
                 num_gpus: float = 0, batch_records: int = 256, prefetch: int = 32,
                 max_delay: float = 0.5, timeout: float = 60.0,
                 check_interval: float = 1.0) -> None:
        super().__init__()
        if address is not None and not isinstance(address, str):
            raise bad_argument("address", "a Ray cluster address (str) or None", address)
        if ray_kwargs is not None and not isinstance(ray_kwargs, Mapping):
            raise bad_argument("ray_kwargs", "a dict of ray.init arguments or None", ray_kwargs)
        options = {"num_cpus": check_number("num_cpus", num_cpus, 0),
                   "num_gpus": check_number("num_gpus", num_gpus, 0)}
        settings = {"batch_records": batch_records, "prefetch": prefetch,
                    "max_delay": max_delay, "timeout": timeout, "check_interval": check_interval}
        RayCurriculumClient(None, "", False, **settings)  # checks them before Ray starts
        spec = pack_factories(curriculum_fn, init_fn)
        self.timeout = timeout
        ray = self._ray = _import_ray()
        self._started_ray = False
        if not ray.is_initialized():
            ray.init(**({"address": address} if address is not None else {}),
                     **dict(ray_kwargs or {}))
            self._started_ray = True
        self.name = f"syllabus-eval-curriculum-{uuid.uuid4().hex[:8]}"
        # One batch at a time, in order; pings, weights, queries and close beside them.
        actor_class = ray.remote(max_restarts=0, concurrency_groups={"control": 4})(
            _CurriculumActor)
        self._actor = actor_class.options(name=self.name, **options).remote(spec)
        self._finalizer = weakref.finalize(self, _kill, ray, self._actor)
        try:
            wants_experience, self.pid = self._get(self._actor.ready.remote(),
                                                   START_TIMEOUT).unwrap()
        except BaseException:
            self._abort()
            raise
        self.client = RayCurriculumClient(self._actor, self.name, wants_experience, **settings)

    def _get(self, call: Any, timeout: float | None) -> Outcome:
        ray = self._ray
        try:
            return ray.get(call, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"the curriculum actor {self.name} did not answer within "
                               f"{timeout} s") from None
        except ray.exceptions.RayError as error:
            raise self._host_gone(CurriculumError(_died(self.name, error))) from None

    def _control(self, method: str, *args: Any) -> Any:
        if not self._ray.is_initialized():  # else the call would start a new, empty Ray
            raise self._host_gone(CurriculumError(
                f"Ray was shut down, and the curriculum actor {self.name} with it"))
        return getattr(self._actor, method).options(concurrency_group="control").remote(*args)

    def _call(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              timeout: float | None) -> Any:
        wait = None if timeout is None and name == "flush" else (
            self.timeout if timeout is None else timeout + self.timeout)
        return self._get(self._control("call", name, tuple(args), dict(kwargs)), wait).unwrap()

    def _push(self, state_dict: dict[str, torch.Tensor], version: int | None) -> None:
        # One object in the store; the actor takes it as a state dict (Ray resolves the ref).
        weights = self._ray.put(state_dict)
        self._get(self._control("load_weights", weights, version), self.timeout).unwrap()

    def close(self) -> None:
        """Score what was sent, keep the final tables, kill the actor (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._ray.is_initialized():
            with contextlib.suppress(Exception):  # a dead actor: told below
                self.client.flush()
        try:
            outcome, error = self._close_host(lambda: self._get(self._control("close"),
                                                              CLOSE_GRACE))
        finally:
            self._close_client()
            self._abort()
        self._finish(outcome, error)

    def _abort(self) -> None:
        self._finalizer()
        if self._started_ray:
            self._started_ray = False
            self._ray.shutdown()

    def __enter__(self) -> RayCurriculumServer:
        return self
