"""Non-finite numbers never enter PLR's score table (issue #19): they fail the worker instead.

A chain task L played with action 1 gives V(s_t) = t for t = 0..L (the agent reads the
position) and rewards 0, ..., 0, 1, terminated. With gamma 0.9 and lambda 0.5, by hand:
L = 1: A = [1], score 1; L = 2: delta = [0.9, 0], A = [0.9, 0], score 0.45;
L = 3: delta = [0.9, 0.8, -1], A = [1.0575, 0.35, -1], score 2.4075 / 3 = 0.8025.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from syllabus_eval import CurriculumError
from syllabus_eval.adapters import CleanRLEvaluator, MoolibEvaluator
from syllabus_eval.curricula import CurriculumWrapper, Experience, PrioritizedLevelReplay
from tests.curricula.plr.test_plr import GAMMA, LAMBDA, LinearAgent, LogitModel

SCORES = {1: 1.0, 2: 0.45, 3: 0.8025}  # the finite scores of tasks 1..3, by hand (above)
BAD = 4  # the task whose episodes carry the non-finite number


class Corrupt(gym.Wrapper):
    """Puts ``reward`` in place of every reward, or ``obs0`` in place of every step's
    observation's first entry, while the chain plays task ``BAD``."""

    def __init__(self, env: gym.Env, reward: float | None = None, obs0: float | None = None
                 ) -> None:
        super().__init__(env)
        self.reward, self.obs0 = reward, obs0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.env.unwrapped.length == BAD:
            reward = reward if self.reward is None else self.reward
            if self.obs0 is not None:
                obs = obs.copy()
                obs[0] = self.obs0
        return obs, reward, terminated, truncated, info


class CertainCritic(LogitModel):
    """LogitModel's policy (logits ``[*s, 0]``) with a baseline of 0: finite values, so that a
    non-finite observation shows in the policy score alone."""

    def forward(self, inputs, core_state=()):
        outputs, core_state = super().forward(inputs, core_state)
        return {**outputs, "baseline": torch.zeros_like(outputs["baseline"])}, core_state


def play(env: gym.Env, task: int) -> None:
    """One whole episode of ``task``, always moving right."""
    env.reset(options={"task": task})
    while True:
        _, _, terminated, truncated, _ = env.step(1)
        if terminated or truncated:
            return


def plr_for(evaluator=None, **kwargs) -> PrioritizedLevelReplay:
    evaluator = evaluator or CleanRLEvaluator(LinearAgent(obs_size=2))
    return PrioritizedLevelReplay([1, 2, 3, BAD], evaluator, gamma=GAMMA, gae_lambda=LAMBDA,
                                  staleness_coef=0.0, **kwargs)


def fail_on_the_bad_task(plr: PrioritizedLevelReplay, env: gym.Env) -> CurriculumError:
    """Plays tasks 1..3, then ``BAD``; returns the failure ``flush`` reports."""
    for task in (1, 2, 3, BAD):
        play(env, task)
    with pytest.raises(CurriculumError, match="PrioritizedLevelReplay worker failed") as info:
        plr.flush(timeout=30)
    return info.value


def assert_table_is_the_finite_scores(plr: PrioritizedLevelReplay) -> None:
    scores = plr.task_scores()
    assert scores == pytest.approx(SCORES)  # BAD never scored: no NaN, no inf
    assert all(math.isfinite(score) for score in scores.values())
    assert np.isfinite(plr.replay_distribution()).all()


