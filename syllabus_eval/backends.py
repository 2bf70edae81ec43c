"""Backends of :class:`~syllabus_eval.EvalRunner`: where one evaluation's episodes run.

Usage (through the runner, which picks the backend by name)::

    runner = EvalRunner(make_env, evaluator, backend="thread")

A backend is a private strategy with two methods: ``run(weights, version, stop, on_episode,
background)`` runs the episodes of one evaluation and returns their records, and ``close()``
frees what it holds. The runner calls both from its own thread, one evaluation at a time, and
does the rest (queueing, metrics, ``on_result``, errors). ``"thread"`` runs the episode loop
right there; further backends live in modules of their own, registered in :data:`BACKENDS` and
imported only when chosen (an optional dependency such as Ray is then needed only by those who
use it).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

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
BACKENDS = {"thread": "syllabus_eval.backends:_ThreadBackend"}


def backend_class(name: str) -> type[_Backend]:
    """The backend class registered as ``name``; ``ValueError`` listing the valid names."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {name!r}")
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


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


class _ThreadBackend(_Backend):
    """Runs the episode loop in the runner's daemon thread, on a detached copy of the agent.

    The envs are built (and checked against the agent) at construction, in the caller's
    thread, so that misfits fail early; they are rebuilt after an evaluation that failed.
    """

    def __init__(self, make_env: Callable[[], Any], evaluator: Any, num_envs: int,
                 settings: RolloutSettings, **options: Any) -> None:
        super().__init__(make_env, evaluator, num_envs, settings, **options)
        device = options.get("device")
        # Evaluation runs on its own copy, which training never updates behind its back.
        detached = getattr(evaluator, "detached", None)
        self.evaluator = detached(device) if detached is not None else evaluator
        self.weights_device = torch.device(device if device is not None
                                           else getattr(self.evaluator, "device", "cpu"))
        self._envs: EnvPool | gym.vector.VectorEnv | None = None
        self._envs = self._build_envs()

    def _build_envs(self) -> EnvPool | gym.vector.VectorEnv:
        envs = make_envs(self.make_env, self.num_envs, self.vectorization_mode, self.set_task)
        try:
            check_fit(self.evaluator, envs, self.settings.deterministic)
        except BaseException:
            envs.close()
            raise
        return envs

    def run(self, weights: Mapping[str, torch.Tensor] | None, version: int | None,
            stop: threading.Event, on_episode: Callable[[EpisodeRecord], None] | None,
            background: bool) -> list[EpisodeRecord]:
        if weights is not None:
            self.evaluator.load_weights(weights, version)
        if self._envs is None:
            self._envs = self._build_envs()
        try:
            # In the background, training runs in another thread of this process: let it
            # have the GIL back each step. A blocking evaluation runs at full speed.
            return run_episodes(self.evaluator, self._envs, self.settings, stop=stop,
                                on_episode=on_episode, yield_gil=background)
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
