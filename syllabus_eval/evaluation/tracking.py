"""What happens to each result: the ranking, the callbacks, the best model and stopping rules.

Usage (the runner's ``callbacks=``)::

    from syllabus_eval import SaveBest, StopOnNoImprovement, StopOnReward

    runner = EvalRunner(make_env, evaluator, callbacks=[
        print, JSONLinesLogger("runs/eval.jsonl"),          # any callable, given each result
        SaveBest("runs/best.pt", on_new_best=announce),     # the best result's snapshot
        StopOnReward(475.0, times=3),                       # runner.should_stop after 3 in a row
        StopOnNoImprovement(patience=10)])

Composition rather than options, as SB3's ``EvalCallback`` takes ``callback_on_new_best`` and
its stopping rules (``StopTrainingOnRewardThreshold``, ``StopTrainingOnNoModelImprovement``).

**Ranking.** The runner ranks every result by one metric (``"eval/reward"``, higher is better,
unless the ranking callbacks name another: :class:`SaveBest` and :class:`StopOnNoImprovement`,
which must then agree): a result that beats every earlier one (NaN never does) has
``result.is_best``, and :attr:`ResultTracker.best` is its value (``runner.best``).

**Callbacks** then run in the order given, on the runner's thread, before ``wait`` returns the
result: plain callables get the result; a :class:`ResultCallback` (the three here, and any a
user writes) also gets the snapshot it was evaluated on. One that raises is logged, its error
kept on ``result.on_result_error`` (the first, if several raise), and the others still run.
``runner.should_stop`` is set once any callback's ``should_stop`` is true (any object with that
attribute counts), and stays set: a loop that looks after several results still stops.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syllabus_eval.errors import (
    Choice,
    bad_argument,
    check_choice,
    check_count,
    check_number,
)
from syllabus_eval.evaluation.checkpoints import save_checkpoint
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.results.metrics import EvalResult

logger = logging.getLogger(__name__)

Callback = Callable[[EvalResult], Any]


class BestMode(Choice):
    """Which way a metric is better."""

    MAX = "max"
    MIN = "min"


class ResultCallback:
    """A callback with state (SB3's ``BaseCallback``, for results): subclass it and override
    :meth:`on_result`; it may set :attr:`should_stop`. Plain functions work as callbacks too."""

    #: whether training may stop, by this callback's rule
    should_stop: bool = False

    def __call__(self, result: EvalResult) -> None:
        self.on_result(result, None)

    def on_result(self, result: EvalResult, snapshot: Snapshot | None) -> None:
        """Take ``result``, evaluated on ``snapshot`` (the weights at trigger time)."""

    def state_dict(self) -> dict[str, Any]:
        """Its counters, to resume a run (plain numbers)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Carry on from :meth:`state_dict`."""


class _Ranked(ResultCallback):
    """A callback about one metric (its ``metric`` field), better one way (``mode``)."""

    metric: str
    mode: BestMode

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise bad_argument("metric", "a metric name such as 'eval/reward'", self.metric)
        self.mode = check_choice("mode", self.mode, BestMode)

    def value(self, result: EvalResult) -> float:
        if self.metric not in result:
            raise bad_argument("metric", f"one of the result's metrics {sorted(result)}",
                               self.metric)
        return float(result[self.metric])

    def beyond(self, value: float, threshold: float) -> bool:
        """``value`` is at or beyond ``threshold`` (NaN never is)."""
        return (value >= threshold) if self.mode is BestMode.MAX else (value <= threshold)


@dataclass(eq=False)
class SaveBest(_Ranked):
    """Writes the snapshot of each new best result to ``path`` (the weights it was evaluated
    on, not those training moved on to; :mod:`syllabus_eval.evaluation.checkpoints`), then
    calls ``on_new_best``. Ranks the runner's results by ``metric`` (module docs)."""

    path: str | os.PathLike | None = None
    """Where the best snapshot is written (its observation statistics, step and metrics too);
    ``None``: nowhere (``on_new_best`` only)."""
    metric: str = "eval/reward"
    """The metric that ranks results (with suites, a suite's: ``"eval/test/reward"``)."""
    mode: BestMode = BestMode.MAX
    """``"max"``: higher is better; ``"min"``: lower."""
    on_new_best: Callback | None = field(default=None, repr=False)
    """Called with each new best result (SB3's ``callback_on_new_best``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.path is not None and not isinstance(self.path, (str, os.PathLike)):
            raise bad_argument("path", "a file path or None", self.path)
        if self.on_new_best is not None and not callable(self.on_new_best):
            raise bad_argument("on_new_best", "a callable or None", self.on_new_best)

    def on_result(self, result: EvalResult, snapshot: Snapshot | None) -> None:
        if not result.is_best:
            return
        if self.path is not None:
            save_checkpoint(self.path, snapshot, metrics=result)
        if self.on_new_best is not None:
            self.on_new_best(result)


@dataclass(eq=False)
class StopOnReward(_Ranked):
    """``should_stop`` once ``times`` results in a row have ``metric`` at or beyond
    ``threshold`` (SB3's ``StopTrainingOnRewardThreshold``; ``times`` > 1 is robust to one
    lucky evaluation)."""

    threshold: float
    """The value to reach (at or above with ``mode="max"``, at or below with ``"min"``)."""
    times: int = 1
    """Consecutive results that must reach it."""
    metric: str = "eval/reward"
    """The metric compared."""
    mode: BestMode = BestMode.MAX
    """``"max"``: reach it from below; ``"min"``: from above."""
    _streak: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.threshold = check_number("threshold", self.threshold, -math.inf)
        self.times = check_count("times", self.times)

    def on_result(self, result: EvalResult, snapshot: Snapshot | None) -> None:
        reached = self.beyond(self.value(result), self.threshold)
        self._streak = self._streak + 1 if reached else 0
        self.should_stop = self.should_stop or self._streak >= self.times

    def state_dict(self) -> dict[str, Any]:
        return {"streak": self._streak, "stopped": self.should_stop}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._streak, self.should_stop = int(state["streak"]), bool(state["stopped"])


@dataclass(eq=False)
class StopOnNoImprovement(_Ranked):
    """``should_stop`` after ``patience`` results in a row without a new best (SB3's
    ``StopTrainingOnNoModelImprovement``). Ranks the runner's results by ``metric``."""

    patience: int
    """Results without a new best before stopping."""
    metric: str = "eval/reward"
    """The metric that ranks results."""
    mode: BestMode = BestMode.MAX
    """``"max"``: higher is better; ``"min"``: lower."""
    _since_best: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.patience = check_count("patience", self.patience)

    def on_result(self, result: EvalResult, snapshot: Snapshot | None) -> None:
        self._since_best = 0 if result.is_best else self._since_best + 1
        self.should_stop = self.should_stop or self._since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"since_best": self._since_best, "stopped": self.should_stop}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._since_best, self.should_stop = int(state["since_best"]), bool(state["stopped"])


