"""PLR's scores and sampling equations (Jiang, Grefenstette, Rocktäschel, 2021).

Usage::

    from syllabus_eval.curricula.plr.scores import TaskScores

    table = TaskScores(num_tasks=3, lock=threading.RLock())
    table.record(0, score=0.7, steps=128)             # a scored segment of task 0
    table.drawn(0)                                    # task 0 was just drawn
    table.distribution(score_transform="rank", temperature=0.1, staleness_coef=0.1,
                       replay_prob=0.95, replay_schedule="proportionate")

A segment's score comes from its advantages or one-step TD errors (the value strategies) or
from per-step scores of the policy (the policy strategies), Table 1 of the paper; a task's
score follows its segments' scores; sampling mixes replay of seen tasks by score and staleness
(Eq. 1 to 3) with uniform draws of unseen ones.

Parity with the paper's code (facebookresearch/level-replay, ``level_sampler.py``): the same
draw distribution, on the same scores and draw history, for every transform and schedule
here (``tests/curricula/plr/test_reference_parity.py`` re-derives its equations), with these
deliberate differences, each where the reference gives no usable answer or depends on the
order of an unstable sort:

- ``rank`` ranks the seen tasks among themselves; the reference ranks every task, unseen ones
  at score 0, which differs only when a seen task scores below 0 (``gae``) or ties;
  ties here keep task-space order (the reference's order among ties is its sort's).
- ``power`` takes ``max(S, 0)``: the reference raises negative scores to ``1/beta`` (NaN, or
  a large weight for a very negative score); use ``rank`` with ``gae``.
- ``max`` splits its mass among tied best tasks, what the reference's random tie-break gives
  on average; ``eps_greedy`` and ``max`` pick the best among seen tasks.
- A replay distribution that sums to 0 (power transform, staleness on, every seen score 0) is
  uniform over the seen tasks, where the reference fails in ``np.random.choice``.
- ``one_step_td_error`` is ``mean_t |r_t + gamma V(s_{t+1}) - V(s_t)|`` over the segment's
  ``T`` steps (``V(s_T) = 0`` at a termination); the reference's ``_one_step_td_error`` computes
  ``|r_t + V(s_t) - V(s_{t+1})|`` over ``T - 1`` steps, without ``gamma``.
- Replays start with the first seen task (the reference's ``rho = 0``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import torch

# Value-based scores of a segment from its advantages [T] (PLR, Table 1).
VALUE_SCORES: dict[str, Callable[[np.ndarray], float]] = {
    # (1/T) sum_t max(A_t, 0)
    "positive_value_loss": lambda advantages: float(np.maximum(advantages, 0.0).mean()),
    # (1/T) sum_t |A_t|
    "value_l1": lambda advantages: float(np.abs(advantages).mean()),
    # (1/T) sum_t A_t, signed: the reference's "gae" (mean of returns - value predictions)
    "gae": lambda advantages: float(np.mean(advantages)),
}


def one_step_td_errors(rewards: np.ndarray, values: np.ndarray, next_value: float,
                       gamma: float) -> np.ndarray:
    """``|delta_t| = |r_t + gamma V(s_{t+1}) - V(s_t)|`` of a segment: ``[T]``.

    Args:
        rewards: ``r_0 .. r_{T-1}``, ``[T]``.
        values: ``V(s_0) .. V(s_{T-1})``, ``[T]``.
        next_value: ``V(s_T)``, 0 where ``s_T`` is terminal.
        gamma: the discount factor.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    following = np.append(values[1:], next_value)  # V(s_1) .. V(s_T): [T]
    return np.abs(rewards + gamma * following - values)


# Scores of a segment from its one-step TD errors |delta_t| [T].
TD_SCORES: dict[str, Callable[[np.ndarray], float]] = {
    # (1/T) sum_t |delta_t|
    "one_step_td_error": lambda td_errors: float(np.mean(td_errors)),
}


