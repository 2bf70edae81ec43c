"""Curricula wired to the real rollout engine, as users wire them."""

from __future__ import annotations

import threading
import time
from functools import partial

import pytest
import torch

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.curricula import LearningProgressCurriculum
from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.demo.envs import CartPoleTasks
from tests.models import fake_envs

TASKS = ["long-pole", "short-pole", "weak-push"]


@pytest.fixture
def evaluator() -> CleanRLEvaluator:
    torch.manual_seed(0)
    env = CartPoleTasks()
    return CleanRLEvaluator(MLPAgent(fake_envs(env.observation_space, env.action_space)))


def runner_for(evaluator: CleanRLEvaluator, **kwargs) -> EvalRunner:
    # An untrained agent lasts 6-7 steps on short poles, 11-14 on the others: a limit of 12
    # gives every task its own success rate.
    return EvalRunner(EnvSpec(partial(CartPoleTasks, time_limit=12), num_envs=3), evaluator,
                      num_episodes=12, tasks=TASKS,
                      episodes=EpisodeSettings(max_steps=None, seed=0), **kwargs)


class TestLearningProgressFromTheRunner:
    def test_on_result_takes_the_runners_per_task_success(self, evaluator) -> None:
        lp = LearningProgressCurriculum(TASKS, seed=0)
        with runner_for(evaluator, callbacks=lp.on_result) as runner:
            first = runner.evaluate()
            second = runner.evaluate()
        rates = lp.success_rates()
        assert set(rates) == set(TASKS) and lp.num_updates == 2
        for task in TASKS:
            measured = first[f"eval/task/{task}/success"]
            assert measured == second[f"eval/task/{task}/success"]  # same weights, same seed
            assert rates[task] == pytest.approx((measured, measured))
        assert len({first[f"eval/task/{t}/success"] for t in TASKS}) > 1  # tasks differ

    def test_background_evaluate_fn_with_a_runner(self, evaluator) -> None:
        with runner_for(evaluator) as runner, LearningProgressCurriculum(
                TASKS, evaluate_fn=runner.evaluate, eval_interval=0.05, seed=0) as lp:
            deadline = time.monotonic() + 60
            while lp.num_updates < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lp.num_updates >= 3
            assert sum(lp.sample(20).count(t) for t in TASKS) == 20
        assert not [t for t in threading.enumerate() if "LearningProgress" in t.name]