class TestNonFiniteRewards:
    @pytest.mark.parametrize("reward", [math.nan, math.inf, -math.inf])
    @pytest.mark.parametrize("transform, h", [
        ("rank", np.array([1.0, 1 / 3, 1 / 2])),  # ranks 1, 3, 2 of 1, 0.45, 0.8025
        ("power", np.array([1.0, 0.45, 0.8025]) + 1e-3),  # the scores (+ 1e-3: no staleness)
    ])
    def test_fail_the_worker_and_leave_the_table_finite(self, chain_env, reward, transform, h,
                                                        no_leaked_threads):
        plr = plr_for(score_transform=transform, temperature=0.5)
        env = CurriculumWrapper(Corrupt(chain_env(), reward=reward), plr)
        failure = fail_on_the_bad_task(plr, env)
        message = str(failure.__cause__)
        assert isinstance(failure.__cause__, ValueError)
        assert f"experience.reward: expected a finite number, got {reward}" in message
        assert f"(task {BAD})" in message
        assert_table_is_the_finite_scores(plr)
        # P_S = h^(1/beta) / sum h^(1/beta) with beta 0.5, over the three scored tasks: not
        # uniform (a NaN score made the power transform uniform)
        expected = np.append(h ** 2 / (h ** 2).sum(), 0.0)
        np.testing.assert_allclose(plr.replay_distribution(), expected)
        assert not np.allclose(expected[:3], 1 / 3)
        with pytest.raises(CurriculumError):  # the env's next reset is refused too
            env.reset(options={"task": 1})
        env.close()
        plr.close()  # reported already: closes quietly

    @pytest.mark.filterwarnings("ignore:overflow encountered")
    def test_a_score_that_overflows(self, no_leaked_threads):
        plr = plr_for()
        for record in (Experience("reset", 0, 1, np.zeros(2, np.float32)),
                       Experience("step", 0, obs=np.zeros(2, np.float32), reward=1e308),
                       Experience("step", 0, obs=np.zeros(2, np.float32), reward=1e308,
                                  terminated=True)):
            plr.observe(record)
        with pytest.raises(CurriculumError) as info:
            plr.flush(timeout=30)
        assert "value_l1 score of a 2-step segment of task 1 is inf" in str(info.value.__cause__)
        assert plr.task_scores() == {}
        plr.close()


class TestNonFiniteValues:
    @pytest.mark.parametrize("obs0", [math.inf, -math.inf, math.nan])
    def test_an_inf_observation_gives_a_non_finite_value(self, chain_env, obs0,
                                                         no_leaked_threads):
        plr = plr_for()
        env = CurriculumWrapper(Corrupt(chain_env(), obs0=obs0), plr)
        message = str(fail_on_the_bad_task(plr, env).__cause__)
        # V(s) = s[0]: the value is obs0 itself
        assert f"the agent's value of the observation of env {env.env_id!r} (task {BAD}) at a " \
               f"step is {obs0}: its observation holds NaN or inf" in message
        assert_table_is_the_finite_scores(plr)
        env.close()
        plr.close()

    def test_or_a_non_finite_policy_score(self, chain_env, no_leaked_threads):
        plr = plr_for(MoolibEvaluator(CertainCritic()), strategy="policy_entropy")
        env = CurriculumWrapper(Corrupt(chain_env(), obs0=math.inf), plr)
        message = str(fail_on_the_bad_task(plr, env).__cause__)
        assert "the agent's policy_entropy score of the observation" in message
        assert "is nan: its observation holds NaN or inf" in message
        scores = plr.task_scores()
        assert set(scores) == {1, 2, 3} and all(math.isfinite(s) for s in scores.values())
        env.close()
        plr.close()

    def test_weights_gone_nan(self, chain_env, no_leaked_threads):
        agent = LinearAgent(obs_size=2)
        with torch.no_grad():
            agent.critic.weight.fill_(math.nan)
        plr = PrioritizedLevelReplay([1, 2], CleanRLEvaluator(agent))
        env = CurriculumWrapper(chain_env(), plr)
        play(env, 1)
        with pytest.raises(CurriculumError) as info:
            plr.flush(timeout=30)
        assert "the agent's value of the observation of env" in str(info.value.__cause__)
        assert "the agent's weights or outputs are not finite" in str(info.value.__cause__)
        assert plr.task_scores() == {}
        env.close()
        plr.close()


class TestNonFiniteScores:
    @pytest.mark.parametrize("score", [math.nan, math.inf, np.float32(-np.inf)])
    def test_update_score_refuses_them(self, score):
        with plr_for() as plr:
            plr.update_score(1, 0.5)
            with pytest.raises(ValueError, match="score: expected a finite number"):
                plr.update_score(1, score)
            assert plr.task_scores() == {1: 0.5}
