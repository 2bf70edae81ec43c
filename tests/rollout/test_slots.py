"""Per-slot quotas are exact when the slots differ: each slot's episodes run on its own env,
whatever the envs are (one level, scene or config per slot), on every backend."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import SyncVectorEnv

from syllabus_eval import EnvPool, EnvSpec, EvalRunner, RolloutSettings, run_episodes
from syllabus_eval.adapters import DummyEvaluator
from syllabus_eval.evaluation.backends import as_backend
from tests.fake_envs import AlternatingLengths, FixedLengthEnv
from tests.workers import length_evaluator

DUMMY = DummyEvaluator(gym.spaces.Discrete(2), deterministic=True)


def two_lengths_vector_env() -> gym.vector.VectorEnv:
    """Slot 0 plays 10-step episodes, slot 1 100-step ones."""
    return SyncVectorEnv([lambda: FixedLengthEnv(10), lambda: FixedLengthEnv(100)])


def expected_mean_length(num_episodes: int) -> float:
    # By hand: slot 0 runs N // 2 episodes of 10 steps, slot 1 (N + 1) // 2 of 100.
    return (num_episodes // 2 * 10 + (num_episodes + 1) // 2 * 100) / num_episodes


@pytest.mark.parametrize("num_episodes", [6, 7, 40, 41])  # quotas below and above 4 per slot
@pytest.mark.parametrize("kind", ["pool", "vector"])
def test_each_slot_runs_its_quota_on_its_own_env(kind: str, num_episodes: int) -> None:
    envs = (EnvPool([FixedLengthEnv(10), FixedLengthEnv(100)]) if kind == "pool"
            else two_lengths_vector_env())
    records = run_episodes(DUMMY, envs, RolloutSettings(num_episodes=num_episodes, seed=0))
    envs.close()
    assert [(r.env_index, r.length) for r in records] == (
        [(0, 10)] * (num_episodes // 2) + [(1, 100)] * ((num_episodes + 1) // 2))


def test_the_floating_tail_is_for_slots_declared_interchangeable() -> None:
    """What the opt-in does to slots that differ: the 10-step env runs the 100-step slot's
    tail as 10-step episodes, the bias the default avoids."""
    envs = two_lengths_vector_env()
    records = run_episodes(DUMMY, envs, RolloutSettings(num_episodes=40, seed=0,
                                                        interchangeable_slots=True))
    envs.close()
    assert np.mean([r.length for r in records]) < expected_mean_length(40)


@pytest.mark.parametrize("num_episodes", [6, 40])
@pytest.mark.parametrize("make_env", [two_lengths_vector_env, AlternatingLengths(10, 100)],
                         ids=["vector-env", "factory-of-different-envs"])
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_the_runner_reports_the_true_mean_length(backend: str, make_env, num_episodes: int
                                                 ) -> None:
    options = {"evaluator_fn": length_evaluator} if backend == "process" else {}
    with EvalRunner(EnvSpec(make_env, num_envs=2), length_evaluator(), num_episodes=num_episodes,
                    backend=as_backend(backend, **options)) as runner:
        metrics = runner.evaluate()
    assert metrics["eval/episode_length"] == pytest.approx(expected_mean_length(num_episodes))
    lengths = {}
    for record in metrics.episodes:
        lengths.setdefault(record.env_index, set()).add(record.length)
    assert sorted(map(sorted, lengths.values())) == [[10], [100]]  # one env per slot


@pytest.mark.parametrize("kind", ["pool", "vector"])
def test_fewer_episodes_than_slots(kind: str) -> None:
    """Slot 0 of 2 has a quota of (1 + 0) // 2 = 0: it runs nothing (a vector env still
    resets it), slot 1 its one episode."""
    envs = (EnvPool([FixedLengthEnv(10), FixedLengthEnv(100)]) if kind == "pool"
            else two_lengths_vector_env())
    records = run_episodes(DUMMY, envs, RolloutSettings(num_episodes=1, seed=0))
    envs.close()
    assert [(r.env_index, r.length) for r in records] == [(1, 100)]
