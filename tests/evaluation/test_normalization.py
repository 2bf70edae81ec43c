"""Observation normalisation from training, frozen for evaluation: read at trigger time with the
weights, applied to the evaluation envs' own wrappers, merged by count, in every backend."""

from __future__ import annotations

import threading
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, EvaluationError
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.evaluation.backends import as_backend
from syllabus_eval.evaluation.normalization import ObsNormStats, apply_obs_norm, read_obs_norm
from tests.fake_envs import GatedEnv, seed_by_hand
from tests.workers import (
    cartpole_agent,
    cartpole_evaluator,
    cleanrl_continuous_cartpole,
    normalized_cartpole,
    trained_envs,
)

NUM_ENVS, EPISODES, SEED = 3, 6, 11


def by_hand(agent, stats: ObsNormStats) -> list[tuple[float, int]]:
    """The runner's episodes, run one env slot at a time with the frozen statistics."""
    episodes = []
    for slot in range(NUM_ENVS):
        env = normalized_cartpole()
        apply_obs_norm(gym.vector.SyncVectorEnv([lambda env=env: env]), stats)
        for episode in range((EPISODES + slot) // NUM_ENVS):
            obs, _ = env.reset(seed=seed_by_hand(SEED, slot, episode))
            total, length, done = 0.0, 0, False
            while not done:
                with torch.no_grad():
                    action = agent.actor(torch.as_tensor(obs)[None]).argmax(-1).item()
                obs, reward, terminated, truncated, _ = env.step(action)
                total, length, done = total + reward, length + 1, terminated or truncated
            episodes.append((total, length))
        env.close()
    return episodes


def episodes_of(result) -> list[tuple[float, int]]:
    return [(r.reward, r.length) for r in result.episodes]


class TestStatistics:
    def test_sub_envs_are_merged_by_count(self):
        envs = trained_envs()
        parts = [env.get_wrapper_attr("obs_rms") for env in envs.envs]
        merged = read_obs_norm(envs)
        counts = np.array([p.count for p in parts])
        assert merged.count == pytest.approx(counts.sum())
        mean = (counts[:, None] * np.stack([p.mean for p in parts])).sum(0) / counts.sum()
        # the pooled variance: within each part, plus the spread of the parts' means
        var = (counts[:, None] * (np.stack([p.var for p in parts])
                                  + (np.stack([p.mean for p in parts]) - mean) ** 2)
               ).sum(0) / counts.sum()
        np.testing.assert_allclose(merged.mean, mean, rtol=1e-6)
        np.testing.assert_allclose(merged.var, var, rtol=1e-6)
        assert not np.allclose(parts[0].mean, parts[1].mean)  # the merge mattered
        envs.close()

    def test_every_kind_of_source(self):
        sync = trained_envs()
        expected = read_obs_norm(sync)
        one = sync.envs[0]
        vector = gym.wrappers.vector.NormalizeObservation(gym.make_vec("CartPole-v1", 2))
        vector.reset(seed=0)
        for _ in range(5):
            vector.step(np.zeros(2, dtype=np.int64))
        for source, want in [
                (one, one.get_wrapper_attr("obs_rms")),
                (one.get_wrapper_attr("obs_rms"), one.get_wrapper_attr("obs_rms")),
                ({"mean": expected.mean, "var": expected.var, "count": expected.count},
                 expected),
                (expected, expected), (vector, vector.obs_rms)]:
            got = read_obs_norm(source)
            np.testing.assert_array_equal(got.mean, want.mean)
            assert got.count == want.count
        async_envs = trained_envs(vector=gym.vector.AsyncVectorEnv)  # across processes
        got = read_obs_norm(async_envs)
        np.testing.assert_allclose(got.mean, expected.mean)
        for envs in (sync, vector, async_envs):
            envs.close()

    def test_a_copy_that_training_does_not_move(self):
        envs = trained_envs()
        stats = read_obs_norm(envs)
        before = stats.mean.copy()
        envs.step(np.ones(2, dtype=np.int64))
        np.testing.assert_array_equal(stats.mean, before)
        envs.close()

    @pytest.mark.parametrize("source, message", [
        (gym.make_vec("CartPole-v1", 2, vectorization_mode="sync"),
         "sub-envs have no NormalizeObservation"),
        (gym.make("CartPole-v1"), "obs_norm: expected a vector env whose sub-envs carry"),
        ({"mean": [0.0]}, "obs_norm: expected"),
        ({"mean": [0.0], "var": [-1.0], "count": 3}, "a finite, non-negative var"),
        ({"mean": [0.0, 1.0], "var": [1.0], "count": 3}, "mean and var of one shape"),
        ({"mean": [0.0], "var": [1.0], "count": 0}, "obs_norm.count: expected a positive"),
        ({"mean": [0.0], "var": [1.0], "count": "x"}, "obs_norm.count: expected a positive"),
        ({"mean": [0.0], "var": [1.0], "count": None}, "obs_norm.count: expected a positive"),
        ({"mean": ["a"], "var": [1.0], "count": 3}, "obs_norm: expected a numeric mean"),
    ])
    def test_sources_without_normalisation(self, source, message):
        with pytest.raises(ValueError, match=message):
            read_obs_norm(source)


class TestEvaluation:
    def test_equals_episodes_run_by_hand_with_the_trigger_time_statistics(self):
        envs, agent, gate = trained_envs(), cartpole_agent(seed=3), threading.Event()
        stepping = threading.Event()
        make_env = lambda: GatedEnv(normalized_cartpole(), gate, stepping)  # noqa: E731
        with EvalRunner(EnvSpec(make_env, num_envs=NUM_ENVS), CleanRLEvaluator(agent),
                        num_episodes=EPISODES,
                        episodes=EpisodeSettings(max_steps=None, seed=SEED)) as runner:
            at_trigger = read_obs_norm(envs)
            runner.trigger_eval(agent, step=1, obs_norm=envs)
            assert stepping.wait(30)
            for _ in range(50):  # training moves the statistics while the evaluation runs
                envs.step(np.ones(2, dtype=np.int64))
            assert not np.allclose(read_obs_norm(envs).mean, at_trigger.mean)
            gate.set()
            result = runner.wait(60)
            # the evaluation envs' statistics did not move while they evaluated
            for env in runner._backend.episodes._envs.envs:
                rms = env.get_wrapper_attr("obs_rms")
                np.testing.assert_array_equal(rms.mean, at_trigger.mean)
                assert rms.count == at_trigger.count
                assert env.get_wrapper_attr("update_running_mean") is False
        assert episodes_of(result) == by_hand(agent, at_trigger)
        # the statistics matter: fresh ones give other episodes
        fresh = ObsNormStats(np.zeros(4), np.ones(4), 1.0)
        assert episodes_of(result) != by_hand(agent, fresh)
        envs.close()

    @pytest.mark.parametrize("backend", ["process", "ray"])
    def test_workers_get_them_with_the_weights(self, backend, request):
        if backend == "ray":
            request.getfixturevalue("ray_cluster")
        envs, agent = trained_envs(), cartpole_agent(seed=3)
        stats = read_obs_norm(envs)
        with EvalRunner(EnvSpec(normalized_cartpole, num_envs=NUM_ENVS), CleanRLEvaluator(agent),
                        num_episodes=EPISODES, episodes=EpisodeSettings(max_steps=None, seed=SEED),
                        backend=as_backend(backend, evaluator_fn=cartpole_evaluator,
                                           num_workers=2)) as runner:
            result = runner.evaluate(agent, step=1, obs_norm=envs)
            again = runner.evaluate(agent, step=2, obs_norm=stats)
        assert episodes_of(result) == by_hand(agent, stats) == episodes_of(again)
        envs.close()

    @pytest.mark.parametrize("vector", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv],
                             ids=["sync", "async"])
    def test_vector_eval_envs_stay_frozen_beside_reward_normalisation(self, vector):
        envs, agent = trained_envs(), cartpole_agent(seed=3)
        stats = read_obs_norm(envs)
        eval_envs = vector([cleanrl_continuous_cartpole] * NUM_ENVS)
        with EvalRunner(EnvSpec(eval_envs, num_envs=NUM_ENVS), CleanRLEvaluator(agent),
                        num_episodes=EPISODES,
                        episodes=EpisodeSettings(max_steps=None, seed=SEED)) as runner:
            result = runner.evaluate(agent, obs_norm=envs)
        for rms in eval_envs.get_attr("obs_rms"):  # the evaluation did not move them
            np.testing.assert_array_equal(rms.mean, stats.mean)
            assert rms.count == stats.count
        # the reward normalisation outside was left as it was (it keeps learning)
        assert all(eval_envs.get_attr("update_running_mean"))
        assert all(rms.count > 1 for rms in eval_envs.get_attr("return_rms"))
        with EvalRunner(EnvSpec(cleanrl_continuous_cartpole, num_envs=NUM_ENVS),
                        CleanRLEvaluator(agent), num_episodes=EPISODES,
                        episodes=EpisodeSettings(max_steps=None, seed=SEED)) as runner:
            pooled = runner.evaluate(agent, obs_norm=stats)
        assert episodes_of(result) == episodes_of(pooled)
        eval_envs.close()
        envs.close()

    def test_the_evaluation_env_must_have_the_wrapper(self, agent):
        envs = trained_envs()
        with EvalRunner(EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=2), cartpole_evaluator(),
                        num_episodes=2) as runner, pytest.raises(EvaluationError) as caught:
            runner.evaluate(obs_norm=envs)
        assert "obs_norm: expected evaluation envs with gymnasium.wrappers." \
               "NormalizeObservation" in str(caught.value.__cause__)
        envs.close()

    def test_a_bad_source_fails_at_the_trigger(self):
        with EvalRunner(EnvSpec(normalized_cartpole, num_envs=2), cartpole_evaluator(),
                        num_episodes=2) as runner, pytest.raises(ValueError, match="obs_norm"):
            runner.trigger_eval(obs_norm=gym.make("CartPole-v1"))

    @pytest.mark.filterwarnings("ignore:the evaluation envs normalise:RuntimeWarning")
    def test_an_evaluation_without_obs_norm_carries_no_earlier_statistics(self):
        """``evaluate(obs_norm=A)`` then ``evaluate()``: the second equals a fresh runner's,
        whose envs start from fresh statistics (and so does a second evaluation of it: the
        statistics its first one moved do not carry over either)."""
        envs, agent = trained_envs(), cartpole_agent(seed=3)
        options = {"num_episodes": EPISODES, "episodes": EpisodeSettings(seed=SEED)}
        spec = EnvSpec(normalized_cartpole, num_envs=NUM_ENVS)
        with EvalRunner(spec, CleanRLEvaluator(agent), **options) as fresh:
            first, second = fresh.evaluate(agent), fresh.evaluate(agent)
        with EvalRunner(spec, CleanRLEvaluator(agent), **options) as runner:
            frozen = runner.evaluate(agent, obs_norm=envs)
            after = runner.evaluate(agent)
        assert episodes_of(after) == episodes_of(first) == episodes_of(second)
        assert episodes_of(frozen) != episodes_of(first)  # the statistics matter here
        envs.close()

    def test_an_env_instance_cannot_be_made_fresh_so_obs_norm_is_asked_again(self):
        envs, agent = trained_envs(), cartpole_agent(seed=3)
        instance = gym.vector.SyncVectorEnv([normalized_cartpole] * NUM_ENVS)
        with EvalRunner(instance, CleanRLEvaluator(agent), num_episodes=EPISODES) as runner:
            runner.evaluate(agent, obs_norm=envs)
            with pytest.raises(EvaluationError) as caught:
                runner.evaluate(agent)
        assert str(caught.value.__cause__).startswith(
            "obs_norm: expected the training statistics again")
        instance.close()
        envs.close()

    def test_normalising_envs_without_obs_norm_warn(self):
        with EvalRunner(EnvSpec(normalized_cartpole, num_envs=2), cartpole_evaluator(),
                        num_episodes=2) as runner:
            with pytest.warns(RuntimeWarning, match="pass the training envs as obs_norm="):
                runner.evaluate()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                runner.evaluate()  # once
