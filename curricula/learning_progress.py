"""Learning progress (Kanitscheider et al., 2021): play the tasks whose success rate is changing.

Usage::

    from syllabus_eval.curricula import LearningProgressCurriculum

    # Success rates measured elsewhere (e.g. the rollout engine), handed over explicitly:
    curriculum = LearningProgressCurriculum(["wood", "stone", "iron"], seed=0)
    curriculum.update_success_rates({"wood": 0.9, "stone": 0.2, "iron": 0.0})
    curriculum.on_result({"eval/task/wood/success": 0.95, "eval/task/stone/success": 0.4})
    curriculum.sample(8)

    # Or measured periodically in the background by any function returning such metrics:
    with LearningProgressCurriculum(tasks, evaluate_fn=lambda: runner.evaluate(weights=agent),
                                    eval_interval=120.0) as curriculum:
        ...                                     # train; sample() follows the latest estimates

The interface for success rates is deliberately small: :meth:`~LearningProgressCurriculum.
update_success_rates` takes ``{task: rate}``; :meth:`~LearningProgressCurriculum.on_result`
takes a metrics dict and reads its ``eval/task/<task>/success`` keys (the rollout engine's
per-task metrics, ``<task>`` being ``str(task)``), so it can be the engine's ``on_result``
callback; ``evaluate_fn`` is any callable returning such a metrics dict, which a background
thread calls every ``eval_interval`` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from syllabus_eval.errors import bad_argument, check_number

from .success_rates import SuccessRateCurriculum
from .task_space import DiscreteTaskSpace


class LearningProgressCurriculum(SuccessRateCurriculum):
    """Samples tasks by the absolute change of their success rate (bidirectional progress).

    Args:
        task_space: a :class:`DiscreteTaskSpace`, a number of tasks or a sequence of tasks.
        fast_rate: step size of the fast moving average of each task's success rate.
        slow_rate: step size of the slow one (``0 < slow_rate < fast_rate <= 1``).
        p_theta: where the reweighting puts its emphasis: progress on tasks with success rates
            below ``p_theta`` counts more (``0.5``: no reweighting).
        evaluate_fn: optional; returns a metrics dict with ``eval/task/<task>/success`` keys.
            When given, a background thread calls it at once and then ``eval_interval``
            seconds after each call returns, and feeds :meth:`on_result`.
        eval_interval: seconds between the end of one background evaluation and the next.
        seed: seeds the sampler.

    A task's progress is ``|r(p_fast) - r(p_slow)|``: it is high while the agent learns the
    task and also while it forgets it. Tasks never measured get the highest weight, so each
    task is played until it has an estimate. A failure of ``evaluate_fn`` is raised, as
    :class:`~syllabus_eval.CurriculumError`, from the next :meth:`sample` or :meth:`close`.

    Only finite success rates in [0, 1] enter the moving averages (issue #19): a NaN or inf
    rate, given directly or in a metrics dict, raises ``ValueError`` naming the task and the
    number, and the whole measurement changes nothing; from ``evaluate_fn`` it is that
    failure of the background thread. Progress and sampling probabilities stay finite.
    """

    def __init__(
        self,
        task_space: DiscreteTaskSpace | int | Sequence[Hashable],
        *,
        fast_rate: float = 0.2,
        slow_rate: float = 0.05,
        p_theta: float = 0.1,
        evaluate_fn: Callable[[], Mapping[str, Any]] | None = None,
        eval_interval: float = 60.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(task_space, evaluate_fn=evaluate_fn, eval_interval=eval_interval,
                         seed=seed)
        self.fast_rate = check_number("fast_rate", fast_rate, 0.0, 1.0, low_open=True)
        self.slow_rate = check_number("slow_rate", slow_rate, 0.0, 1.0, low_open=True)
        if self.slow_rate >= self.fast_rate:
            raise bad_argument("slow_rate", f"a step size below fast_rate={fast_rate}",
                               slow_rate)
        self.p_theta = check_number("p_theta", p_theta, 0.0, 1.0, low_open=True, high_open=True)
        count = len(self.task_space)
        self._fast = np.full(count, np.nan)  # p_fast per task; NaN: never measured
        self._slow = np.full(count, np.nan)  # p_slow per task
        self._measure_in_background(evaluate_fn)

    # --- success rates in ----------------------------------------------------------------------

    def _take_rates(self, checked: dict[int, float]) -> None:
        for i, rate in checked.items():
            if math.isnan(self._fast[i]):  # first measurement: no progress yet
                self._fast[i] = self._slow[i] = rate
            else:  # exponential moving averages, fast and slow
                self._fast[i] += self.fast_rate * (rate - self._fast[i])
                self._slow[i] += self.slow_rate * (rate - self._slow[i])

    # --- progress and sampling -----------------------------------------------------------------

    def success_rates(self) -> dict[Hashable, tuple[float, float]]:
        """``{task: (p_fast, p_slow)}`` for every task measured so far."""
        with self._lock:
            return {task: (float(self._fast[i]), float(self._slow[i]))
                    for i, task in enumerate(self.task_space.tasks)
                    if not math.isnan(self._fast[i])}

    def learning_progress(self) -> np.ndarray:
        """``|r(p_fast) - r(p_slow)|`` per task, NaN for tasks never measured: ``[N]``."""
        with self._lock:
            return np.abs(self._reweight(self._fast) - self._reweight(self._slow))

    def distribution(self) -> np.ndarray:
        """Sampling probabilities: a sigmoid of the z-scored progress, normalised: ``[N]``."""
        progress = self.learning_progress()
        measured = ~np.isnan(progress)
        weights = np.ones(len(progress))  # never measured: the sigmoid's upper bound
        if measured.any():
            lp = progress[measured]
            std = lp.std()
            z = (lp - lp.mean()) / std if std > 0 else np.zeros(len(lp))
            # Every task keeps some probability; those progressing fastest dominate.
            weights[measured] = 1.0 / (1.0 + np.exp(-z))
        return weights / weights.sum()

    def _reweight(self, p: np.ndarray) -> np.ndarray:
        # r(p) = (1 - theta) p / (p + theta (1 - 2p)): stretches low success rates so that
        # progress on tasks the agent rarely solves counts more (Kanitscheider et al., 2021).
        theta = self.p_theta
        return (1.0 - theta) * p / (p + theta * (1.0 - 2.0 * p))

