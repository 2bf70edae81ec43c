"""Stable-Baselines3: background evaluations during model.learn(), scheduled in env steps,
VecNormalize statistics synced with the snapshot, a final evaluation, and PLR scoring with an
SB3 PPO while it trains."""

from __future__ import annotations

import csv

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3", reason="needs the sb3 extra: pip install "
                    "'syllabus-eval[sb3]' (make test installs it)")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402

from syllabus_eval import (
    EnvSpec,
    EpisodeSettings,
    EvalRunner,  # noqa: E402
    EvalSchedule,
    StopOnReward,
)
from syllabus_eval.adapters import SB3Evaluator  # noqa: E402
from syllabus_eval.errors import EvaluationError, RemoteFailure  # noqa: E402
from syllabus_eval.evaluation.normalization import MissingNormalization, _no_wrapper  # noqa: E402
from syllabus_eval.integrations.sb3 import (  # noqa: E402
    EvalRunnerCallback,
    _lacks_wrapper,
    normalized_like,
)
from tests.fake_envs import seed_by_hand  # noqa: E402
from tests.readme import readme_snippet  # noqa: E402


def cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def small_ppo(env, seed: int = 0) -> PPO:
    return PPO("MlpPolicy", env, n_steps=128, batch_size=128, n_epochs=1, seed=seed,
               policy_kwargs={"net_arch": [16]})


class TestCallback:
    def test_evaluations_by_env_steps_land_in_sb3s_logger(self, tmp_path):
        model = small_ppo(make_vec_env("CartPole-v1", n_envs=4, seed=0))
        model.set_logger(configure(str(tmp_path), ["csv"]))
        runner = EvalRunner(EnvSpec(cartpole, num_envs=4), SB3Evaluator(model), num_episodes=4,
                            schedule=EvalSchedule(every=1000, busy_policy="queue"))
        callback = EvalRunnerCallback(runner)
        model.learn(4096, callback=callback)
        runner.shutdown()
        steps = [result.step for result in callback.results]
        # 4 envs: num_timesteps moves by 4 a callback step; each 1000 crossed once, and the
        # final evaluation at the end
        assert steps == [1000, 2000, 3000, 4000, model.num_timesteps]
        assert model.num_timesteps == 4096
        with open(tmp_path / "progress.csv") as file:
            logged = [row for row in csv.DictReader(file) if row.get("eval/reward")]
        assert len(logged) == len(steps)
        assert [float(row["eval/reward"]) for row in logged] == pytest.approx(
            [result["eval/reward"] for result in callback.results])

    def test_should_stop_ends_training(self):
        model = small_ppo(make_vec_env("CartPole-v1", n_envs=2, seed=0))
        runner = EvalRunner(EnvSpec(cartpole, num_envs=2), SB3Evaluator(model), num_episodes=2,
                            schedule=EvalSchedule(every=256, busy_policy="queue"),
                            callbacks=[StopOnReward(0.0, times=1)])
        model.learn(100_000, callback=EvalRunnerCallback(runner, final_eval=False))
        runner.shutdown()
        assert model.num_timesteps < 1000  # the first result met the threshold

    def test_needs_a_schedule(self):
        model = small_ppo(make_vec_env("CartPole-v1", n_envs=1))
        with EvalRunner(EnvSpec(cartpole, num_envs=1), SB3Evaluator(model),
                        num_episodes=1) as runner, \
                pytest.raises(ValueError, match="runner: expected an EvalRunner with a schedule"):
            EvalRunnerCallback(runner)