def _log_probabilities(extras: dict, strategy: str) -> torch.Tensor:
    """log pi(a | s_t) for every action, from the adapter's ``policy_logits``: ``[B, A]``."""
    logits = extras.get("policy_logits", extras.get("logits"))
    if logits is None:
        given = sorted(key for key in extras if key not in ("lstm_state", "weights_version"))
        raise ValueError(
            f"strategy={strategy!r} needs the policy's action distribution: expected "
            f"'policy_logits' in the evaluator's extras, got extras {given}; use an adapter "
            "that returns logits (e.g. MoolibEvaluator) or a value-based strategy "
            f"{sorted(VALUE_SCORES)}"
        )
    return torch.log_softmax(logits.float(), dim=-1)


def _entropy(extras: dict, strategy: str) -> torch.Tensor:
    # -sum_a pi(a|s_t) log pi(a|s_t); CleanRL's adapter gives it directly.
    if "entropy" in extras:
        return extras["entropy"]
    log_probs = _log_probabilities(extras, strategy)
    return -(log_probs.exp() * log_probs).sum(-1)


def _least_confidence(extras: dict, strategy: str) -> torch.Tensor:
    # 1 - max_a pi(a|s_t)
    return 1.0 - _log_probabilities(extras, strategy).exp().max(-1).values


def _min_margin(extras: dict, strategy: str) -> torch.Tensor:
    # 1 - (P[1] - P[2]), the margin between the two most likely actions turned into a score that,
    # like the others, is high where the policy is unsure.
    top2 = _log_probabilities(extras, strategy).exp().topk(2, dim=-1).values  # [B, 2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


# Policy-based per-step scores from the query's extras, averaged over a segment (PLR, Table 1).
POLICY_SCORES: dict[str, Callable[[dict, str], torch.Tensor]] = {
    "policy_entropy": _entropy,
    "least_confidence": _least_confidence,
    "min_margin": _min_margin,
}
STRATEGIES = (*VALUE_SCORES, *TD_SCORES, *POLICY_SCORES)
SCORE_TRANSFORMS = ("rank", "power", "softmax", "eps_greedy", "max", "constant")
REPLAY_SCHEDULES = ("proportionate", "fixed")
EPS_GREEDY = 0.05  # epsilon of the eps_greedy transform (the reference's default)
POWER_OFFSET = 1e-3  # added to every score by the power transform without staleness (reference)


