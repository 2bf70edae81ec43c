"""From episode records to the flat, log-ready metrics of one evaluation.

Usage::

    from syllabus_eval import summarize

    result = summarize(episodes, step=10_000, elapsed=2.5, ci=0.95, seed=0)
    wandb.log(result)                 # the metrics: {"eval/reward": ..., ...}
    result["eval/reward"].item()      # numbers answer .item(), as TorchRL's callbacks expect
    result.episodes[0].length         # the per-episode records stay available

Metrics of a group of episodes under a prefix (``eval/``; per task ``eval/task/<task>/``; per
suite ``eval/<suite>/`` and ``eval/<suite>/task/<task>/``):

* ``reward`` (mean return: the raw return where the env records episode statistics, see
  :class:`~syllabus_eval.EpisodeRecord`), ``reward_std`` (population standard deviation),
  ``reward_iqm`` (the interquartile mean), ``reward_ci_low`` / ``reward_ci_high`` (the BCa
  bootstrap interval of the mean at ``ci``, seeded), ``episode_length`` (mean),
  ``num_episodes``, ``truncated`` (how many were truncated, by the env's own limit or by
  ``max_steps``) and ``max_steps_cut`` (how many of those ``max_steps`` cut);
* ``success`` (the rate over the episodes whose last info reported one; absent when none did)
  with its Wilson interval ``success_ci_low`` / ``success_ci_high``;
* ``wrapped_reward`` (the mean of what the agent received, only where reward wrappers made it
  differ from ``reward``);
* ``info/<key>`` (the mean over episodes of each ``info_keys`` reduction) and
  ``info/<key>/missing`` (episodes that never reported it, left out of that mean).

At the top: ``eval/num_episodes``, ``eval/fps`` (counted env steps per second of the
evaluation's wall-clock time), ``eval/step`` (when given), with suites
``eval/generalization_gap`` (the ``train`` suite's mean return minus the ``test`` suite's), and
the ``metrics_fn(episodes)`` keys under ``eval/``. ``ci=None`` leaves the intervals out.
Records are taken in ``(suite, env_index, episode_index)`` order, so the same episodes give
the same numbers however they were gathered (only ``eval/fps`` depends on timing).
"""

from __future__ import annotations

import numbers
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from syllabus_eval.errors import bad_argument, check_number
from syllabus_eval.results.statistics import bootstrap_ci, iqm, wilson_ci
from syllabus_eval.rollout import EpisodeRecord, sort_records

PREFIX = "eval/"

MetricsFn = Callable[[Sequence[EpisodeRecord]], Mapping[str, Any]]


class _Float(float):
    """A metric: a plain float that also answers ``.item()``, as NumPy and torch scalars do
    (callbacks written for TorchRL's Evaluator call it)."""

    __slots__ = ()

    def item(self) -> float:
        return float(self)


class _Int(int):
    """A count: a plain int that also answers ``.item()``."""

    __slots__ = ()

    def item(self) -> int:
        return int(self)


class EvalResult(dict):
    """The metrics of one evaluation (a ``dict`` of numbers), plus its records.

    What :meth:`EvalRunner.evaluate`, :meth:`~EvalRunner.poll`, :meth:`~EvalRunner.wait`
    return and ``on_result`` receives: log it as it is. Each value is a ``float`` or an
    ``int`` that also has ``.item()``.

    Attributes:
        episodes: the :class:`EpisodeRecord` of every counted episode, in
            ``(suite, env_index, episode_index)`` order.
        step: the step the evaluation was triggered at (``None`` if none was given).
        weights_version: the version of the weights evaluated (the training agent's optimizer
            steps, as ``Evaluator.weights_version`` counts them; ``None`` when unknown).
        on_result_error: the exception ``on_result`` raised for this result, if any.
        is_best: whether it beat every earlier result of its runner (``best_metric``).
        videos: the videos the evaluation wrote (``video=``), as
            :class:`~syllabus_eval.rollout.video.VideoFile` s.
        settings: the runner's settings, JSON-ready (``EvalRunner.settings``): what the
            result was evaluated with, on record.
    """

    def __init__(self, metrics: Mapping[str, float | int], episodes: Iterable[EpisodeRecord],
                 step: int | None = None) -> None:
        super().__init__(metrics)
        self.episodes: tuple[EpisodeRecord, ...] = tuple(episodes)
        self.step = step
        self.weights_version: int | None = None
        self.is_best: bool | None = None  # set by the runner when it ranks results
        self.videos: list = []
        self.on_result_error: BaseException | None = None
        self.settings: dict | None = None  # set by the runner

    @property
    def metrics(self) -> dict[str, float | int]:
        """The metrics as a plain ``dict``."""
        return dict(self)


