"""Agents that read their previous action and reward (moolib's Net) get the true ones at every
step: reset at each episode start, sliced out with paused envs, in every backend."""

from __future__ import annotations

import gymnasium as gym
import pytest

from syllabus_eval import EnvSpec, EvalRunner, RolloutSettings, make_envs, run_episodes
from syllabus_eval.adapters import MoolibEvaluator
from syllabus_eval.evaluation.backends import as_backend
from tests.fake_envs import PreviousStepEnv
from tests.models import EchoNet, MoolibNet
from tests.workers import echo_evaluator

# 7 episodes over 3 slots: quotas 2, 2, 3, so slots pause while others still run.
NUM_ENVS, EPISODES = 3, 7


def all_right(records) -> None:
    assert len(records) == EPISODES
    for record in records:
        assert (record.reward, record.length, record.success) == (9.0, 6, True), record


class TestTheLoopHandsThemOver:
    @pytest.mark.parametrize("make", [
        lambda: make_envs(PreviousStepEnv, NUM_ENVS),
        lambda: gym.vector.SyncVectorEnv([PreviousStepEnv] * NUM_ENVS),
        lambda: gym.vector.SyncVectorEnv([PreviousStepEnv] * NUM_ENVS,
                                         autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)],
        ids=["pool", "next-step", "same-step"])
    def test_every_step_gets_the_true_previous_action_and_reward(self, make):
        envs = make()
        all_right(run_episodes(echo_evaluator(), envs, RolloutSettings(EPISODES)))
        envs.close()

    def test_with_tasks_and_max_steps_resets(self):
        envs = gym.vector.SyncVectorEnv([PreviousStepEnv] * NUM_ENVS)
        records = run_episodes(echo_evaluator(), envs,
                               RolloutSettings(EPISODES, max_steps=4, tasks=["a", "b"]))
        # cut at 4 steps (1 + 2 + 1 + 2), each new episode starting from zeros again
        assert [(r.reward, r.length) for r in records] == [(6.0, 4)] * EPISODES
        envs.close()

    def test_without_them_the_agent_would_fail(self):
        class Blind(MoolibEvaluator):  # the adapter without the previous step
            with_previous_step = None

        envs = make_envs(PreviousStepEnv, NUM_ENVS)
        records = run_episodes(Blind(EchoNet()), envs, RolloutSettings(EPISODES))
        assert not any(record.success for record in records)
        envs.close()

    def test_a_recurrent_moolib_model_runs_with_them(self):
        envs = make_envs(PreviousStepEnv, NUM_ENVS)
        evaluator = MoolibEvaluator(MoolibNet(num_actions=3, use_lstm=True))
        records = run_episodes(evaluator, envs, RolloutSettings(EPISODES))
        assert len(records) == EPISODES
        envs.close()


@pytest.mark.parametrize("backend", ["thread", "process", "ray"])
def test_in_every_backend(backend, request):
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    options = {} if backend == "thread" else {"evaluator_fn": echo_evaluator, "num_workers": 2}
    with EvalRunner(EnvSpec(PreviousStepEnv, num_envs=NUM_ENVS), echo_evaluator(),
                    num_episodes=EPISODES, backend=as_backend(backend, **options)) as runner:
        result = runner.evaluate()
    all_right(result.episodes)
    assert result["eval/success"] == 1.0
