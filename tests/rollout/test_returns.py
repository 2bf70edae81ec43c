"""Raw returns: where the env records episode statistics inside reward wrappers (as CleanRL's
make_env does), eval/reward is the recorded return and eval/wrapped_reward what the agent got."""

from __future__ import annotations

import gymnasium as gym
import pytest

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.demo.agents import MLPAgent
from tests.fake_envs import TaskEnv
from tests.models import fake_envs
from tests.workers import cartpole_evaluator


def scaled(record_inside: bool = True) -> gym.Env:
    """CartPole (reward 1 a step) with rewards scaled by 0.1 outside (or inside) the
    statistics recorder."""
    env = gym.make("CartPole-v1")
    if record_inside:
        return gym.wrappers.TransformReward(gym.wrappers.RecordEpisodeStatistics(env),
                                            lambda reward: 0.1 * reward)
    return gym.wrappers.RecordEpisodeStatistics(
        gym.wrappers.TransformReward(env, lambda reward: 0.1 * reward))


def vector(mode: gym.vector.AutoresetMode) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([scaled] * 4, autoreset_mode=mode)


def evaluate(make_env, **kwargs):
    with EvalRunner(EnvSpec(make_env, num_envs=4), cartpole_evaluator(), num_episodes=8,
                    episodes=EpisodeSettings(max_steps=None), **kwargs) as runner:
        return runner.evaluate()


class TestRecordedReturns:
    @pytest.mark.parametrize("make_env", [
        scaled, lambda: vector(gym.vector.AutoresetMode.NEXT_STEP),
        lambda: vector(gym.vector.AutoresetMode.SAME_STEP)],
        ids=["pool", "next-step", "same-step"])
    def test_the_recorded_return_is_reported_and_the_wrapped_one_beside_it(self, make_env):
        result = evaluate(make_env)
        for record in result.episodes:
            assert record.reward == record.length  # CartPole's raw return
            assert record.wrapped_reward == pytest.approx(0.1 * record.length)
        lengths = [r.length for r in result.episodes]
        assert result["eval/reward"] == pytest.approx(sum(lengths) / len(lengths))
        assert result["eval/wrapped_reward"] == pytest.approx(0.1 * result["eval/reward"])

    def test_without_reward_wrappers_outside_nothing_differs(self):
        result = evaluate(lambda: scaled(record_inside=False))
        assert all(r.wrapped_reward is None for r in result.episodes)
        assert all(r.reward == pytest.approx(0.1 * r.length) for r in result.episodes)
        assert "eval/wrapped_reward" not in result

    def test_without_the_recorder_the_summed_reward(self):
        result = evaluate(lambda: gym.wrappers.TransformReward(gym.make("CartPole-v1"),
                                                               lambda reward: 2 * reward))
        assert all(r.reward == 2 * r.length and r.wrapped_reward is None
                   for r in result.episodes)
        assert "eval/wrapped_reward" not in result

    def test_per_task(self):
        def make_env() -> gym.Env:
            return gym.wrappers.TransformReward(gym.wrappers.RecordEpisodeStatistics(
                TaskEnv()), lambda reward: -reward)

        agent = MLPAgent(fake_envs(TaskEnv.observation_space, TaskEnv.action_space))
        with EvalRunner(EnvSpec(make_env, num_envs=2), CleanRLEvaluator(agent), num_episodes=4,
                        tasks=[1, 2]) as runner:
            result = runner.evaluate()
        for task in (1, 2):
            assert result[f"eval/task/{task}/wrapped_reward"] == -result[
                f"eval/task/{task}/reward"]



def recorded_vector(normalize: bool = False) -> gym.vector.VectorEnv:
    """CartPole vector envs inside Gymnasium's vector RecordEpisodeStatistics (and vector
    NormalizeObservation), which need whole resets."""
    envs = gym.make_vec("CartPole-v1", 4, vectorization_mode="sync")
    if normalize:
        envs = gym.wrappers.vector.NormalizeObservation(envs)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


class TestVectorRecorders:
    """The vector recorder looks for options["reset_mask"] after the vector env has popped it,
    so a masked reset would zero every sub-env's running return: such envs run on their own
    autoresets."""

    @pytest.mark.parametrize("normalize", [False, True], ids=["recorder", "normalizer"])
    @pytest.mark.filterwarnings("ignore:the evaluation envs normalise observations")
    def test_the_floating_tail_keeps_their_returns_right(self, normalize):
        # 16 episodes on 4 envs: each slot's last episode floats, which needs masked resets
        # with envs that reset alone
        with EvalRunner(EnvSpec(lambda: recorded_vector(normalize), num_envs=4),
                        cartpole_evaluator(), num_episodes=16,
                        episodes=EpisodeSettings(max_steps=None, seed=0)) as runner:
            result = runner.evaluate()
        assert len(result.episodes) == 16
        assert all(record.reward == record.length for record in result.episodes)

    def test_cuts_that_need_masked_resets_are_refused_clearly(self):
        with EvalRunner(EnvSpec(recorded_vector, num_envs=4), cartpole_evaluator(),
                        num_episodes=8, episodes=EpisodeSettings(max_steps=12, seed=0)
                        ) as runner, pytest.raises(Exception) as caught:
            runner.evaluate()
        message = str(caught.value) + str(caught.value.__cause__)
        assert "vector RecordEpisodeStatistics" in message
        assert "inside each sub-env" in message