def summarize(episodes: Iterable[EpisodeRecord], *, step: int | None = None,
              elapsed: float | None = None, metrics_fn: MetricsFn | None = None,
              ci: float | None = 0.95, seed: int | None = 0,
              info_keys: Iterable[str] | None = None) -> EvalResult:
    """The :class:`EvalResult` of a set of finished episodes.

    Args:
        episodes: the records (any order; they are sorted).
        step: the training step the evaluation belongs to.
        elapsed: wall-clock seconds the evaluation took (for ``eval/fps``).
        metrics_fn: ``metrics_fn(episodes) -> {name: number}``; names go under ``eval/``.
        ci: the confidence level of the intervals; ``None``: no intervals.
        seed: seeds the bootstrap (``None``: 0), so the same episodes give the same intervals.
        info_keys: the info keys the episodes were asked to report (the ``info_keys`` of
            :class:`~syllabus_eval.RolloutSettings`); default: those any episode reported.
    """
    episodes = sort_records(episodes)
    if not episodes:
        raise bad_argument("episodes", "at least one episode record", episodes)
    if ci is not None:
        check_number("ci", ci, 0.0, 1.0, low_open=True, high_open=True)
    keys = list(info_keys) if info_keys is not None else list(
        dict.fromkeys(key for record in episodes for key in record.info))
    group = _Grouper(ci, 0 if seed is None else seed, keys)
    metrics: dict[str, float | int] = {}
    suites: dict[str, list[EpisodeRecord]] = {}
    for record in episodes:
        suites.setdefault(record.suite, []).append(record)
    if list(suites) == [None]:
        metrics.update(group.with_tasks(PREFIX, episodes))
    else:
        for suite, records in suites.items():
            metrics.update(group.with_tasks(f"{PREFIX}{suite}/", records))
        metrics[PREFIX + "num_episodes"] = _Int(len(episodes))
        if "train" in suites and "test" in suites:
            metrics[PREFIX + "generalization_gap"] = _Float(
                metrics[PREFIX + "train/reward"] - metrics[PREFIX + "test/reward"])
    if elapsed is not None and elapsed > 0:
        metrics[PREFIX + "fps"] = _Float(sum(r.length for r in episodes) / elapsed)
    if step is not None:
        metrics[PREFIX + "step"] = _Int(step)
    if metrics_fn is not None:
        for name, value in metrics_fn(episodes).items():
            key = name if str(name).startswith(PREFIX) else f"{PREFIX}{name}"
            if key in metrics:
                raise ValueError(f"metrics_fn: its metric {name!r} clashes with the built-in "
                                 f"{key!r}")
            metrics[key] = _Float(_number(value, f"metrics_fn()[{name!r}]"))
    return EvalResult(metrics, episodes, step)


class _Grouper:
    """The metrics of groups of episodes (module docs), with one confidence level and seed."""

    def __init__(self, ci: float | None, seed: int, info_keys: list[str]) -> None:
        self.ci, self.seed, self.info_keys = ci, seed, info_keys

    def with_tasks(self, prefix: str, episodes: list[EpisodeRecord]) -> dict[str, Any]:
        """A group's metrics, and those of each of its tasks under ``<prefix>task/<task>/``."""
        metrics = self.of(prefix, episodes)
        by_task: dict[str, list[EpisodeRecord]] = {}  # by name: tasks need not be hashable
        for record in episodes:
            if record.task is not None:
                by_task.setdefault(str(record.task), []).append(record)
        for name, group in by_task.items():
            metrics.update(self.of(f"{prefix}task/{name}/", group))
        return metrics

    def of(self, prefix: str, episodes: list[EpisodeRecord]) -> dict[str, Any]:
        rewards = [r.reward for r in episodes]
        group: dict[str, Any] = {
            prefix + "reward": _Float(np.mean(rewards)),
            prefix + "reward_std": _Float(np.std(rewards)),
            prefix + "reward_iqm": _Float(iqm(rewards)),
            prefix + "episode_length": _Float(np.mean([r.length for r in episodes])),
            prefix + "num_episodes": _Int(len(episodes)),
            prefix + "truncated": _Int(sum(r.truncated for r in episodes)),
            prefix + "max_steps_cut": _Int(sum(r.cut for r in episodes)),
        }
        if self.ci is not None:
            # A seed per group, the same in every process: intervals are reproducible.
            low, high = bootstrap_ci(rewards, self.ci, seed=(self.seed, zlib.crc32(
                prefix.encode())))
            group[prefix + "reward_ci_low"], group[prefix + "reward_ci_high"] = (
                _Float(low), _Float(high))
        reported = [r.success for r in episodes if r.success is not None]
        if reported:
            group[prefix + "success"] = _Float(np.mean(reported))
            if self.ci is not None:
                low, high = wilson_ci(sum(reported), len(reported), self.ci)
                group[prefix + "success_ci_low"], group[prefix + "success_ci_high"] = (
                    _Float(low), _Float(high))
        if any(r.wrapped_reward is not None for r in episodes):  # reward wrappers changed them
            group[prefix + "wrapped_reward"] = _Float(np.mean(
                [r.reward if r.wrapped_reward is None else r.wrapped_reward for r in episodes]))
        for key in self.info_keys:
            values = [r.info[key] for r in episodes if key in r.info]
            group[f"{prefix}info/{key}"] = _Float(np.mean(values) if values else np.nan)
            group[f"{prefix}info/{key}/missing"] = _Int(len(episodes) - len(values))
        return group


def _number(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (numbers.Real, np.number)) or (isinstance(value, np.ndarray)
                                                        and value.size == 1):
        return float(value)
    raise bad_argument(name, "a number", value)
