"""What happens to each result: the best model, early stopping, the callbacks.

Usage (the runner builds one from its arguments)::

    tracker = ResultTracker([print, JSONLinesLogger("eval.jsonl")], save_best="best.pt",
                            stop_reward=(475.0, 3), stop_patience=10)
    tracker.take(result, snapshot)       # on the runner's thread, once per result
    tracker.should_stop                  # asked by the training loop

**Best model.** A result whose ``best_metric`` beats every earlier one (higher with
``best_mode="max"``, lower with ``"min"``; NaN never does) is the new best: with ``save_best``,
the snapshot it was evaluated on (not the weights training has moved on to) is written to that
path (:mod:`syllabus_eval.evaluation.checkpoints`), and ``on_new_best(result)`` is called.

**Stopping.** ``stop_reward=(threshold, k)``: stop after ``k`` consecutive results whose
``best_metric`` is at or beyond ``threshold`` (SB3's ``StopTrainingOnRewardThreshold``, made
robust to one lucky evaluation). ``stop_patience=p``: stop after ``p`` results in a row without
a new best (SB3's ``StopTrainingOnNoModelImprovement``). Either sets :attr:`should_stop`, which
then stays set (a loop that looks after several results have landed still stops).

**Callbacks** run after both, in the order given; one that raises is logged, its error kept on
``result.on_result_error`` (the first, if several raise), and the others still run.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from syllabus_eval.errors import bad_argument, check_count, check_number
from syllabus_eval.evaluation.checkpoints import save_checkpoint
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.results.metrics import EvalResult

logger = logging.getLogger(__name__)

BEST_MODES = ("max", "min")
Callback = Callable[[EvalResult], Any]


def as_callbacks(name: str, value: Callback | Sequence[Callback] | None) -> list[Callback]:
    """``None``, one callable or a list of them, as a list (``ValueError`` for the rest)."""
    if value is None:
        return []
    callbacks = list(value) if isinstance(value, (list, tuple)) else [value]
    for callback in callbacks:
        if not callable(callback):
            raise bad_argument(name, "a callable or None, or a list of callables", value)
    return callbacks


class ResultTracker:
    """The best result, the stopping rules and the callbacks of one runner (module docs).

    Args:
        on_result: callables given each result.
        save_best: where the best snapshot is written (``None``: nowhere).
        best_metric: the metric results are ranked by.
        best_mode: ``"max"`` or ``"min"``.
        on_new_best: called with each new best result, before ``on_result``.
        stop_reward: ``(threshold, k)``; ``None``: no threshold.
        stop_patience: results without a new best before stopping; ``None``: no limit.
    """

    def __init__(self, on_result: Callback | Sequence[Callback] | None = None, *,
                 save_best: str | os.PathLike | None = None,
                 best_metric: str = "eval/reward", best_mode: str = "max",
                 on_new_best: Callback | None = None,
                 stop_reward: tuple[float, int] | None = None,
                 stop_patience: int | None = None) -> None:
        self.callbacks = as_callbacks("on_result", on_result)
        if save_best is not None and not isinstance(save_best, (str, os.PathLike)):
            raise bad_argument("save_best", "a file path or None", save_best)
        if not isinstance(best_metric, str):
            raise bad_argument("best_metric", "a metric name such as 'eval/reward'",
                               best_metric)
        if best_mode not in BEST_MODES:
            raise bad_argument("best_mode", f"one of {list(BEST_MODES)}", best_mode)
        if on_new_best is not None and not callable(on_new_best):
            raise bad_argument("on_new_best", "a callable or None", on_new_best)
        if stop_reward is not None:
            if not isinstance(stop_reward, (tuple, list)) or len(stop_reward) != 2:
                raise bad_argument("stop_reward", "(threshold, k): stop after k results at or "
                                   "beyond threshold", stop_reward)
            stop_reward = (check_number("stop_reward[0]", stop_reward[0], -math.inf),
                           check_count("stop_reward[1]", stop_reward[1]))
        self.save_best = save_best
        self.best_metric, self.best_mode = best_metric, best_mode
        self.on_new_best = on_new_best
        self.stop_reward = stop_reward
        self.stop_patience = None if stop_patience is None else check_count("stop_patience",
                                                                              stop_patience)
        self._lock = threading.Lock()  # the counters are read from the training thread
        self.best: float | None = None  # the best metric so far
        self.best_step: int | None = None
        self.evaluations = 0  # results taken
        self._streak = 0  # consecutive results at or beyond the threshold
        self._since_best = 0  # results since the last new best
        self._stopped = False  # a stopping rule fired (it stays fired: a loop may look late)

    @property
    def ranks(self) -> bool:
        """Whether anything needs results ranked by ``best_metric``."""
        return (self.save_best is not None or self.on_new_best is not None
                or self.stop_reward is not None or self.stop_patience is not None)

    @property
    def should_stop(self) -> bool:
        """Whether a stopping rule has fired (module docs)."""
        with self._lock:
            return self._stopped

    def take(self, result: EvalResult, snapshot: Snapshot) -> None:
        """Rank ``result``, save it if it is the best, update the stopping rules, then call
        the callbacks."""
        with self._lock:
            self.evaluations += 1
        if self.best_metric in result:
            self._rank(result, snapshot)
        elif self.ranks:
            raise ValueError(f"best_metric: expected one of the result's metrics "
                             f"{sorted(result)}, got {self.best_metric!r}")
        for callback in self.callbacks:
            self._call(callback, result, "on_result")

    def _rank(self, result: EvalResult, snapshot: Snapshot) -> None:
        value = float(result[self.best_metric])
        sign = 1.0 if self.best_mode == "max" else -1.0
        with self._lock:
            best = self.best
            new_best = not math.isnan(value) and (best is None or sign * (value - best) > 0)
        result.is_best = new_best
        if new_best and self.save_best is not None:
            save_checkpoint(self.save_best, snapshot, metrics=result)
        with self._lock:
            if new_best:
                self.best, self.best_step, self._since_best = value, result.step, 0
            else:
                self._since_best += 1
            if self.stop_reward is not None:
                at_threshold = sign * (value - self.stop_reward[0]) >= 0
                self._streak = self._streak + 1 if at_threshold else 0
            reached = self.stop_reward is not None and self._streak >= self.stop_reward[1]
            stale = self.stop_patience is not None and self._since_best >= self.stop_patience
            self._stopped = self._stopped or reached or stale
        if new_best and self.on_new_best is not None:
            self._call(self.on_new_best, result, "on_new_best")

    def _call(self, callback: Callback, result: EvalResult, name: str) -> None:
        try:
            callback(result)
        except Exception as error:
            if result.on_result_error is None:
                result.on_result_error = error
            logger.exception("%s raised for the evaluation at step %s; the runner goes on "
                             "(the error is on result.on_result_error)", name, result.step)

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"best": self.best, "best_step": self.best_step,
                    "evaluations": self.evaluations, "streak": self._streak,
                    "since_best": self._since_best, "stopped": self._stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            best = None if state["best"] is None else float(state["best"])
            values = (int(state["evaluations"]), int(state["streak"]),
                      int(state["since_best"]))
            best_step = state["best_step"]
            stopped = state.get("stopped", False)
            if not isinstance(stopped, bool):
                raise TypeError(stopped)
        except (KeyError, TypeError, ValueError):
            raise bad_argument("state['results']", "the results of EvalRunner.state_dict()",
                               state) from None
        with self._lock:
            self.best, self.best_step = best, best_step
            self.evaluations, self._streak, self._since_best = values
            self._stopped = stopped
