"""Backends of :class:`~syllabus_eval.EvalRunner`: where one evaluation's episodes run.

Usage (through the runner, which picks the backend by name)::

    runner = EvalRunner(make_env, evaluator, backend="thread")
    runner = EvalRunner(make_env, evaluator, backend="process", evaluator_fn=make_evaluator,
                        num_workers=2)

A backend is a private strategy with two methods: ``run(weights, version, stop, on_episode,
background)`` runs the episodes of one evaluation and returns their records, and ``close()``
frees what it holds. The runner calls both from its own thread, one evaluation at a time, and
does the rest (queueing, metrics, ``on_result``, errors). ``"thread"`` runs the episode loop
right there; ``"process"`` and ``"ray"`` (:mod:`syllabus_eval.backends_parallel`,
:mod:`syllabus_eval.backends_ray`) run it in worker processes or Ray actors. Backends are
registered in :data:`BACKENDS` and imported only when chosen (an optional dependency such as
Ray is then needed only by those who use it). Options that only some backends take (the
worker options of :class:`~syllabus_eval.EvalRunner`) are checked by :func:`create_backend`.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import torch

from .rollout import (
    EnvPool,
    EpisodeRecord,
    RolloutSettings,
    check_fit,
    make_envs,
    run_episodes,
)

logger = logging.getLogger(__name__)

# name -> "module:class", imported on first use.
BACKENDS = {
    "thread": "syllabus_eval.backends:_ThreadBackend",
    "process": "syllabus_eval.backends_parallel:_ProcessBackend",
    "ray": "syllabus_eval.backends_ray:_RayBackend",
}


def backend_class(name: str) -> type[_Backend]:
    """The backend class registered as ``name``; ``ValueError`` listing the valid names."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {name!r}")
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def create_backend(name: str, make_env: Callable[[], Any], evaluator: Any, num_envs: int,
                   settings: RolloutSettings, *, vectorization_mode: str = "sync",
                   set_task: Callable[[gym.Env, Any], None] | None = None,
                   device: str | torch.device | None = None, **options: Any) -> _Backend:
    """The backend ``name``, built with the options it takes (``ValueError`` for others).

    ``options`` are the backend-specific ones that were given (``num_workers``, ``env_fn``,
    ...); the other arguments go to every backend.
    """
    cls = backend_class(name)
    for option in options:
        if option not in cls.options:
            takers = [other for other in BACKENDS if other != name
                      and option in backend_class(other).options]
            raise ValueError(f"{option}: not an option of backend={name!r} (only of "
                             f"{' and '.join(map(repr, takers))}); leave it out, or choose one "
                             "of those backends")
    return cls(make_env, evaluator, num_envs, settings, vectorization_mode=vectorization_mode,
               set_task=set_task, device=device, **options)