def as_callbacks(value: Callback | Sequence[Callback] | None) -> list[Callback]:
    """``None``, one callable or a list of them, as a list (``ValueError`` for the rest)."""
    if value is None:
        return []
    callbacks = list(value) if isinstance(value, (list, tuple)) else [value]
    for callback in callbacks:
        if not callable(callback):
            raise bad_argument("callbacks", "a callable or None, or a list of callables", value)
    return callbacks


def ranking(callbacks: Sequence[Callback]) -> tuple[str, BestMode, bool]:
    """The metric and mode results are ranked by, and whether a callback asked for it."""
    rankers = [c for c in callbacks if isinstance(c, (SaveBest, StopOnNoImprovement))]
    orders = {(c.metric, c.mode) for c in rankers}
    if len(orders) > 1:
        raise bad_argument("callbacks", "callbacks that rank results by one metric and mode, "
                           "as the runner keeps one best", sorted(map(str, orders)))
    metric, mode = orders.pop() if orders else ("eval/reward", BestMode.MAX)
    return metric, mode, bool(rankers)


class ResultTracker:
    """The ranking and the callbacks of one runner (module docs).

    Args:
        callbacks: callables given each result (:class:`ResultCallback` ones with the
            snapshot too).
    """

    def __init__(self, callbacks: Callback | Sequence[Callback] | None = None) -> None:
        self.callbacks = as_callbacks(callbacks)
        self.metric, self.mode, self.ranks = ranking(self.callbacks)
        self._lock = threading.Lock()  # the counters are read from the training thread
        self.best: float | None = None  # the best metric so far
        self.best_step: int | None = None
        self.evaluations = 0  # results taken
        self._stopped = False  # a stopping rule fired (it stays fired: a loop may look late)

    @property
    def should_stop(self) -> bool:
        """Whether a callback's stopping rule has fired (module docs)."""
        with self._lock:
            return self._stopped

    def take(self, result: EvalResult, snapshot: Snapshot | None) -> None:
        """Rank ``result``, then call the callbacks."""
        with self._lock:
            self.evaluations += 1
        if self.metric in result:
            self._rank(float(result[self.metric]), result)
        elif self.ranks:
            raise bad_argument("metric", f"one of the result's metrics {sorted(result)}",
                               self.metric)
        for callback in self.callbacks:
            try:
                if isinstance(callback, ResultCallback):
                    callback.on_result(result, snapshot)
                else:
                    callback(result)
            except Exception as error:
                if result.on_result_error is None:
                    result.on_result_error = error
                logger.exception("a callback raised for the evaluation at step %s; the runner "
                                 "goes on (the error is on result.on_result_error)",
                                 result.step)
        stop = any(getattr(callback, "should_stop", False) is True
                   for callback in self.callbacks)
        with self._lock:
            self._stopped = self._stopped or stop

    def _rank(self, value: float, result: EvalResult) -> None:
        sign = 1.0 if self.mode is BestMode.MAX else -1.0
        with self._lock:
            new_best = not math.isnan(value) and (
                self.best is None or sign * (value - self.best) > 0)
            if new_best:
                self.best, self.best_step = value, result.step
        result.is_best = new_best

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"best": self.best, "best_step": self.best_step,
                    "evaluations": self.evaluations, "stopped": self._stopped,
                    "callbacks": [[type(c).__name__, c.state_dict()] for c in self.callbacks
                                  if isinstance(c, ResultCallback)]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Carry on from :meth:`state_dict`; the counters of each :class:`ResultCallback` go
        to the one of the same class at the same place among them (a callback the new runner
        lacks is left behind, though a stop it fired stays fired)."""
        try:
            best = None if state["best"] is None else float(state["best"])
            evaluations, best_step = int(state["evaluations"]), state["best_step"]
            stopped = state.get("stopped", False)
            if not isinstance(stopped, bool):
                raise TypeError(stopped)
            ours = [c for c in self.callbacks if isinstance(c, ResultCallback)]
            for callback, (name, saved) in zip(ours, state.get("callbacks", [])):
                if type(callback).__name__ == name:
                    callback.load_state_dict(saved)
        except (KeyError, TypeError, ValueError):
            raise bad_argument("state['results']", "the results of EvalRunner.state_dict()",
                               state) from None
        with self._lock:
            self.best, self.best_step = best, best_step
            self.evaluations, self._stopped = evaluations, stopped


__all__ = ["BestMode", "Callback", "ResultCallback", "ResultTracker",
           "SaveBest", "StopOnNoImprovement", "StopOnReward", "as_callbacks"]
