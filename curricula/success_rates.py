"""Per-task success rates in: the pieces the curricula fed by evaluations share.

Usage::

    from syllabus_eval.curricula.success_rates import (PeriodicEvaluation, check_rates,
                                                       rates_from_metrics)

    rates = rates_from_metrics(metrics, task_space)   # {task: rate} of eval/.../task/<task>/success
    checked = check_rates(rates, task_space)          # {task index: rate}, every entry checked
    background = PeriodicEvaluation(evaluate_fn, 60.0, curriculum.on_result, "name")
    background.check(); background.close()

:class:`~syllabus_eval.curricula.LearningProgressCurriculum` and
:class:`~syllabus_eval.curricula.Learnability` read the rollout engine's flat metrics the same
way (``eval/task/<task>/success`` or per suite, ``<task>`` being ``str(task)``) and take the
same optional background evaluations.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

from syllabus_eval.errors import bad_argument, check_number

from .background import BackgroundThread
from .curriculum import Curriculum
from .task_space import DiscreteTaskSpace

# eval/task/<task>/success, or eval/<suite>/task/<task>/success with the runner's suites=
SUCCESS_KEY = re.compile(r"^eval/(?:[^/]+/)?task/(?P<task>.+)/success$")


def rates_from_metrics(metrics: Mapping[str, Any], task_space: DiscreteTaskSpace
                       ) -> dict[Hashable, Any]:
    """``{task: rate}`` of the per-task success keys of a metrics dict: ``eval/task/<task>/
    success``, or ``eval/<suite>/task/<task>/success`` from a runner with ``suites=``. A task
    in several suites gets their rates weighted by their ``num_episodes``.

    Raises:
        ValueError: ``metrics`` is not a dict, has no such key, or names an unknown task.
    """
    if not isinstance(metrics, Mapping):
        raise bad_argument("metrics", "a metrics dict", metrics)
    found: dict[Hashable, list[tuple[Any, float]]] = {}
    for key, value in metrics.items():
        match = SUCCESS_KEY.match(key) if isinstance(key, str) else None
        if match is not None and "/task/" not in match["task"]:
            episodes = metrics.get(key.removesuffix("success") + "num_episodes", 1)
            found.setdefault(task_space.from_name(match["task"]), []).append((value, episodes))
    if not found:
        raise bad_argument("metrics", "per-task success rates under keys "
                           "'eval/task/<task>/success' or 'eval/<suite>/task/<task>/success'",
                           metrics)
    return {task: pairs[0][0] if len(pairs) == 1 else
            sum(rate * n for rate, n in pairs) / sum(n for _, n in pairs)
            for task, pairs in found.items()}


def check_rates(rates: Mapping[Hashable, Any], task_space: DiscreteTaskSpace
                ) -> dict[int, float]:
    """``{task index: rate}`` with every rate a finite number in [0, 1]; all checked before
    any is returned, so that a bad entry (NaN and inf included) changes nothing.

    Raises:
        ValueError: ``rates`` is not a non-empty dict, names an unknown task, or holds a rate
            that is not a number in [0, 1] (``rates[<task>]`` named).
    """
    if not isinstance(rates, Mapping) or not rates:
        raise bad_argument("rates", "a non-empty dict {task: success rate}", rates)
    return {task_space.index(task, "rates"):
            check_number(f"rates[{task!r}]", _plain(rate), 0.0, 1.0)
            for task, rate in rates.items()}


def check_evaluate_fn(evaluate_fn: object, eval_interval: object) -> float:
    """Check the background evaluation's settings; return ``eval_interval`` as a float."""
    if evaluate_fn is not None and not callable(evaluate_fn):
        raise bad_argument("evaluate_fn", "a callable returning a metrics dict, or None",
                           evaluate_fn)
    return check_number("eval_interval", eval_interval, 0.0)


class SuccessRateCurriculum(Curriculum):
    """What the curricula fed by per-task success rates share: checked measurements in
    (:meth:`update_success_rates`, :meth:`on_result`), optional background evaluations, and
    their failures surfaced. A subclass applies one measurement in :meth:`_take_rates` and
    calls :meth:`_measure_in_background` once its own state exists."""

    def __init__(self, task_space: DiscreteTaskSpace | int | Any, *, evaluate_fn: Any,
                 eval_interval: float, seed: int | None) -> None:
        super().__init__(task_space, seed=seed)
        self.eval_interval = check_evaluate_fn(evaluate_fn, eval_interval)
        self.num_updates = 0  # measurements taken in so far
        self._evaluator: PeriodicEvaluation | None = None

    def _measure_in_background(self, evaluate_fn: Callable[[], Mapping[str, Any]] | None
                               ) -> None:
        if evaluate_fn is not None:
            self._evaluator = PeriodicEvaluation(evaluate_fn, self.eval_interval,
                                                 self.on_result, f"{type(self).__name__} "
                                                 "evaluation")

    def update_success_rates(self, rates: Mapping[Hashable, float]) -> None:
        """Take one measurement: ``{task: success rate in [0, 1]}`` (any subset of the tasks).

        Every entry is checked before any is applied: a bad one (NaN and inf included)
        changes nothing.
        """
        checked = check_rates(rates, self.task_space)
        with self._lock:
            self._take_rates(checked)
            self.num_updates += 1

    def _take_rates(self, checked: dict[int, float]) -> None:
        """Apply one checked measurement ``{task index: rate}`` (under the lock)."""
        raise NotImplementedError

    def on_result(self, metrics: Mapping[str, Any]) -> None:
        """Take the per-task success rates of a metrics dict (``eval/task/<task>/success``,
        or per suite): one of an :class:`~syllabus_eval.EvalRunner`'s ``callbacks``."""
        self.update_success_rates(rates_from_metrics(metrics, self.task_space))

    def _check(self) -> None:
        if self._evaluator is not None:
            self._evaluator.check()

    def close(self) -> None:
        """Stop background measurements (after the one running, if any) and raise a failure
        nobody was told of yet."""
        if self._evaluator is not None:
            self._evaluator.close()


class PeriodicEvaluation:
    """A thread that calls ``evaluate_fn()`` at once, then ``interval`` seconds after each call
    returns, and hands each metrics dict to ``on_result``.

    A failure (of ``evaluate_fn`` or ``on_result``) ends the thread; :meth:`check` raises it
    as :class:`~syllabus_eval.CurriculumError`, and :meth:`close` if nobody was told yet.
    """

    def __init__(self, evaluate_fn: Callable[[], Mapping[str, Any]], interval: float,
                 on_result: Callable[[Mapping[str, Any]], None], name: str) -> None:
        self._evaluate_fn, self._interval, self._on_result = evaluate_fn, interval, on_result
        self._stop = threading.Event()
        self._thread = BackgroundThread(self._run, name)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._on_result(self._evaluate_fn())
            self._stop.wait(self._interval)

    def check(self) -> None:
        """Raise the thread's failure, if it failed."""
        self._thread.check()

    def close(self) -> None:
        """Stop after the evaluation running, if any (not waiting out the interval)."""
        self._stop.set()
        self._thread.join()


def _plain(rate: Any) -> Any:
    """A numpy scalar as a Python float, so that an error about it shows the number (``nan``)
    rather than its dtype."""
    if isinstance(rate, np.floating):
        return float(rate)
    return rate
