"""The episode plan: fixed quotas, each slot's on its own env by default, and the opt-in
floating tail that envs which met their own quota take over; the episodes stay the same
whoever runs them."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import SyncVectorEnv

from syllabus_eval import EnvPool, RolloutSettings, episode_quota, run_episodes
from syllabus_eval.adapters import DummyEvaluator
from syllabus_eval.rollout.plan import EpisodePlan
from tests.fake_envs import as_tuples, ground_truth, seed_by_hand


def drain(plan: EpisodePlan, order: list[int]) -> dict[int, list[tuple[int, int]]]:
    """Hand out every episode: envs ask in ``order`` (repeating) until all pause."""
    runs = {env: [plan.first_job(env)] for env in range(len(plan.quotas))}
    runs = {env: jobs for env, jobs in runs.items() if jobs[0] is not None}
    waiting = list(runs)
    while waiting:
        for env in order:
            if env in waiting:
                job = plan.next_job(env)
                if job is None:
                    waiting.remove(env)
                else:
                    runs[env].append(job)
    return runs


class TestEpisodePlan:
    @pytest.mark.parametrize("interchangeable", [False, True])
    @pytest.mark.parametrize(("n", "k"), [(3, 8), (16, 2), (21, 4), (100, 7)])
    def test_every_episode_is_run_once(self, n: int, k: int, interchangeable: bool) -> None:
        plan = EpisodePlan(RolloutSettings(num_episodes=n, interchangeable_slots=interchangeable),
                           range(k), k)
        runs = drain(plan, order=[0] * 5 + list(range(k)))  # env 0 asks most: it steals
        jobs = [job for env_jobs in runs.values() for job in env_jobs]
        assert sorted(jobs) == [(slot, episode) for slot in range(k)
                                for episode in range(episode_quota(n, k, slot))]
        if not interchangeable:  # by default every episode runs on its own slot's env
            assert all(job[0] == env for env, env_jobs in runs.items() for job in env_jobs)

    def test_owners_run_in_order_and_others_take_only_the_floating_tail(self) -> None:
        plan = EpisodePlan(RolloutSettings(num_episodes=16, interchangeable_slots=True),
                           range(2), 2)
        # Env 1 asks four times as often as env 0: it finishes early and helps.
        runs = drain(plan, order=[1, 1, 1, 1, 0])
        own = [job for job in runs[0] if job[0] == 0]
        assert own == [(0, e) for e in range(len(own))]  # slot 0's owner: in order
        taken = [job for job in runs[1] if job[0] == 0]
        assert taken == [(0, 7), (0, 6)]  # 8 // 4 = 2 float, taken from the back
        assert all(plan.floats(job) for job in taken)

    def test_seeds(self) -> None:
        # Global slots 2 and 3 of 4: each episode's seed follows its global slot and index.
        plan = EpisodePlan(RolloutSettings(num_episodes=16, seed=10), [2, 3], 4)
        assert [plan.seed((0, e)) for e in range(4)] == [seed_by_hand(10, 2, e)
                                                         for e in range(4)]
        assert plan.number((0, 3)) == 14  # round 3, third slot
        unseeded = EpisodePlan(RolloutSettings(num_episodes=16, seed=None), [2, 3], 4)
        assert {unseeded.seed((0, e)) for e in range(4)} == {None}


class SeedLengthEnv(gym.Env):
    """Episodes of 40 steps after a reset seeded with one of ``long_seeds``, of 2 after
    another seed (unseeded resets keep the last seed's length); counts its own resets."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, long_seeds: frozenset[int] = frozenset()) -> None:
        self.long_seeds = long_seeds
        self.resets, self.length, self.t = 0, 2, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.resets += 1
        if seed is not None:
            self.length = 40 if seed in self.long_seeds else 2
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: Any):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, self.t >= self.length, False, {}


