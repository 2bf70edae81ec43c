"""Backends of :class:`~syllabus_eval.EvalRunner`: where one evaluation's episodes run.

Usage (through the runner, which takes a backend object or its name)::

    runner = EvalRunner(make_env, evaluator)                     # backend="auto"
    runner = EvalRunner(make_env, evaluator, backend="thread")
    runner = EvalRunner(make_env, evaluator, backend=ProcessBackend(num_workers=2))

What a user passes is a description (:mod:`syllabus_eval.evaluation.backend_settings`:
:class:`AutoBackend`, :class:`ThreadBackend`, :class:`ProcessBackend`, :class:`RayBackend`, each
a dataclass of its options); :func:`create_backend` turns it into the running backend, a private
strategy (:class:`.base.Backend`): ``snapshot`` takes the weights at trigger time in the form it
runs them, ``run`` runs the episodes of one evaluation on that snapshot and returns their
records, ``release`` ends what the snapshot held and ``close`` frees what the backend holds. The
runner calls ``snapshot`` on the triggering thread and the rest from its own thread, one
evaluation at a time, and does the rest (queueing, metrics, callbacks, errors). One module per
backend: :mod:`.thread` runs the episode loop right there; :mod:`.process` and :mod:`.ray` run
it in worker processes or Ray actors, through the worker pool they share (:mod:`.pool`);
:mod:`.auto`, the default, runs blocking evaluations as the first and background ones as the
second.

:data:`BACKENDS` is the one registry of running backends, by :class:`BackendKind` (the runner
and the command line read it). A backend is imported only when chosen, so an optional
dependency such as Ray is needed only by those who use it. A new backend is a description
(a :class:`BackendSettings` dataclass with its ``kind``), a :class:`.base.Backend` subclass,
and a line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from syllabus_eval.errors import check_choice
from syllabus_eval.evaluation.backend_settings import (
    AutoBackend,
    BackendKind,
    BackendSettings,
    ProcessBackend,
    RayBackend,
    ThreadBackend,
    WorkerBackend,
    as_backend,
)
from syllabus_eval.evaluation.backends.base import Backend
from syllabus_eval.query.protocols import AgentQueries
from syllabus_eval.rollout import EnvSpec, RolloutSettings

# kind -> "module:class" of the running backend, imported on first use.
BACKENDS = {
    "auto": "syllabus_eval.evaluation.backends.auto:AutoEngine",
    "thread": "syllabus_eval.evaluation.backends.thread:ThreadEngine",
    "process": "syllabus_eval.evaluation.backends.process:ProcessEngine",
    "ray": "syllabus_eval.evaluation.backends.ray:RayEngine",
}


def backend_class(name: str | BackendKind) -> type[Backend]:
    """The running backend registered as ``name``; ``ValueError`` listing the valid names."""
    module, attribute = BACKENDS[check_choice("backend", name, BackendKind)].split(":")
    return getattr(importlib.import_module(module), attribute)


def create_backend(backend: str | BackendSettings, envs: EnvSpec,
                   evaluator: AgentQueries | None, plan: Sequence[RolloutSettings], *,
                   device: str | torch.device | None = None) -> Backend:
    """The running backend ``backend`` describes, on the envs of ``envs``.

    ``plan`` holds the settings of each evaluation suite (one without suites), run in order on
    the same snapshot.
    """
    settings = as_backend(backend)
    return backend_class(settings.kind)(envs, evaluator, tuple(plan), device=device,
                                        settings=settings)


__all__ = ["BACKENDS", "AutoBackend", "Backend", "BackendKind", "BackendSettings",
           "ProcessBackend", "RayBackend", "ThreadBackend", "WorkerBackend", "as_backend",
           "backend_class", "create_backend"]
