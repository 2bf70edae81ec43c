"""Backends of :class:`~syllabus_eval.EvalRunner`: where one evaluation's episodes run.

Usage (through the runner, which picks the backend by name)::

    runner = EvalRunner(make_env, evaluator)                     # backend="auto"
    runner = EvalRunner(make_env, evaluator, backend="thread")
    runner = EvalRunner(make_env, evaluator, backend="process", num_workers=2)

A backend is a private strategy (:class:`.base.Backend`): ``snapshot``
takes the weights at trigger time in the form it runs them, ``run`` runs the episodes of one
evaluation on that snapshot and returns their records, ``release`` ends what the snapshot held
and ``close`` frees what the backend holds. The runner calls ``snapshot`` on the triggering
thread and the rest from its own thread, one evaluation at a time, and does the rest
(queueing, metrics, callbacks, errors). One module per backend:
:mod:`~syllabus_eval.evaluation.backends.thread` runs the episode loop right there;
:mod:`.process` and :mod:`.ray` run it in worker
processes or Ray actors, through the worker pool they share
(:mod:`.pool`); :mod:`.auto`, the default, runs
blocking evaluations as the first and background ones as the second.

:data:`BACKENDS` is the one registry of backend names (the runner and the command line read
it). A backend is imported only when chosen, so an optional dependency such as Ray is needed
only by those who use it. Options that only some backends take (the worker options of
:class:`~syllabus_eval.EvalRunner`) are checked by :func:`create_backend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import torch

from syllabus_eval.evaluation.backends.base import Backend
from syllabus_eval.query.protocols import AgentQueries
from syllabus_eval.rollout import RolloutSettings

# name -> "module:class", imported on first use.
BACKENDS = {
    "auto": "syllabus_eval.evaluation.backends.auto:AutoBackend",
    "thread": "syllabus_eval.evaluation.backends.thread:ThreadBackend",
    "process": "syllabus_eval.evaluation.backends.process:ProcessBackend",
    "ray": "syllabus_eval.evaluation.backends.ray:RayBackend",
}


def backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``; ``ValueError`` listing the valid names."""
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {name!r}")
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def create_backend(name: str, make_env: Callable[[], Any], evaluator: AgentQueries,
                   num_envs: int, plan: Sequence[RolloutSettings], *,
                   vectorization_mode: str = "sync",
                   set_task: Callable[[gym.Env, Any], None] | None = None,
                   device: str | torch.device | None = None, **options: Any) -> Backend:
    """The backend ``name``, built with the options it takes (``ValueError`` for others).

    ``plan`` holds the settings of each evaluation suite (one without suites), run in order on
    the same snapshot. ``options`` are the backend-specific ones that were given
    (``num_workers``, ``env_fn``, ...); the other arguments go to every backend.
    """
    cls = backend_class(name)
    for option in options:
        if option not in cls.options:
            takers = [other for other in BACKENDS if other != name
                      and option in backend_class(other).options]
            raise ValueError(f"{option}: not an option of backend={name!r} (only of "
                             f"{' and '.join(map(repr, takers))}); leave it out, or choose one "
                             "of those backends")
    return cls(make_env, evaluator, num_envs, tuple(plan), vectorization_mode=vectorization_mode,
               set_task=set_task, device=device, **options)


__all__ = ["BACKENDS", "Backend", "backend_class", "create_backend"]