class TaskScores:
    """Per task: its score S_i, whether it was seen, the transitions scored, and when it was
    last drawn; every method holds ``lock`` (the curriculum's, so a draw sees one state).
    Every score in it is finite: :meth:`record` refuses a NaN or inf (issue #19).

    Args:
        num_tasks: N, the size of the task space.
        lock: guards the table.
        score_alpha: a new segment score S updates a task's score as
            ``(1 - alpha) * old + alpha * S`` (1: the latest score, as in the paper).
    """

    def __init__(self, num_tasks: int, lock: threading.RLock, score_alpha: float = 1.0
                 ) -> None:
        self.lock = lock
        self.score_alpha = score_alpha
        self.scores = np.zeros(num_tasks)  # S_i
        self.seen = np.zeros(num_tasks, dtype=bool)
        self.steps = np.zeros(num_tasks, dtype=np.int64)  # transitions scored per task
        self.draws = 0  # c: tasks drawn so far
        self.last_drawn = np.zeros(num_tasks, dtype=np.int64)  # C_i: c when i was last drawn

    def record(self, index: int, score: float, steps: int) -> None:
        """Task ``index`` got a segment ``score`` over ``steps`` transitions.

        Raises:
            ValueError: the score, or its average with the task's score, is NaN or inf; the
                table is left as it was.
        """
        with self.lock:
            if self.seen[index]:
                score = (1.0 - self.score_alpha) * self.scores[index] + self.score_alpha * score
            # One NaN here would make every draw uniform (the power transform) or rank the task
            # last (rank), silently; the callers check their inputs, this is the last guard.
            if not math.isfinite(score):
                raise ValueError(f"task {index}'s score: expected a finite number, got {score}")
            self.scores[index] = score
            self.seen[index] = True
            self.steps[index] += steps

    def drawn(self, index: int) -> None:
        """Task ``index`` was just drawn (staleness counts draws)."""
        with self.lock:
            self.draws += 1
            self.last_drawn[index] = self.draws

    def replay_distribution(self, score_transform: str, temperature: float,
                            staleness_coef: float) -> np.ndarray:
        """P_replay over the tasks (PLR Eq. 3), 0 for unseen tasks: ``[N]``."""
        with self.lock:
            replay = np.zeros(len(self.scores))
            seen = np.flatnonzero(self.seen)
            if len(seen) == 0:
                return replay
            # Eq. 1: P_S(l_i) = h(S_i)^(1/beta) / sum_j h(S_j)^(1/beta), or another transform
            p_score = _score_distribution(self.scores[seen], score_transform, temperature,
                                          staleness_coef, len(self.scores))
            # Eq. 2: P_C(l_i) = (c - C_i) / sum_j (c - C_j)
            p_stale = _normalized((self.draws - self.last_drawn[seen]).astype(np.float64))
            # Eq. 3: P_replay = (1 - rho) P_S + rho P_C
            replay[seen] = (1.0 - staleness_coef) * p_score + staleness_coef * p_stale
            return replay

    def distribution(self, score_transform: str, temperature: float, staleness_coef: float,
                     replay_prob: float, replay_schedule: str) -> np.ndarray:
        """The probability of each task for the next draw: ``[N]``.

        PLR first decides to replay (a seen task, from P_replay) or not (an unseen task,
        uniformly); this is that two-stage draw as one mixture. While unseen tasks remain,
        ``"proportionate"`` replays with the fraction of tasks seen (the paper's
        P_D(d = 1) = |seen| / |tasks|; ``replay_prob`` plays no part), ``"fixed"`` with
        ``replay_prob`` (the reference's 1 - nu); once every task is seen, both always replay.
        """
        with self.lock:
            count, seen = len(self.scores), int(self.seen.sum())
            unseen = np.zeros(count) if seen == count else (~self.seen) / (count - seen)
            if seen == 0:
                return unseen
            replay = 1.0
            if seen < count:
                replay = seen / count if replay_schedule == "proportionate" else replay_prob
            return (replay * self.replay_distribution(score_transform, temperature,
                                                      staleness_coef)
                    + (1.0 - replay) * unseen)


def _score_distribution(scores: np.ndarray, transform: str, temperature: float,
                        staleness_coef: float, num_tasks: int) -> np.ndarray:
    """P_S over the seen tasks' ``scores`` ``[M]`` under a score ``transform``: ``[M]``."""
    if transform == "rank":
        # h(S_i) = 1 / rank(S_i) among the seen tasks, rank 1 the highest score (ties keep
        # task-space order).
        order = np.argsort(-scores, kind="stable")
        ranks = np.empty(len(scores))
        ranks[order] = np.arange(1, len(scores) + 1)
        return _normalized((1.0 / ranks) ** (1.0 / temperature))
    if transform == "power":
        # h(S_i) = S_i (+ 1e-3 without staleness, as the reference does: no seen task is
        # ever left out when its score is 0)
        h = np.maximum(scores, 0.0) + (POWER_OFFSET if staleness_coef == 0 else 0.0)
        if h.max() > 0:
            h = h / h.max()  # the same P_S, without overflow in h^(1/beta)
        return _normalized(h ** (1.0 / temperature))
    if transform == "softmax":
        # exp(S_i / beta), shifted by the highest score against overflow (same P_S)
        return _normalized(np.exp((scores - scores.max()) / temperature))
    if transform in ("eps_greedy", "max"):
        # The best seen task(s) get 1 - eps; every task eps / N (N: the whole task space, as
        # in the reference), so that after leaving out unseen tasks the best keeps more.
        if transform == "eps_greedy":
            eps, best = EPS_GREEDY, np.arange(len(scores)) == np.argmax(scores)  # the first best
        else:  # max: the reference draws one of the tied best; on average, an equal share
            eps, best = 0.0, np.isclose(scores, scores.max())
        return _normalized((1.0 - eps) * best / best.sum() + eps / num_tasks)
    return np.full(len(scores), 1.0 / len(scores))  # constant: uniform over the seen tasks


def _normalized(weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))
