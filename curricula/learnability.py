"""Sampling for learnability (Rutherford et al., NeurIPS 2024, "No Regrets: Investigating and
Improving Regret Approximations for Curriculum Discovery"): play the tasks the agent solves
about half the time.

Usage::

    from syllabus_eval import EnvSpec, EvalRunner
    from syllabus_eval.curricula import Learnability

    learnability = Learnability(tasks, topk=10, learnable_prob=0.9, seed=0)
    runner = EvalRunner(EnvSpec(make_env, num_envs=8), evaluator, num_episodes=10 * len(tasks),
                        tasks=tasks, callbacks=learnability.on_result)
    runner.evaluate(weights=agent)           # per-task success rates -> learnability scores
    learnability.task_scores()               # {task: p (1 - p)} of the tasks evaluated
    learnability.sample(8)

    # Or measured periodically in the background by any function returning such metrics:
    with Learnability(tasks, evaluate_fn=lambda: runner.evaluate(weights=agent),
                      eval_interval=120.0) as learnability:
        ...

A task's score is its learnability ``p (1 - p)``, ``p`` its success rate under the current
policy from evaluation rollouts: the variance of its success, highest (0.25) at ``p = 0.5``,
0 for tasks always or never solved. Success rates come in as
:class:`~syllabus_eval.curricula.LearningProgressCurriculum` takes them: ``{task: rate}``
through :meth:`Learnability.update_success_rates`, a metrics dict's
``eval/task/<task>/success`` keys through :meth:`Learnability.on_result`, or an
``evaluate_fn`` called in the background.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from syllabus_eval.errors import bad_argument, check_count, check_number

from .success_rates import SuccessRateCurriculum
from .task_space import DiscreteTaskSpace

SAMPLING = ("topk", "dist")


class Learnability(SuccessRateCurriculum):
    """Samples the most learnable tasks, scored ``p (1 - p)`` from evaluation success rates.

    Args:
        task_space: a :class:`DiscreteTaskSpace`, a number of tasks or a sequence of tasks.
        topk: k, how many of the highest-scoring tasks the learnable part draws from (the
            paper's buffer size; Syllabus's ``topk``).
        learnable_prob: the probability of drawing from the learnable part; otherwise a task
            is drawn uniformly from the whole task space (the paper's mix with fresh levels;
            Syllabus's ``learnable_prob``).
        sampling: the learnable part: ``"topk"`` (uniform over the top ``topk`` scored tasks)
            or ``"dist"`` (every scored task in proportion to its score), as in Syllabus.
        evaluate_fn: optional; returns a metrics dict with ``eval/task/<task>/success`` keys.
            When given, a background thread calls it at once and then ``eval_interval``
            seconds after each call returns, and feeds :meth:`on_result`.
        eval_interval: seconds between the end of one background evaluation and the next.
        seed: seeds the sampler.

    Each measurement replaces the success rates of the tasks it covers (the paper rescores
    levels under the current policy; no average with older policies). Tasks never evaluated
    are *unscored*, not ``p = 0``: they are drawn only by the uniform part, and the
    learnable part holds the top ``min(topk, scored)`` scored tasks, so until ``topk`` tasks
    are scored it is every scored task (in the paper the buffer holds only scored levels, and
    the rest of the draws are fresh, unscored levels). Before any task is scored the
    distribution is uniform. Tasks tied with the k-th score share its slots equally (so the
    order of the task space never decides). With ``"dist"``, scored tasks all at score 0 (all
    solved, or all failed) share the learnable part equally.

    Only finite success rates in [0, 1] of known tasks are taken: anything else raises
    ``ValueError`` naming ``rates[<task>]`` (or ``metrics``) and the whole measurement changes
    nothing; from ``evaluate_fn`` it is the failure of the background thread, raised as
    :class:`~syllabus_eval.CurriculumError` from the next :meth:`sample` or :meth:`close`.
    """

    def __init__(
        self,
        task_space: DiscreteTaskSpace | int | Sequence[Hashable],
        *,
        topk: int = 100,
        learnable_prob: float = 1.0,
        sampling: str = "topk",
        evaluate_fn: Callable[[], Mapping[str, Any]] | None = None,
        eval_interval: float = 60.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(task_space, evaluate_fn=evaluate_fn, eval_interval=eval_interval,
                         seed=seed)
        self.topk = check_count("topk", topk)
        self.learnable_prob = check_number("learnable_prob", learnable_prob, 0.0, 1.0)
        if sampling not in SAMPLING:
            raise bad_argument("sampling", f"one of {list(SAMPLING)}", sampling)
        self.sampling = sampling
        self._rates = np.full(len(self.task_space), np.nan)  # p per task; NaN: unscored
        self._measure_in_background(evaluate_fn)

    # --- success rates in ----------------------------------------------------------------------

    def _take_rates(self, checked: dict[int, float]) -> None:
        for i, rate in checked.items():  # the current policy's rates replace older ones
            self._rates[i] = rate

    # --- scores and sampling -------------------------------------------------------------------

    def success_rates(self) -> dict[Hashable, float]:
        """``{task: p}`` for every task evaluated so far."""
        with self._lock:
            return {task: float(self._rates[i]) for i, task in enumerate(self.task_space.tasks)
                    if not np.isnan(self._rates[i])}

    def task_scores(self) -> dict[Hashable, float]:
        """``{task: p (1 - p)}`` for every task evaluated so far."""
        return {task: p * (1.0 - p) for task, p in self.success_rates().items()}

    def distribution(self) -> np.ndarray:
        """``learnable_prob`` x the learnable part + (1 - ``learnable_prob``) x uniform: ``[N]``."""
        with self._lock:
            rates = self._rates.copy()
        count = len(rates)
        uniform = np.full(count, 1.0 / count)
        scored = np.flatnonzero(~np.isnan(rates))
        if len(scored) == 0:
            return uniform
        scores = rates[scored] * (1.0 - rates[scored])  # learnability p (1 - p)
        learnable = np.zeros(count)
        if self.sampling == "dist":
            total = scores.sum()
            learnable[scored] = scores / total if total > 0 else 1.0 / len(scored)
        else:
            learnable[scored] = _top_k_shares(scores, min(self.topk, len(scored)))
        return self.learnable_prob * learnable + (1.0 - self.learnable_prob) * uniform



def _top_k_shares(scores: np.ndarray, k: int) -> np.ndarray:
    """Uniform over the ``k`` highest ``scores``, tasks tied with the k-th sharing its slots:
    ``[M]``, summing to 1."""
    kth = np.sort(scores)[::-1][k - 1]
    # close, not equal: p = 0.1 and p = 0.9 differ in the last bit of p (1 - p)
    tied = np.isclose(scores, kth, rtol=1e-9, atol=1e-12)
    above = (scores > kth) & ~tied
    shares = above / k
    # the slots left after the tasks strictly above, split among the tasks at the k-th score
    shares[tied] = (k - above.sum()) / (k * tied.sum())
    return shares
