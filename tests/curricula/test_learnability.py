"""Learnability (Rutherford et al., 2024): p (1 - p) scores, top-k sampling, rates from a runner."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from syllabus_eval import CurriculumError, EnvSpec, EpisodeSettings, EvalRunner
from syllabus_eval.adapters import DummyEvaluator
from syllabus_eval.curricula import Learnability

P = [0.0, 0.1, 0.5, 0.9, 1.0]  # the tasks are their success probabilities


class FixedSuccessEnv(gym.Env):
    """One-step episodes of task ``p``: the n-th episode of a task succeeds when
    floor((n + 1) p) > floor(n p), so any 10 consecutive episodes of it succeed exactly 10 p
    times (a known answer, where coin flips would only approach it)."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.p = 0.0
        self.played: Counter = Counter()  # episodes per task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.p = float(options["task"])
        return np.array([self.p], np.float32), {}

    def step(self, action):
        n = self.played[self.p]
        self.played[self.p] += 1
        success = math.floor((n + 1) * self.p + 1e-9) > math.floor(n * self.p + 1e-9)
        return (np.array([self.p], np.float32), float(success), True, False,
                {"success": success})


def runner(tasks, **kwargs) -> EvalRunner:
    # one env slot: its episodes take the tasks in turn, 10 of each
    return EvalRunner(EnvSpec(FixedSuccessEnv, num_envs=1),
                      DummyEvaluator(spaces.Discrete(2), seed=0), num_episodes=10 * len(tasks),
                      tasks=tasks, episodes=EpisodeSettings(max_steps=None, seed=0, ci=None),
                      **kwargs)


def fed(rates, **kwargs) -> Learnability:
    curriculum = Learnability(P, seed=0, **kwargs)
    curriculum.update_success_rates(dict(zip(P, rates)))
    return curriculum


class TestScores:
    def test_order_by_p_times_one_minus_p(self):
        scores = fed(P).task_scores()
        assert scores == pytest.approx({0.0: 0.0, 0.1: 0.09, 0.5: 0.25, 0.9: 0.09, 1.0: 0.0})
        ranked = sorted(scores, key=scores.get, reverse=True)
        assert ranked[0] == 0.5
        assert set(ranked[1:3]) == {0.1, 0.9} and set(ranked[3:]) == {0.0, 1.0}

    def test_latest_measurement_replaces(self):
        curriculum = fed(P)
        curriculum.update_success_rates({0.5: 0.2})
        assert curriculum.success_rates()[0.5] == 0.2
        assert curriculum.task_scores()[0.5] == pytest.approx(0.16)
        assert curriculum.num_updates == 2


class TestDistribution:
    # scores (0, 0.09, 0.25, 0.09, 0): with learnable_prob 0.8 every task gets 0.2 / 5 = 0.04
    # uniformly, and the top k share 0.8 (the tasks tied at the k-th score share its slots)
    @pytest.mark.parametrize("topk, learnable", [
        (1, [0, 0, 1, 0, 0]),
        (2, [0, 1 / 4, 1 / 2, 1 / 4, 0]),  # 0.5, then 0.1 and 0.9 share one slot
        (3, [0, 1 / 3, 1 / 3, 1 / 3, 0]),
        (4, [1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8]),  # 0 and 1 share the fourth slot
        (5, [1 / 5] * 5),
        (50, [1 / 5] * 5),  # more than the task space: every scored task
    ])
    def test_top_k_by_hand(self, topk, learnable):
        expected = 0.8 * np.array(learnable) + 0.04
        np.testing.assert_allclose(fed(P, topk=topk, learnable_prob=0.8).distribution(),
                                   expected)

    def test_dist_sampling_by_hand(self):
        expected = 0.5 * np.array([0, 0.09, 0.25, 0.09, 0]) / 0.43 + 0.5 / 5
        np.testing.assert_allclose(fed(P, sampling="dist", learnable_prob=0.5).distribution(),
                                   expected)

    def test_dist_sampling_with_nothing_learnable(self):
        # every task solved or failed: the learnable part is uniform over the scored ones
        np.testing.assert_allclose(
            fed([0, 1, 1, 0, 1], sampling="dist").distribution(), [0.2] * 5)

    def test_samples_follow_the_distribution(self):
        curriculum = fed(P, topk=2, learnable_prob=0.8)
        counts = Counter(curriculum.sample(5000))
        for task, p in zip(P, [0.04, 0.24, 0.44, 0.24, 0.04]):
            assert abs(counts[task] / 5000 - p) < 0.025


class TestUnscoredTasks:
    def test_uniform_before_any_measurement(self):
        np.testing.assert_allclose(Learnability(P).distribution(), [0.2] * 5)
        assert Learnability(P).task_scores() == {}

    def test_unscored_is_not_p_zero(self):
        # 0.5 and 0.0 scored (0.25 and 0): the top 2 is those two; were the unscored tasks
        # p = 0, they would tie with 0.0 for the second slot
        curriculum = Learnability(P, topk=2, learnable_prob=0.8)
        curriculum.update_success_rates({0.5: 0.5, 0.0: 0.0})
        np.testing.assert_allclose(curriculum.distribution(),
                                   [0.44, 0.04, 0.44, 0.04, 0.04])
        assert curriculum.task_scores() == {0.0: 0.0, 0.5: 0.25}

    def test_until_k_are_scored_the_top_k_are_the_scored(self):
        curriculum = Learnability(P, topk=4, learnable_prob=1.0)
        curriculum.update_success_rates({0.1: 0.1, 0.9: 0.9})
        np.testing.assert_allclose(curriculum.distribution(), [0, 0.5, 0, 0.5, 0])


