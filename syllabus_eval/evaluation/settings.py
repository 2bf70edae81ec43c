"""The runner's typed parts put together: the plan of each evaluation, the checks across parts,
the settings on record, and the keywords that moved into the parts.

Usage (what :class:`~syllabus_eval.EvalRunner` does with its arguments)::

    plan = build_plan(20, EpisodeSettings(seed=1), tasks=None, suites=None, video=None)
    record(EpisodeSettings(seed=1))      # {"max_steps": None, ..., "seed": 1, ...}: JSON-ready
    EvalRunner(make_env, evaluator, eval_every=100)   # TypeError: eval_every= moved: pass
                                                      # schedule=EvalSchedule(every=...)
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym

from syllabus_eval.errors import ArgumentError, MovedArgumentError, bad_argument
from syllabus_eval.evaluation.tracking import ResultTracker, SaveBest
from syllabus_eval.query.protocols import AgentQueries, WeightedAgentQueries
from syllabus_eval.rollout import EpisodeSettings, RolloutSettings
from syllabus_eval.rollout.video import VideoSettings

# Where each keyword of the former 41-parameter EvalRunner went: {old: new home}, by part.
_MOVED_BY_PART = {
    "envs=EnvSpec(make_env, {}=...)": ("num_envs", "vectorization_mode", "set_task"),
    "episodes=EpisodeSettings({}=...)": ("max_steps", "deterministic", "seed", "success_key",
                                         "info_keys", "ci", "interchangeable_slots"),
    "video=VideoSettings({}=...)": {"video_dir": "folder", "video_episodes": "episodes",
                                    "video_select": "select", "video_max_frames": "max_frames"},
    "schedule=EvalSchedule({}=...)": {"eval_every": "every", "busy_policy": "busy_policy"},
    "backend=ProcessBackend({}=...) or RayBackend({}=...)": (
        "env_fn", "evaluator_fn", "init_fn", "num_workers", "max_restarts", "timeout"),
    "backend=RayBackend({}=...)": ("address", "num_cpus", "num_gpus", "ray_kwargs"),
}
MOVED = {old: home.format(*[new] * home.count("{}"))
         for home, names in _MOVED_BY_PART.items()
         for old, new in (names.items() if isinstance(names, dict) else zip(names, names))}
MOVED.update({
    "make_env": "the env factory as envs, the first argument",
    "on_result": "callbacks=[...] (the same callables)",
    "save_best": "callbacks=[SaveBest(path)]",
    "best_metric": "callbacks=[SaveBest(path, metric=...)] (or StopOnNoImprovement(..., "
                   "metric=...))",
    "best_mode": "callbacks=[SaveBest(path, mode=...)] (or StopOnNoImprovement(..., mode=...))",
    "on_new_best": "callbacks=[SaveBest(path, on_new_best=...)]",
    "stop_reward": "callbacks=[StopOnReward(threshold, times=k)]",
    "stop_patience": "callbacks=[StopOnNoImprovement(patience)]",
})


def refuse_moved(init: Callable[..., None]) -> Callable[..., None]:
    """``init``, raising :class:`MovedArgumentError` for a keyword of :data:`MOVED` (rather
    than Python's bare "unexpected keyword")."""
    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        for name in kwargs:
            if name in MOVED:
                raise MovedArgumentError(name, MOVED[name])
        init(self, *args, **kwargs)
    return checked


def of_type(name: str, value: Any, kind: type, default: Any = None) -> Any:
    """``value`` (``default`` for ``None``), which must be a ``kind``."""
    if value is None:
        return default
    if not isinstance(value, kind):
        raise bad_argument(name, f"a {kind.__name__} or None", value)
    return value


def build_plan(num_episodes: int, episodes: EpisodeSettings, *, tasks: Sequence[Any] | None,
               suites: Mapping[str, Sequence[Any]] | None,
               video: VideoSettings | None) -> tuple[RolloutSettings, ...]:
    """The settings of each suite (one, without suites), checked."""
    if type(episodes) is not EpisodeSettings:  # a RolloutSettings would bring its own N
        raise bad_argument("episodes", "an EpisodeSettings (num_episodes, tasks and video are "
                           "the runner's own arguments) or None", episodes)
    if suites is None:
        return (episodes.run(num_episodes, tasks=tasks, video=video),)
    if tasks is not None:
        raise bad_argument("tasks", "None with suites (each suite names its tasks)", tasks)
    if not isinstance(suites, Mapping) or not suites:
        raise bad_argument("suites", "a non-empty dict {suite name: [tasks]}", suites)
    plan = []
    for name, suite_tasks in suites.items():
        try:
            plan.append(episodes.run(num_episodes, tasks=suite_tasks, suite=name, video=video))
        except ArgumentError as error:
            if error.argument != "tasks":
                raise
            raise error.renamed(f"suites[{name!r}]") from None
    return tuple(plan)


# Metrics an evaluation without suites reports, which suites report as eval/<suite>/...
_UNSUITED = ("eval/reward", "eval/wrapped_reward", "eval/success", "eval/episode_length",
             "eval/task/", "eval/info/")


def check_ranking(tracker: ResultTracker, suites: Mapping[str, Any] | None,
                  evaluator: AgentQueries | None) -> None:
    """What the callbacks need, checked now rather than after every evaluation has run."""
    metric = tracker.metric
    if tracker.ranks and suites is not None and metric.startswith(_UNSUITED):
        suite = next(iter(suites), "test") if isinstance(suites, Mapping) else "test"
        raise bad_argument("metric", f"with suites, a suite's metric such as "
                           f"'eval/{suite}/reward' (or 'eval/generalization_gap' with "
                           f"mode='min')", metric)
    saves = any(isinstance(c, SaveBest) and c.path is not None for c in tracker.callbacks)
    if saves and evaluator is not None and (
            not isinstance(evaluator, WeightedAgentQueries) or evaluator.agent is None):
        raise bad_argument("evaluator", "an evaluator whose agent has weights to save "
                           "(SaveBest in callbacks)", evaluator)


def record(value: Any) -> Any:
    """``value`` as JSON-ready data: a settings dataclass as the dict of its fields
    (``dataclasses.asdict``, without copying what they hold), a mode as its string, a path as
    text, a function, class or env by a name that is the same in every run."""
    if value is None or isinstance(value, (bool, int, float, str)) and not isinstance(
            value, enum.Enum):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {item.name: record(getattr(value, item.name))
                  for item in dataclasses.fields(value) if item.init}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(key): record(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [record(item) for item in value]
    return name_of(value)


def name_of(thing: Any) -> str:
    """A function's, class's, partial's or env's name (never a memory address)."""
    if isinstance(thing, (gym.Env, gym.vector.VectorEnv)):
        spec = getattr(thing, "spec", None)
        return spec.id if spec is not None else name_of(type(thing))
    if isinstance(thing, functools.partial):
        return f"{name_of(thing.func)}(...)"
    if not hasattr(thing, "__qualname__"):
        thing = type(thing)  # an instance: its class names it
    return f"{thing.__module__}.{thing.__qualname__}"


def check_evaluator(evaluator: Any, evaluator_fn: Any) -> None:
    """An evaluator, or none where the backend builds one in each worker."""
    if evaluator is None:
        if evaluator_fn is None:
            raise ArgumentError("evaluator", "expected an Evaluator; only a worker backend "
                                "goes without one, building it in each worker: "
                                "ProcessBackend(evaluator_fn=...) or RayBackend(evaluator_fn="
                                "...), got None")
    elif not isinstance(evaluator, AgentQueries):
        raise bad_argument("evaluator", "an Evaluator (an object with get_action, "
                           "get_value and get_action_and_value)", evaluator)


__all__ = ["MOVED", "build_plan", "check_evaluator", "check_ranking", "name_of",
           "of_type", "record", "refuse_moved"]
