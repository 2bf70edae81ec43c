"""Evaluation in Ray actors: the ``"ray"`` backend.

Usage::

    runner = EvalRunner(EnvSpec(make_env, num_envs=8), CleanRLEvaluator(agent), num_episodes=40,
                        backend=RayBackend(num_workers=4, num_cpus=1, num_gpus=0.25,
                                           address="ray://head:10001"))  # evaluator_fn=...
    runner.trigger_eval(agent, step=step)    # one ray.put of the weights, read by every actor

The actors work like the process backend's workers (:mod:`syllabus_eval.evaluation.backends.pool`:
shares of the env slots, restarts, timeouts, errors), with these differences. Ray is imported
when the backend is built; without it an ``ImportError`` says how to install it. When Ray is not
initialized yet, the runner connects to ``address`` or, without one, starts Ray locally
(``ray.init(**ray_kwargs)``), and shuts down at ``shutdown`` only the Ray it started; initialize
Ray yourself to share it between runners. The factories are serialized with cloudpickle, as
for the process backend (closures work too); what they refer to by name (their modules) must
be importable where the actors run. Each actor reserves
``num_cpus`` and ``num_gpus``; ``init_fn`` runs first in it, but the actor's process has already
imported this package (and torch). Each evaluation puts its snapshot (the weights) once in the
object store; every actor reads that one object. Progress bars advance per share rather than
per episode.

Actors are named ``syllabus-eval-<runner>-<worker>.<generation>`` in the current namespace (see
``ray.util.list_named_actors()``); a worker's ``generation`` grows with each restart.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from syllabus_eval.errors import EvaluationError
from syllabus_eval.evaluation.backend_settings import RayBackend
from syllabus_eval.evaluation.backends.pool import CLOSE_GRACE, PooledBackend
from syllabus_eval.evaluation.backends.workers import (
    Event,
    EventKind,
    JobOrder,
    JobStop,
    run_job,
    set_up,
)
from syllabus_eval.evaluation.snapshot import Snapshot

logger = logging.getLogger(__name__)

PING_TIMEOUT = 10.0  # seconds an idle actor gets to answer whether it lives


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError("backend='ray' needs Ray, which is not installed: "
                          "pip install 'syllabus-eval[ray]'") from error
    return ray


class _Actor:
    """The body of a worker actor (made a Ray actor class by :class:`_RayBackend`).

    ``setup`` and ``run`` run in the default concurrency group, one at a time, in order;
    ``cancel`` runs in the ``"control"`` group, beside a running job.
    """

    def __init__(self) -> None:
        self.episodes = None
        self.cancelled = SimpleNamespace(value=0)  # the last job cancelled

    def setup(self, spec: bytes, slots: Sequence[int]) -> Event:
        self.episodes, report = set_up(spec, slots)
        return report

    def run(self, job: int, snapshot: Snapshot) -> Event:
        # The snapshot comes as its own argument: Ray resolves it from the object store.
        return run_job(self.episodes, JobOrder(job, snapshot, stream=False),
                       JobStop(self.cancelled, job))

    def cancel(self, job: int) -> None:
        self.cancelled.value = job

    def ping(self) -> None:
        """Answers while the actor lives (between evaluations: see ``_RayWorker.alive``)."""

    def close(self) -> None:
        if self.episodes is not None:
            self.episodes.close()


class _RayWorker:
    """The runner's handle on one actor and its call in flight (``setup`` or ``run``)."""

    def __init__(self, ray: Any, actor_class: Any, name: str, index: int, count: int,
                 slots: list[int], spec: bytes, options: dict[str, Any]) -> None:
        self.ray, self.name, self.index, self.count, self.slots = ray, name, index, count, slots
        self.actor = actor_class.options(name=name, **options).remote()
        self.call = self.actor.setup.remote(spec, slots)  # its report: READY or FAILED
        self.pid: int | None = None
        self.dead = False

    def __str__(self) -> str:
        pid = "" if self.pid is None else f"pid {self.pid}, "
        return (f"worker {self.index + 1} of {self.count} (Ray actor {self.name}, {pid}env "
                f"slots {self.slots[0]}-{self.slots[-1]})")

    def alive(self) -> bool:
        """Whether the actor lives; asked between evaluations, so that one that died while
        idle is replaced before the next job rather than costing it a restart."""
        if self.dead or not self.ray.is_initialized():
            return False
        if self.call is not None:  # a call in flight reports a death itself
            return True
        try:
            self.ray.get(self.actor.ping.options(concurrency_group="control").remote(),
                         timeout=PING_TIMEOUT)
        except self.ray.exceptions.RayActorError:
            self.dead = True
        except self.ray.exceptions.GetTimeoutError:
            pass  # slow to answer (a busy machine) is not dead
        return not self.dead

    def submit(self, payload: tuple[int, Any]) -> None:
        job, snapshot = payload
        self.call = self.actor.run.remote(job, snapshot)

    def cancel(self, job: int) -> None:
        if not self.dead:
            self.actor.cancel.options(concurrency_group="control").remote(job)

    def report(self) -> tuple[_RayWorker, Event]:
        """What its finished call returned, or DIED."""
        call, self.call = self.call, None
        try:
            event = self.ray.get(call)
        except self.ray.exceptions.RayError as error:  # the actor (or its node) is gone
            self.dead = True
            return self, Event(EventKind.DIED, None, str(error).strip().splitlines()[0])
        if event.kind is EventKind.READY:
            self.pid = event.data
        return self, event

    def kill(self) -> None:
        """Kill the actor and wait (``CLOSE_GRACE`` at most) until Ray reports it dead."""
        self.dead = True
        self.call = None
        if not self.ray.is_initialized():  # Ray was shut down: its actors went with it
            return  # (and a remote call now would start a new local Ray)
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(self.actor, no_restart=True)
        # ray.kill returns at once: once a call fails, Ray no longer lists the actor.
        deadline = time.monotonic() + CLOSE_GRACE
        while time.monotonic() < deadline:
            try:
                self.ray.get(self.actor.close.remote(), timeout=CLOSE_GRACE)
            except self.ray.exceptions.RayActorError:
                return
            except Exception:  # timed out: nothing more to wait for
                return
            time.sleep(0.01)