class _Backend:
    """The interface every backend implements (see the module docs).

    Args:
        make_env: the env factory (one env, or a whole ``VectorEnv``).
        evaluator: the evaluator whose weights are evaluated.
        num_envs: env slots in all.
        settings: what each evaluation runs.
        vectorization_mode: ``"sync"`` or ``"async"`` (see :func:`make_envs`).
        set_task: the task hook of :func:`make_envs`.
        device: where the evaluation agent runs.
    """

    #: the backend-specific options of :class:`~syllabus_eval.EvalRunner` it takes
    options: ClassVar[frozenset[str]] = frozenset()
    #: where weight snapshots are put at trigger time
    weights_device: torch.device

    def __init__(self, make_env: Callable[[], Any], evaluator: Any, num_envs: int,
                 settings: RolloutSettings, *, vectorization_mode: str = "sync",
                 set_task: Callable[[gym.Env, Any], None] | None = None,
                 device: str | torch.device | None = None) -> None:
        self.make_env = make_env
        self.num_envs = num_envs
        self.settings = settings
        self.vectorization_mode = vectorization_mode
        self.set_task = set_task

    def run(self, weights: Mapping[str, torch.Tensor] | None, version: int | None,
            stop: threading.Event, on_episode: Callable[[EpisodeRecord], None] | None,
            background: bool) -> list[EpisodeRecord]:
        """The records of one evaluation on ``weights`` (``None``: the current ones).

        ``background``: training goes on meanwhile (``trigger_eval``), rather than waiting
        for the result (``evaluate``).
        """
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Episodes:
    """An evaluation agent and the envs of some slots, in this process: what every backend runs.

    The thread backend holds one for all slots; each process or Ray worker holds one for its
    share. The envs are built (and checked against the agent) at construction, so that misfits
    fail early, and rebuilt after an evaluation that failed.

    Args:
        make_env: the env factory.
        evaluator: its detached copy (:meth:`~syllabus_eval.Evaluator.detached`) evaluates.
        settings: what each evaluation runs.
        slots: the global indices of the slots run here (default: all ``num_slots``).
        num_slots: the evaluation's slots in all.
        vectorization_mode, set_task: see :func:`make_envs`.
        device: where the evaluation agent runs (default: the evaluator's device).
    """

    def __init__(self, make_env: Callable[[], Any], evaluator: Any, settings: RolloutSettings,
                 *, num_slots: int, slots: Sequence[int] | None = None,
                 vectorization_mode: str = "sync",
                 set_task: Callable[[gym.Env, Any], None] | None = None,
                 device: str | torch.device | None = None) -> None:
        # Evaluation runs on its own copy, which training never updates behind its back.
        detached = getattr(evaluator, "detached", None)
        self.evaluator = detached(device) if detached is not None else evaluator
        self.device = torch.device(device if device is not None
                                   else getattr(self.evaluator, "device", "cpu"))
        self.make_env = make_env
        self.settings = settings
        self.num_slots = num_slots
        self.slots = list(range(num_slots)) if slots is None else list(slots)
        self.vectorization_mode = vectorization_mode
        self.set_task = set_task
        self._envs: EnvPool | gym.vector.VectorEnv | None = None
        self._envs = self._build_envs()

    def _build_envs(self) -> EnvPool | gym.vector.VectorEnv:
        envs = make_envs(self.make_env, len(self.slots), self.vectorization_mode, self.set_task)
        try:
            check_fit(self.evaluator, envs, self.settings.deterministic)
        except BaseException:
            envs.close()
            raise
        return envs

    def run(self, weights: Mapping[str, torch.Tensor] | None, version: int | None,
            stop: Any, on_episode: Callable[[EpisodeRecord], None] | None = None,
            yield_gil: bool = False) -> list[EpisodeRecord]:
        """The records of this share of one evaluation (see :func:`run_episodes`)."""
        if weights is not None:
            self.evaluator.load_weights(weights, version)
        if self._envs is None:
            self._envs = self._build_envs()
        try:
            return run_episodes(self.evaluator, self._envs, self.settings, slots=self.slots,
                                num_slots=self.num_slots, stop=stop, on_episode=on_episode,
                                yield_gil=yield_gil)
        except BaseException:
            self.close()  # an env may have broken mid-episode: build fresh ones next time
            raise

    def close(self) -> None:
        envs, self._envs = self._envs, None
        if envs is not None:
            try:
                envs.close()
            except Exception:
                logger.exception("closing the evaluation envs failed")


class _ThreadBackend(_Backend):
    """Runs the episode loop in the runner's daemon thread, on a detached copy of the agent."""

    def __init__(self, make_env: Callable[[], Any], evaluator: Any, num_envs: int,
                 settings: RolloutSettings, **options: Any) -> None:
        super().__init__(make_env, evaluator, num_envs, settings, **options)
        self.episodes = _Episodes(make_env, evaluator, settings, num_slots=num_envs,
                                  vectorization_mode=self.vectorization_mode,
                                  set_task=self.set_task, device=options.get("device"))
        self.weights_device = self.episodes.device

    def run(self, weights: Mapping[str, torch.Tensor] | None, version: int | None,
            stop: threading.Event, on_episode: Callable[[EpisodeRecord], None] | None,
            background: bool) -> list[EpisodeRecord]:
        # In the background, training runs in another thread of this process: let it have the
        # GIL back each step. A blocking evaluation runs at full speed.
        return self.episodes.run(weights, version, stop, on_episode, yield_gil=background)

    def close(self) -> None:
        self.episodes.close()