@pytest.mark.parametrize("kind", ["pool", "sync-next"])
def test_an_env_that_met_its_quota_runs_the_floating_tail_of_a_slow_one(kind: str) -> None:
    settings = RolloutSettings(num_episodes=16, seed=0, interchangeable_slots=True)
    long = frozenset(seed_by_hand(0, 0, e) for e in range(8))  # slot 0's: long; slot 1: short
    envs = [SeedLengthEnv(long), SeedLengthEnv(long)]
    pool = EnvPool(envs) if kind == "pool" else SyncVectorEnv([lambda env=env: env
                                                               for env in envs])
    records = run_episodes(DummyEvaluator(SeedLengthEnv.action_space, seed=0), pool, settings)
    pool.close()
    # Alike envs: the episodes of each slot run alone on an env of its own.
    assert as_tuples(records) == ground_truth(lambda: SeedLengthEnv(long), settings, 2)
    assert [r.length for r in records] == [40] * 8 + [2] * 8
    if kind == "pool":  # env 1 ran its 8 episodes and slot 0's last two (8 // 4); env 0 only 6
        assert [env.resets for env in envs] == [6, 10]


@pytest.mark.parametrize("interchangeable", [False, True])
def test_shares_of_the_slots_give_the_records_of_one_run(interchangeable: bool) -> None:
    settings = RolloutSettings(num_episodes=30, seed=4, interchangeable_slots=interchangeable)
    long = frozenset(seed_by_hand(4, slot, e) for slot in (0, 2) for e in range(8))
    whole = run_episodes(DummyEvaluator(SeedLengthEnv.action_space, seed=0),
                         EnvPool([SeedLengthEnv(long) for _ in range(4)]), settings)
    shares = [run_episodes(DummyEvaluator(SeedLengthEnv.action_space, seed=0),
                           EnvPool([SeedLengthEnv(long) for _ in range(2)]), settings,
                           slots=slots, num_slots=4) for slots in ([0, 1], [2, 3])]
    assert as_tuples(whole) == as_tuples(shares[0] + shares[1])


class PoleAngle:
    """Pushes the cart toward the pole's lean: CartPole episodes of 30 to 60 steps."""

    @staticmethod
    def act(obs: np.ndarray) -> np.ndarray:
        return (obs[:, 2] > 0).astype(np.int64)

    def get_action(self, state: np.ndarray, lstm_state: Any = None, done: Any = None, *,
                   deterministic: bool | None = None) -> tuple[np.ndarray, dict]:
        return self.act(state), {}


def test_a_native_vector_env_runs_floating_episodes_from_its_own_autoresets() -> None:
    """CartPoleVectorEnv resets sub-envs only by itself: a sub-env that met its quota counts
    its next autoreset episode for another slot's floating one, decided before it starts."""
    settings = RolloutSettings(num_episodes=32, seed=0,
                               interchangeable_slots=True)  # quotas of 8, 2 float
    envs = gym.make_vec("CartPole-v1", num_envs=4)
    records = run_episodes(PoleAngle(), envs, settings)
    envs.close()
    # The same env stepped by hand, each ended episode counted for the job it was given.
    hand = gym.make_vec("CartPole-v1", num_envs=4)
    obs, _ = hand.reset(seed=seed_by_hand(0, 0, 0))  # one generator: the first slot's seed
    plan = EpisodePlan(settings, range(4), 4)
    jobs = [plan.first_job(env) for env in range(4)]
    length, autoreset, expected, taken_over = [0] * 4, np.zeros(4, dtype=bool), [], 0
    while any(job is not None for job in jobs):
        obs, _, terminated, truncated, _ = hand.step(PoleAngle.act(obs))
        for env in range(4):
            if autoreset[env] or jobs[env] is None:
                continue
            length[env] += 1
            if terminated[env] or truncated[env]:
                expected.append((*jobs[env], length[env]))
                jobs[env], length[env] = plan.next_job(env), 0
                taken_over += jobs[env] is not None and jobs[env][0] != env
        autoreset = terminated | truncated
    hand.close()
    assert [(r.env_index, r.episode_index, r.length) for r in records] == sorted(expected)
    assert [r.env_index for r in records].count(0) == 8 and taken_over
