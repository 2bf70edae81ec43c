"""Where a runner's evaluations run, as typed objects (the runner's ``backend=``).

Usage::

    EvalRunner(make_env, evaluator)                                    # AutoBackend()
    EvalRunner(make_env, evaluator, backend="thread")                  # ThreadBackend()
    EvalRunner(make_env, evaluator, backend=ProcessBackend(num_workers=2, timeout=600))
    EvalRunner(make_env, None, backend=RayBackend(evaluator_fn=build, num_gpus=0.25))

Each object describes a backend (what it is, with its options checked here); the registry of
:mod:`syllabus_eval.evaluation.backends` turns it into the running one. A string names the
backend with its defaults. Recorded with each result (``result.settings["backend"]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym

from syllabus_eval.errors import Choice, bad_argument, check_choice, check_count, check_number


class BackendKind(Choice):
    """The backends by name (the shortcuts ``backend="thread"`` etc.)."""

    AUTO = "auto"
    THREAD = "thread"
    PROCESS = "process"
    RAY = "ray"


@dataclass(frozen=True)
class BackendSettings:
    """What every backend description is: its :class:`BackendKind`."""

    kind: ClassVar[BackendKind]


@dataclass(frozen=True)
class ThreadBackend(BackendSettings):
    """Every evaluation in the runner's daemon thread, beside training (it shares the GIL:
    a background evaluation pauses a moment each env step to let training have it)."""

    kind: ClassVar[BackendKind] = BackendKind.THREAD


@dataclass(frozen=True)
class AutoBackend(BackendSettings):
    """The default: blocking evaluations in the runner's thread, background ones in one
    worker process launched at the first (in the thread, with one warning that says why,
    where a worker cannot run them)."""

    kind: ClassVar[BackendKind] = BackendKind.AUTO


@dataclass(frozen=True)
class WorkerBackend(BackendSettings):
    """What the worker backends (processes, Ray actors) share."""

    kind: ClassVar[BackendKind]
    num_workers: int = 1
    """Workers that split the env slots of each evaluation (contiguous blocks, at most
    ``num_envs``); the merged records equal those of one worker, and with greedy actions the
    metrics equal the thread backend's."""
    max_restarts: int = 2
    """Workers that die during an evaluation are restarted and their share run again, at most
    this many times per evaluation; then it fails with :class:`EvaluationError`."""
    timeout: float | None = None
    """Seconds an evaluation's episodes may take (re-runs included, start-up not); a slower
    one fails with ``TimeoutError`` as its cause, its workers killed and restarted.
    ``None``: no limit."""
    env_fn: Callable[[], gym.Env | gym.vector.VectorEnv] | None = None
    """The env factory the workers call (default: the runner's env factory), sent with
    cloudpickle (as Gymnasium's ``AsyncVectorEnv`` sends env factories): a function, class,
    ``functools.partial``, lambda or closure, with what it captures. A ``VectorEnv`` factory
    fits ``num_workers=1`` only."""
    evaluator_fn: Callable[[], Any] | None = None
    """Builds the evaluator in each worker, on an agent of the training agent's architecture;
    each evaluation loads the snapshot of the weights into it. Sent like ``env_fn``. Default:
    the workers get the runner's evaluator itself; give one for agents whose copy does not
    pickle (the runner's evaluator may then be ``None``: TorchRL's ``policy_factory``)."""
    init_fn: Callable[[], Any] | None = None
    """Called first in each worker, before the env and evaluator are built (simulators that
    must start first, env variables, devices)."""

    def __post_init__(self) -> None:
        check_count("num_workers", self.num_workers, 1)
        check_count("max_restarts", self.max_restarts, 0)
        if self.timeout is not None:
            check_number("timeout", self.timeout, 0, low_open=True)
        for name in ("env_fn", "evaluator_fn", "init_fn"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise bad_argument(name, "a callable or None", value)


@dataclass(frozen=True)
class ProcessBackend(WorkerBackend):
    """Every evaluation in spawned worker processes (nice 15, one torch thread each), weights
    through shared memory; the script needs the ``if __name__ == "__main__":`` guard."""

    kind: ClassVar[BackendKind] = BackendKind.PROCESS


@dataclass(frozen=True)
class RayBackend(WorkerBackend):
    """Every evaluation in Ray actors (``pip install 'syllabus-eval[ray]'``)."""

    kind: ClassVar[BackendKind] = BackendKind.RAY
    address: str | None = None
    """The Ray cluster to connect to when Ray is not initialized yet (default: start Ray
    locally). A runner shuts down only the Ray it started."""
    num_cpus: float = 1
    """CPUs each actor reserves."""
    num_gpus: float = 0
    """GPUs each actor reserves."""
    ray_kwargs: Mapping[str, Any] | None = None
    """Further ``ray.init`` arguments, when the runner starts Ray."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.address is not None and not isinstance(self.address, str):
            raise bad_argument("address", "a Ray cluster address (str) or None", self.address)
        check_number("num_cpus", self.num_cpus, 0)
        check_number("num_gpus", self.num_gpus, 0)
        if self.ray_kwargs is not None and not isinstance(self.ray_kwargs, Mapping):
            raise bad_argument("ray_kwargs", "a dict of ray.init arguments or None",
                               self.ray_kwargs)


_BY_KIND: dict[BackendKind, type[BackendSettings]] = {
    settings.kind: settings for settings in (AutoBackend, ThreadBackend, ProcessBackend,
                                             RayBackend)}


def as_backend(value: str | BackendSettings, **options: Any) -> BackendSettings:
    """``value`` as a backend description: a name stands for its backend with ``options``
    (``as_backend("process", num_workers=2)`` is ``ProcessBackend(num_workers=2)``)."""
    if isinstance(value, BackendSettings):
        return dataclasses.replace(value, **options) if options else value
    if isinstance(value, str):
        return _BY_KIND[check_choice("backend", value, BackendKind)](**options)
    raise bad_argument("backend", f"one of {[kind.value for kind in BackendKind]} or a backend "
                       "object such as ProcessBackend(num_workers=2)", value)


__all__ = ["AutoBackend", "BackendKind", "BackendSettings", "ProcessBackend", "RayBackend",
           "ThreadBackend", "WorkerBackend", "as_backend"]