class TestFromTheRunner:
    def test_on_result_of_a_real_runner(self):
        curriculum = Learnability(P, topk=2, learnable_prob=0.8, seed=0)
        with runner(P, callbacks=curriculum.on_result) as evaluation:
            metrics = evaluation.evaluate()
        assert [metrics[f"eval/task/{p}/success"] for p in P] == pytest.approx(P)
        assert curriculum.success_rates() == pytest.approx(dict(zip(P, P)))
        np.testing.assert_allclose(curriculum.distribution(), [0.04, 0.24, 0.44, 0.24, 0.04])

    def test_tasks_the_runner_never_evaluated_stay_unscored(self):
        curriculum = Learnability(P, topk=2, learnable_prob=0.8, seed=0)
        with runner([0.5, 0.0], callbacks=curriculum.on_result) as evaluation:
            evaluation.evaluate()
        assert curriculum.task_scores() == {0.0: 0.0, 0.5: 0.25}
        np.testing.assert_allclose(curriculum.distribution(), [0.44, 0.04, 0.44, 0.04, 0.04])

    def test_rates_of_a_runner_with_suites(self):
        """Suites report eval/<suite>/task/<task>/success; a task in two suites counts each
        suite's episodes (3 of 4 and 1 of 12 successes: 4 of 16 in all)."""
        curriculum = Learnability(P, seed=0)
        curriculum.on_result({"eval/train/task/0.5/success": 0.5,
                              "eval/train/task/0.5/num_episodes": 10,
                              "eval/train/task/0.9/success": 0.75,
                              "eval/train/task/0.9/num_episodes": 4,
                              "eval/test/task/0.9/success": 1 / 12,
                              "eval/test/task/0.9/num_episodes": 12,
                              "eval/train/success": 0.6, "eval/test/success": 1 / 12})
        assert curriculum.success_rates() == pytest.approx({0.5: 0.5, 0.9: 0.25})

    def test_background_evaluations(self, no_leaked_threads):
        with runner(P) as evaluation, Learnability(
                P, evaluate_fn=evaluation.evaluate, eval_interval=0.01, topk=1, seed=0) as lc:
            deadline = time.monotonic() + 30
            while lc.num_updates < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert lc.num_updates >= 2
            assert set(lc.sample(10)) == {0.5}  # topk 1, learnable_prob 1: the p = 0.5 task
        assert not [t for t in threading.enumerate() if "Learnability" in t.name]

    def test_background_failure_surfaces(self, no_leaked_threads):
        lc = Learnability(P, evaluate_fn=lambda: {"eval/task/0.5/success": float("nan")},
                          eval_interval=0.01)
        deadline = time.monotonic() + 10
        with pytest.raises(CurriculumError) as failure:
            while time.monotonic() < deadline:  # until the first evaluation has failed
                lc.sample()
                time.sleep(0.01)
        assert "rates[0.5]: expected a finite number" in str(failure.value.__cause__)
        lc.close()  # reported already: closes quietly
        assert lc.task_scores() == {}


class TestBadInput:
    @pytest.mark.parametrize("rates, message", [
        ({0.5: 1.5}, r"rates\[0.5\]: expected a number in \[0.0, 1.0\], got float 1.5"),
        ({0.5: -0.1}, r"rates\[0.5\]: expected a number in \[0.0, 1.0\]"),
        ({0.5: float("nan")}, r"rates\[0.5\]: expected a finite number"),
        ({0.5: np.float32("inf")}, r"rates\[0.5\]: expected a finite number"),
        ({0.5: "high"}, r"rates\[0.5\]: expected a finite number"),
        ({0.3: 0.5}, r"rates: expected one of \[0.0, 0.1, 0.5, 0.9, 1.0\], got float 0.3"),
        ({}, "rates: expected a non-empty dict"),
        ([0.5], "rates: expected a non-empty dict"),
    ])
    def test_bad_rates_change_nothing(self, rates, message):
        curriculum = fed(P)
        with pytest.raises(ValueError, match=message):
            curriculum.update_success_rates({0.1: 0.5, **rates} if isinstance(rates, dict)
                                            and rates else rates)
        assert curriculum.success_rates() == dict(zip(P, P))  # the good entry not applied
        assert curriculum.num_updates == 1

    @pytest.mark.parametrize("metrics, message", [
        ({"eval/reward": 1.0}, "metrics: expected per-task success rates under keys"),
        ({"eval/task/0.3/success": 0.5}, "task name: expected one of"),
        ([("eval/task/0.5/success", 0.5)], "metrics: expected a metrics dict"),
    ])
    def test_bad_metrics(self, metrics, message):
        with pytest.raises(ValueError, match=message):
            Learnability(P).on_result(metrics)

    @pytest.mark.parametrize("kwargs, message", [
        ({"topk": 0}, "topk: expected an integer >= 1, got int 0"),
        ({"topk": 2.5}, "topk: expected an integer >= 1"),
        ({"learnable_prob": 1.5}, r"learnable_prob: expected a number in \[0.0, 1.0\]"),
        ({"learnable_prob": float("nan")}, "learnable_prob: expected a finite number"),
        ({"sampling": "softmax"}, r"sampling: expected one of \['topk', 'dist'\]"),
        ({"evaluate_fn": 3}, "evaluate_fn: expected a callable"),
        ({"eval_interval": -1}, "eval_interval: expected a number >= 0.0"),
    ])
    def test_bad_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            Learnability(P, **kwargs)
