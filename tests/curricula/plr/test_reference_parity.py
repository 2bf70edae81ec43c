"""PLR's sampling against the paper's code (facebookresearch/level-replay, level_sampler.py).

The oracle below restates that code's equations over the whole task space, the way it keeps
its tables: every task has a score (0 until seen) and a staleness (draws since it was last
drawn), each transform weighs all tasks and then zeroes the unseen ones, and the replay
decision follows ``rho`` (0 here) and ``nu``. Our table keeps only the seen tasks' scores: the
two must give the same next-draw distribution on the same scores and draw history.
"""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical

from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from syllabus_eval.curricula import Experience, PrioritizedLevelReplay
from syllabus_eval.curricula.plr.scores import TaskScores

TRANSFORMS = ["rank", "power", "softmax", "eps_greedy", "max", "constant"]
SCHEDULES = ["proportionate", "fixed"]
NU = 0.5  # the reference's probability of a new level under the fixed schedule (its default);
# 1 - NU is below the fraction seen of the partly seen tables, so the schedules differ there


def reference_weights(transform, scores, seen, temperature, staleness_coef, eps=0.05):
    """The reference's ``_score_transform`` over every task, before unseen ones are zeroed."""
    scores = np.asarray(scores, dtype=np.float64)
    if transform == "constant":
        return np.ones_like(scores)
    if transform == "max":  # a random one of the tied best seen levels: distinct scores here
        masked = np.where(seen, scores, -np.inf)
        return (masked == masked.max()).astype(np.float64)
    if transform == "eps_greedy":
        weights = np.zeros_like(scores)
        weights[scores.argmax()] = 1.0 - eps
        return weights + eps / len(scores)
    if transform == "rank":
        order = np.argsort(scores)[::-1]  # highest first
        ranks = np.empty(len(scores))
        ranks[order] = np.arange(len(scores)) + 1
        return 1.0 / ranks ** (1.0 / temperature)
    if transform == "power":
        offset = 0.0 if staleness_coef > 0 else 1e-3
        return (scores + offset) ** (1.0 / temperature)
    assert transform == "softmax"
    return np.exp(scores / temperature)


def reference_distribution(scores, seen, history, transform, temperature, staleness_coef,
                           schedule, nu=NU):
    """P(next draw = i) under the reference's sample(): replay decision, then the level."""
    n = len(scores)
    seen = np.asarray(seen, dtype=bool)
    staleness = np.zeros(n)
    for drawn in history:  # _update_staleness: every draw ages all, resets the drawn one
        staleness += 1
        staleness[drawn] = 0
    weights = reference_weights(transform, scores, seen, temperature, staleness_coef) * seen
    if weights.sum() > 0:
        weights = weights / weights.sum()
    if staleness_coef > 0:
        stale = staleness * seen  # the power transform at temperature 1, offset 0
        if stale.sum() > 0:
            stale = stale / stale.sum()
        weights = (1 - staleness_coef) * weights + staleness_coef * stale
    fraction_seen = seen.mean()
    # proportionate: replay with the fraction seen; fixed: 1 - nu until every task is seen
    replay = fraction_seen if schedule == "proportionate" else (
        1.0 if fraction_seen == 1 else 1.0 - nu)
    unseen = (~seen) / max((~seen).sum(), 1)
    return replay * weights + (1 - replay) * unseen


# Score tables: None marks a task not seen yet.
PARTLY_SEEN = [0.8, None, 0.05, 2.0, None, 0.4]  # positive, distinct: no ties with unseen 0s
ALL_SEEN_SIGNED = [0.3, -1.2, 2.0, 0.0, 0.7, 0.05]  # what the signed gae strategy gives
ALL_SEEN_WITH_ZERO = [0.3, 0.0, 2.0, 0.01, 0.7, 0.05]  # power's offset matters for task 1
HISTORY = [3, 0, 5, 3, 2, 3, 0, 5]  # draws so far: task 3 last, 2 stalest of the seen


def tables(transform):
    # the reference raises negative scores to 1/beta (NaN or a large weight): power gets the
    # non-negative table instead (ours takes max(S, 0): a test below)
    return [PARTLY_SEEN, ALL_SEEN_WITH_ZERO if transform == "power" else ALL_SEEN_SIGNED]


def our_table(table, history):
    scores = TaskScores(len(table), threading.RLock())
    for i, score in enumerate(table):
        if score is not None:
            scores.record(i, score, steps=1)
    for i in history:
        scores.drawn(i)
    return scores


class TestSamplingParity:
    """transform x staleness on/off x schedule x score table: the same next-draw distribution."""

    @pytest.mark.parametrize("transform", TRANSFORMS)
    @pytest.mark.parametrize("staleness_coef", [0.0, 0.3])
    @pytest.mark.parametrize("schedule", SCHEDULES)
    @pytest.mark.parametrize("temperature", [0.3, 1.0])
    @pytest.mark.parametrize("which", [0, 1], ids=["partly-seen", "all-seen"])
    def test_distribution(self, transform, staleness_coef, schedule, temperature, which):
        table = tables(transform)[which]
        ours = our_table(table, HISTORY).distribution(
            transform, temperature, staleness_coef, replay_prob=1 - NU,
            replay_schedule=schedule)
        expected = reference_distribution(
            [0.0 if s is None else s for s in table], [s is not None for s in table],
            HISTORY, transform, temperature, staleness_coef, schedule)
        np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)
        assert ours.sum() == pytest.approx(1.0)