class TestVecNormalize:
    def test_statistics_travel_with_the_snapshot_and_normalise_as_sb3_does(self):
        train = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0), norm_reward=False)
        model = small_ppo(train)
        make_env = normalized_like(train, cartpole)
        runner = EvalRunner(EnvSpec(make_env, num_envs=4), SB3Evaluator(model), num_episodes=8,
                            episodes=EpisodeSettings(seed=3),
                            schedule=EvalSchedule(every=512, busy_policy="queue"))
        callback = EvalRunnerCallback(runner)
        model.learn(1024, callback=callback)
        # the final evaluation took the statistics as training left them, frozen
        for env in runner._backend.episodes._envs.envs:
            rms = env.get_wrapper_attr("obs_rms")
            np.testing.assert_array_equal(rms.mean, train.obs_rms.mean)
            assert env.get_wrapper_attr("update_running_mean") is False
        final = callback.results[-1]
        runner.shutdown()
        # SB3's own evaluation on a VecNormalize eval env synced to the same statistics, each
        # episode alone, seeded with its documented seed
        rewards, lengths = [], []
        for slot in range(4):
            for episode in range(2):
                evaluation = VecNormalize(DummyVecEnv([cartpole]), training=False,
                                          norm_reward=False)
                evaluation.obs_rms = train.obs_rms.copy()
                evaluation.seed(seed_by_hand(3, slot, episode))
                reward, length = evaluate_policy(model, evaluation, n_eval_episodes=1,
                                                 deterministic=True,
                                                 return_episode_rewards=True, warn=False)
                rewards, lengths = rewards + reward, lengths + length
                evaluation.close()
        assert [r.length for r in final.episodes] == lengths
        assert final["eval/reward"] == pytest.approx(np.mean(rewards))

    @pytest.mark.parametrize("final_eval", [True, False], ids=["final", "scheduled"])
    def test_raw_evaluation_envs_are_pointed_to_normalized_like(self, final_eval):
        train = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0), norm_reward=False)
        model = small_ppo(train)
        # eval_every past the training steps: only the final evaluation fails
        runner = EvalRunner(EnvSpec(cartpole, num_envs=2), SB3Evaluator(model), num_episodes=2,
                            schedule=EvalSchedule(every=10_000 if final_eval else 128))
        with pytest.raises(EvaluationError, match=r"^obs_norm: the model trains behind "
                                                  r"VecNormalize.*outside any env factory.*"
                                                  r"normalized_like\(model\.get_vec_normalize"
                                                  ) as caught:
            model.learn(256, callback=EvalRunnerCallback(runner, final_eval=final_eval))
        runner.shutdown()
        assert "training script's env factory" not in str(caught.value)  # no help for SB3
        assert isinstance(caught.value.__cause__, EvaluationError)  # the original, chained

    def test_a_workers_failure_comes_back_with_its_type(self):
        # A worker's exception travels pickled (RemoteFailure); its type says what it is.
        try:
            raise _no_wrapper(gym.make("CartPole-v1"))
        except MissingNormalization as error:
            remote = RemoteFailure.of(error).exception()
        outer = EvaluationError("the evaluation triggered at step 5 failed")
        outer.__cause__ = remote
        assert isinstance(remote, MissingNormalization) and remote.argument == "obs_norm"
        assert _lacks_wrapper(outer)
        assert not _lacks_wrapper(EvaluationError("obs_norm: expected evaluation envs with "
                                                  "gymnasium.wrappers.NormalizeObservation"))


def test_plr_scores_with_an_sb3_ppo_while_it_trains():
    """The README's example: PLR's worker scores what an SB3 PPO plays on CartPole tasks,
    through SB3Evaluator, while model.learn() runs and background evaluations land."""
    namespace: dict = {}
    example = readme_snippet("Stable-Baselines3 with PLR and background evaluations")
    exec(example, namespace)  # verbatim
    plr, callback, tasks = namespace["plr"], namespace["callback"], namespace["TASKS"]
    scored = plr.scored_steps()
    assert sum(scored.values()) >= 2000  # nearly every step played was scored
    assert set(scored) <= set(tasks) and len(scored) >= 2
    assert len(callback.results) >= 3  # scheduled ones landed, then the final one
    assert all(f"eval/task/{task}/reward" in callback.results[-1] for task in tasks)
