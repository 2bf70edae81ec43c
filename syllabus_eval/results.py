"""From episode records to the flat, log-ready metrics of one evaluation.

Usage::

    from syllabus_eval import summarize

    result = summarize(episodes, step=10_000, elapsed=2.5)
    wandb.log(result)                 # the metrics: {"eval/reward": ..., ...}
    result.episodes[0].length         # the per-episode records stay available

Metrics (DESIGN.md): ``eval/reward`` (mean return: the raw return where the env records episode
statistics, see :class:`~syllabus_eval.EpisodeRecord`), ``eval/wrapped_reward`` (the mean of
what the agent received, only where reward wrappers made it differ), ``eval/reward_std``
(population standard deviation), ``eval/episode_length`` (mean), ``eval/num_episodes``,
``eval/fps`` (counted env steps per second of the evaluation's wall-clock time), ``eval/step``
(when given),
``eval/success`` (the success rate over the episodes whose last info reported one; absent when
none did), per task ``eval/task/<task>/reward``, ``.../success``, ``.../episode_length`` and
``.../num_episodes``, and the ``metrics_fn(episodes)`` keys under ``eval/``. Records are taken
in ``(env_index, episode_index)`` order, so the same episodes give the same numbers however
they were gathered (only ``eval/fps`` depends on timing).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .errors import bad_argument
from .rollout import EpisodeRecord, sort_records

PREFIX = "eval/"

MetricsFn = Callable[[Sequence[EpisodeRecord]], Mapping[str, Any]]


class EvalResult(dict):
    """The metrics of one evaluation (a plain ``dict[str, float | int]``), plus its records.

    What :meth:`EvalRunner.evaluate`, :meth:`~EvalRunner.poll`, :meth:`~EvalRunner.wait`
    return and ``on_result`` receives: log it as it is.

    Attributes:
        episodes: the :class:`EpisodeRecord` of every counted episode, in
            ``(env_index, episode_index)`` order.
        step: the step the evaluation was triggered at (``None`` if none was given).
        weights_version: the version of the weights evaluated (the training agent's optimizer
            steps, as ``Evaluator.weights_version`` counts them; ``None`` when unknown).
        on_result_error: the exception ``on_result`` raised for this result, if any.
        is_best: whether it beat every earlier result of its runner (``best_metric``).
    """

    def __init__(self, metrics: Mapping[str, float | int], episodes: Iterable[EpisodeRecord],
                 step: int | None = None) -> None:
        super().__init__(metrics)
        self.episodes: tuple[EpisodeRecord, ...] = tuple(episodes)
        self.step = step
        self.weights_version: int | None = None
        self.is_best: bool | None = None  # set by the runner when it ranks results
        self.on_result_error: BaseException | None = None

    @property
    def metrics(self) -> dict[str, float | int]:
        """The metrics as a plain ``dict``."""
        return dict(self)


def summarize(episodes: Iterable[EpisodeRecord], *, step: int | None = None,
              elapsed: float | None = None, metrics_fn: MetricsFn | None = None) -> EvalResult:
    """The :class:`EvalResult` of a set of finished episodes.

    Args:
        episodes: the records (any order; they are sorted).
        step: the training step the evaluation belongs to.
        elapsed: wall-clock seconds the evaluation took (for ``eval/fps``).
        metrics_fn: ``metrics_fn(episodes) -> {name: number}``; names go under ``eval/``.
    """
    episodes = sort_records(episodes)
    if not episodes:
        raise bad_argument("episodes", "at least one episode record", episodes)
    metrics: dict[str, float | int] = _group_metrics(PREFIX, episodes)
    metrics[PREFIX + "reward_std"] = float(np.std([r.reward for r in episodes]))
    if elapsed is not None and elapsed > 0:
        metrics[PREFIX + "fps"] = sum(r.length for r in episodes) / elapsed
    if step is not None:
        metrics[PREFIX + "step"] = step
    by_task: dict[str, list[EpisodeRecord]] = {}  # by name: tasks need not be hashable
    for record in episodes:
        if record.task is not None:
            by_task.setdefault(str(record.task), []).append(record)
    for name, group in by_task.items():
        metrics.update(_group_metrics(f"{PREFIX}task/{name}/", group))
    if metrics_fn is not None:
        for name, value in metrics_fn(episodes).items():
            key = name if str(name).startswith(PREFIX) else f"{PREFIX}{name}"
            if key in metrics:
                raise ValueError(f"metrics_fn: its metric {name!r} clashes with the built-in "
                                 f"{key!r}")
            metrics[key] = _number(value, f"metrics_fn()[{name!r}]")
    return EvalResult(metrics, episodes, step)


def _group_metrics(prefix: str, episodes: list[EpisodeRecord]) -> dict[str, float | int]:
    group = {
        prefix + "reward": float(np.mean([r.reward for r in episodes])),
        prefix + "episode_length": float(np.mean([r.length for r in episodes])),
        prefix + "num_episodes": len(episodes),
    }
    reported = [r.success for r in episodes if r.success is not None]
    if reported:
        group[prefix + "success"] = float(np.mean(reported))
    if any(r.wrapped_reward is not None for r in episodes):  # reward wrappers changed them
        group[prefix + "wrapped_reward"] = float(np.mean(
            [r.reward if r.wrapped_reward is None else r.wrapped_reward for r in episodes]))
    return group


def _number(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (numbers.Real, np.number)) or (isinstance(value, np.ndarray)
                                                        and value.size == 1):
        return float(value)
    raise bad_argument(name, "a number", value)