class TestPowerOffset:
    def test_offset_without_staleness_by_hand(self):
        # h = (0 + 1e-3, 1 + 1e-3) at beta 1: P = (0.001, 1.001) / 1.002
        table = our_table([0.0, 1.0], [])
        np.testing.assert_allclose(table.replay_distribution("power", 1.0, 0.0),
                                   [0.001 / 1.002, 1.001 / 1.002])

    def test_no_offset_with_staleness(self):
        # history [1, 0]: staleness (0, 1), so P_C = (0, 1); P_S = (0, 1) without the offset
        table = our_table([0.0, 1.0], [1, 0])
        np.testing.assert_allclose(table.replay_distribution("power", 1.0, 0.5), [0.0, 1.0])

    def test_negative_scores_count_as_zero(self):
        # documented difference: the reference would weigh -2 by (-2 + 1e-3)^2 = 3.996
        table = our_table([-2.0, 1.0], [])
        np.testing.assert_allclose(table.replay_distribution("power", 0.5, 0.0),
                                   np.array([1e-3, 1.001]) ** 2 / (1e-6 + 1.001 ** 2))


class TestRankAmongSeenTasks:
    def test_negative_scores_rank_among_the_seen(self):
        # documented difference: the reference ranks unseen tasks (score 0) above a seen -1;
        # here the seen -1 and -2 rank 1 and 2: h = (1, 1/2) at beta 1
        table = our_table([-1.0, None, -2.0, None], [])
        np.testing.assert_allclose(table.replay_distribution("rank", 1.0, 0.0),
                                   [2 / 3, 0.0, 1 / 3, 0.0])


class TestThroughTheCurriculum:
    """The same parity through PrioritizedLevelReplay: its own draws make the history."""

    @pytest.mark.parametrize("transform", TRANSFORMS)
    @pytest.mark.parametrize("schedule", SCHEDULES)
    def test_distribution_after_draws(self, transform, schedule):
        table = [0.6, 1.5, None, 0.2, 0.9]
        with PrioritizedLevelReplay(5, DummyEvaluator(gym.spaces.Discrete(2)), seed=3,
                                    score_transform=transform, temperature=0.5,
                                    staleness_coef=0.2, replay_prob=1 - NU,
                                    replay_schedule=schedule) as plr:
            for task, score in enumerate(table):
                if score is not None:
                    plr.update_score(task, score)
            history = plr.sample(7)
            expected = reference_distribution(
                [0.0 if s is None else s for s in table], [s is not None for s in table],
                history, transform, 0.5, 0.2, schedule)
            np.testing.assert_allclose(plr.distribution(), expected, rtol=1e-9, atol=1e-12)


# --- the gae and one_step_td_error strategies on a known-answer segment -----------------------

class ObsValueAgent(nn.Module):
    """CleanRL's contract with V(s) = s[0]."""

    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.critic.weight.fill_(1.0)

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        probs = Categorical(logits=torch.zeros(len(x), 2))
        action = probs.sample() if action is None else action
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


# V(s_0..s_3) = 2, 1, 3, 0.5 and r_0..r_2 = 0, 2, 1, with gamma 0.5 and lambda 0.5, by hand:
#   delta_0 = 0 + 0.5 * 1 - 2 = -1.5, delta_1 = 2 + 0.5 * 3 - 1 = 2.5
#   terminated: delta_2 = 1 + 0 - 3 = -2;          truncated: delta_2 = 1 + 0.5 * 0.5 - 3 = -1.75
#   GAE (gamma lambda = 0.25), terminated: A = (-1, 2, -2); truncated: A = (-0.984375, 2.0625,
#   -1.75)
VALUES, REWARDS = [2.0, 1.0, 3.0, 0.5], [0.0, 2.0, 1.0]
EXPECTED = {
    ("gae", "terminated"): (-1.0 + 2.0 - 2.0) / 3,
    ("gae", "truncated"): (-0.984375 + 2.0625 - 1.75) / 3,
    ("one_step_td_error", "terminated"): (1.5 + 2.5 + 2.0) / 3,
    ("one_step_td_error", "truncated"): (1.5 + 2.5 + 1.75) / 3,
}


def segment_score(strategy, end):
    records = [Experience("reset", 0, "a", np.array([VALUES[0]], np.float32))]
    for t, reward in enumerate(REWARDS):
        last = t == len(REWARDS) - 1
        records.append(Experience("step", 0, obs=np.array([VALUES[t + 1]], np.float32),
                                  reward=reward, terminated=last and end == "terminated",
                                  truncated=last and end == "truncated"))
    with PrioritizedLevelReplay(["a", "b"], CleanRLEvaluator(ObsValueAgent()),
                                strategy=strategy, gamma=0.5, gae_lambda=0.5) as plr:
        for record in records:
            plr.observe(record)
        plr.flush(timeout=10)
        return plr.task_scores(), plr.scored_steps()


class TestNewStrategies:
    @pytest.mark.parametrize("strategy, end", list(EXPECTED))
    def test_known_answer_segment(self, strategy, end):
        scores, steps = segment_score(strategy, end)
        assert scores == pytest.approx({"a": EXPECTED[strategy, end]})
        assert steps == {"a": 3}

    def test_gae_is_signed(self):
        scores, _ = segment_score("gae", "terminated")
        assert scores["a"] < 0  # value_l1 of the same segment would be 5 / 3

    def test_signed_scores_rank(self):
        # a task the agent overestimates (negative mean advantage) ranks below one it
        # underestimates: rank is the transform that fits gae's signed scores
        with PrioritizedLevelReplay(["a", "b"], DummyEvaluator(gym.spaces.Discrete(2)),
                                    strategy="gae", staleness_coef=0.0, temperature=1.0) as plr:
            plr.update_score("a", -0.4)
            plr.update_score("b", 0.1)
            np.testing.assert_allclose(plr.distribution(), [1 / 3, 2 / 3])