class RayEngine(PooledBackend):
    """Runs the episodes in ``num_workers`` Ray actors (module docs)."""

    name = "ray"
    streams_episodes = False

    def __init__(self, *args: Any, settings: RayBackend | None = None, **options: Any) -> None:
        settings = settings if settings is not None else RayBackend()
        self._ray = _import_ray()
        self.address, self.ray_kwargs = settings.address, dict(settings.ray_kwargs or {})
        self._actor_options = {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus}
        self._token = uuid.uuid4().hex[:8]
        self._generation = 0
        self._started_ray = False
        super().__init__(*args, settings=settings, **options)

    def _open(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(**({"address": self.address} if self.address is not None else {}),
                     **self.ray_kwargs)
            self._started_ray = True
        elif self.address is not None or self.ray_kwargs:
            logger.warning("Ray is already initialized: the runner uses it as it is, without "
                           "address and ray_kwargs")
        # Jobs in order, one at a time; cancel beside them. Actors are not restarted by Ray:
        # the backend restarts them, counting restarts per evaluation.
        self._actor_class = ray.remote(max_restarts=0, concurrency_groups={"control": 1})(
            _Actor)

    def _start_worker(self, index: int) -> _RayWorker:
        if not self._ray.is_initialized():  # else creating an actor would start a new Ray
            raise EvaluationError("Ray was shut down while the runner needed it; shut the "
                                  "runner down first")
        self._generation += 1
        name = f"syllabus-eval-{self._token}-{index}.{self._generation}"
        return _RayWorker(self._ray, self._actor_class, name, index, len(self.shares),
                          self.shares[index], self._spec, self._actor_options)

    def _poll(self, workers: list[_RayWorker], timeout: float
              ) -> list[tuple[_RayWorker, Event]]:
        calls = {worker.call: worker for worker in workers if worker.call is not None}
        if not calls:
            time.sleep(timeout)
            return []
        done, _ = self._ray.wait(list(calls), num_returns=len(calls), timeout=timeout)
        return [calls[call].report() for call in done]

    def _payload(self, order: JobOrder) -> tuple[int, Any]:
        # One object in the object store, which every actor reads (Ray streams no episodes).
        return order.job, self._ray.put(order.snapshot)

    def _close_workers(self, workers: list[_RayWorker]) -> None:
        if not self._ray.is_initialized():  # shut down already, with the actors
            for worker in workers:
                worker.kill()
            return
        closing = [worker.actor.close.remote() for worker in workers if not worker.dead]
        if closing:
            self._ray.wait(closing, num_returns=len(closing), timeout=CLOSE_GRACE)
        for worker in workers:
            worker.kill()

    def _slow_start_hint(self) -> str:
        options = self._actor_options
        return (f"; each of the {len(self.shares)} actors waits for num_cpus="
                f"{options['num_cpus']} and num_gpus={options['num_gpus']} to be free in the "
                f"cluster (ray.available_resources(): {self._ray.available_resources()})")

    def _disconnect(self) -> None:
        if self._started_ray:
            self._started_ray = False
            self._ray.shutdown()
