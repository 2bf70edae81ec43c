"""What a sweep's numbers depend on besides the checkpoint, and its fingerprint: the key a
results line is found by when a sweep resumes."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from syllabus_eval.evaluation.runner import EvalRunner
from syllabus_eval.rollout import GivenEnvs

# The settings a normalising runner may differ from the sweep's runner in: its envs.
ENV_SETTINGS = ("env",)


def sweep_settings(runner: EvalRunner, settings: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """What the numbers of ``runner``'s evaluations depend on besides the checkpoint.

    The env factory and the evaluator with its agent (by ``module.qualname``: a lambda's name
    tells little, so pass ``settings``), ``num_envs`` (episode quotas and seeds are per
    slot), ``num_episodes``, ``max_steps``, ``deterministic``, ``seed``, ``tasks`` or
    ``suites``, ``success_key``, ``info_keys``, ``interchangeable_slots``, ``set_task``,
    ``metrics_fn`` and ``ci``; then ``settings`` over them. Not the backend, the device or
    videos: they do not change the numbers. JSON-plain, as recorded on each results line.
    """
    plan = runner.plan[0]
    envs, evaluator = runner.envs, runner.evaluator
    agent = getattr(evaluator, "agent", None)
    found = {
        "env": stable_name(envs.factory),
        "evaluator": None if evaluator is None else stable_name(type(evaluator)) + (
            "" if agent is None else f"({stable_name(type(agent))})"),
        "num_envs": envs.num_envs,
        "num_episodes": plan.num_episodes,
        "max_steps": plan.max_steps,
        "deterministic": plan.deterministic,
        "seed": plan.seed,
        "tasks": None if plan.suite is not None else plan.tasks,
        "suites": None if plan.suite is None else {s.suite: s.tasks for s in runner.plan},
        "success_key": plan.success_key,
        "info_keys": plan.info_keys,
        "interchangeable_slots": plan.interchangeable_slots,
        "set_task": stable_name(envs.set_task),
        "metrics_fn": stable_name(runner.metrics_fn),
        "ci": plan.ci,
    }
    return plain({**found, **(settings or {})})


def settings_sha256(settings: Mapping[str, Any]) -> str:
    """The fingerprint of :func:`sweep_settings`: the SHA-256 of their canonical JSON (sorted
    keys), the same in every run and after a round trip through a results file."""
    text = json.dumps(plain(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def plain(value: Any) -> Any:
    """``value`` as JSON-plain data: numbers, strings, lists and string-keyed dicts; anything
    else by its :func:`stable_name`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return stable_name(value)


def stable_name(thing: Any) -> str | None:
    """A name of a function, class, partial or env that is the same in every run (never a
    memory address, which would make every rerun look like other settings)."""
    if thing is None:
        return None
    if isinstance(thing, GivenEnvs):
        thing = thing.envs
    if isinstance(thing, (gym.Env, gym.vector.VectorEnv)):
        spec = getattr(thing, "spec", None)
        return spec.id if spec is not None else stable_name(type(thing))
    if isinstance(thing, functools.partial):
        arguments = [json.dumps(plain(argument)) for argument in thing.args]
        arguments += [f"{key}={json.dumps(plain(item))}" for key, item in
                      sorted(thing.keywords.items())]
        return f"{stable_name(thing.func)}({', '.join(arguments)})"
    if not hasattr(thing, "__qualname__"):
        thing = type(thing)  # an instance: its class names it
    return f"{thing.__module__}.{thing.__qualname__}"
