"""The episode loop: quotas, autoreset modes, pausing, recurrent state, tasks, seeding."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from syllabus_eval import (
    EnvPool,
    RolloutSettings,
    check_fit,
    episode_quota,
    make_envs,
    run_episodes,
    summarize,
)
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from syllabus_eval.demo.agents import LSTMAgent, MLPAgent
from tests.fake_envs import (
    CountEnv,
    CountingEvaluator,
    DrawEnv,
    LengthEnv,
    TaskEnv,
    as_tuples,
    ground_truth,
    seed_by_hand,
)

DUMMY = DummyEvaluator(gym.spaces.Discrete(2), deterministic=True)  # always action 0

# Every kind of envs the loop runs on: our pool, and Gymnasium's vector envs in both modes.
ENV_KINDS = {
    "pool": lambda fns: EnvPool([fn() for fn in fns]),
    "sync-next": lambda fns: SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP),
    "sync-same": lambda fns: SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP),
    "async-next": lambda fns: AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP),
    "async-same": lambda fns: AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP),
}


def run(kind: str, make_env, settings: RolloutSettings, num_envs: int, evaluator=DUMMY,
        **kwargs):
    envs = ENV_KINDS[kind]([make_env] * num_envs)
    try:
        return run_episodes(evaluator, envs, settings, **kwargs), envs
    finally:
        envs.close()


class TestQuotas:
    @pytest.mark.parametrize(("n", "k"), [(1, 1), (3, 8), (8, 8), (20, 8), (21, 4), (100, 7)])
    def test_quotas_sum_to_n_and_differ_by_at_most_one(self, n, k):
        quotas = [episode_quota(n, k, i) for i in range(k)]
        assert sum(quotas) == n
        assert max(quotas) - min(quotas) <= 1

    @pytest.mark.parametrize("kind", ["pool", "sync-next"])
    def test_exactly_n_episodes_are_counted(self, kind):
        records, _ = run(kind, LengthEnv, RolloutSettings(num_episodes=11), num_envs=4)
        assert len(records) == 11
        assert [r.env_index for r in records].count(3) == episode_quota(11, 4, 3) == 3


class TestNoShortEpisodeBias:
    """SB3 #402: with lengths that vary, counting the first N episodes to finish favours short
    ones; fixed quotas give the mean of the same episodes run one env at a time."""

    N, K = 16, 4

    def naive_first_n(self) -> list[float]:
        envs = SyncVectorEnv([LengthEnv] * self.K)
        envs.reset(seed=0)
        returns, running = [], np.zeros(self.K)
        autoreset = np.zeros(self.K, dtype=bool)
        while len(returns) < self.N:
            _, reward, terminated, truncated, _ = envs.step(np.zeros(self.K, dtype=np.int64))
            running[~autoreset] += reward[~autoreset]
            ended = (terminated | truncated) & ~autoreset
            returns += running[ended].tolist()
            running[ended] = 0
            autoreset = terminated | truncated
        envs.close()
        return returns[:self.N]

    def test_mean_matches_the_single_env_ground_truth(self):
        settings = RolloutSettings(num_episodes=self.N, seed=0)
        records, _ = run("pool", LengthEnv, settings, num_envs=self.K)
        truth = ground_truth(LengthEnv, settings, self.K)
        assert as_tuples(records) == truth
        true_mean = np.mean([episode[2] for episode in truth])
        assert np.mean([r.reward for r in records]) == pytest.approx(true_mean)
        # The bias the quotas remove: the same envs, counted first-come, read far lower.
        assert np.mean(self.naive_first_n()) < 0.75 * true_mean


class TestAutoresetModes:
    @pytest.mark.parametrize("kind", list(ENV_KINDS))
    def test_episodes_equal_those_of_single_envs(self, kind):
        settings = RolloutSettings(num_episodes=10, seed=3)
        records, _ = run(kind, LengthEnv, settings, num_envs=3)
        assert as_tuples(records) == ground_truth(LengthEnv, settings, 3)

    @pytest.mark.parametrize("kind", list(ENV_KINDS))
    def test_max_steps_truncates_like_a_time_limit(self, kind):
        settings = RolloutSettings(num_episodes=10, max_steps=5, seed=1)
        records, _ = run(kind, LengthEnv, settings, num_envs=3)
        assert as_tuples(records) == ground_truth(LengthEnv, settings, 3)
        assert all(r.length <= 5 for r in records)
        assert any(r.truncated and not r.terminated for r in records)

    def test_cartpole_with_a_time_limit(self):
        settings = RolloutSettings(num_episodes=6, max_steps=12, seed=0)
        make = lambda: gym.make("CartPole-v1")  # noqa: E731
        records, _ = run("sync-same", make, settings, num_envs=4)
        assert as_tuples(records) == ground_truth(make, settings, 4)

    def test_a_native_vector_env_autoresets_by_itself(self):
        """Gymnasium's CartPoleVectorEnv: NEXT_STEP, one generator, no reset_mask support."""
        settings = RolloutSettings(num_episodes=10, max_steps=None, seed=0)
        envs = gym.make_vec("CartPole-v1", num_envs=4)
        records = run_episodes(DUMMY, envs, settings)
        envs.close()
        # The same env, seeded alike and stepped by hand, skipping its autoreset steps.
        hand = gym.make_vec("CartPole-v1", num_envs=4)
        hand.reset(seed=seed_by_hand(0, 0, 0))  # one generator: the first slot's seed
        quotas = [episode_quota(10, 4, i) for i in range(4)]
        count, length, autoreset, expected = [0] * 4, [0] * 4, [False] * 4, []
        while count != quotas:
            _, _, terminated, truncated, _ = hand.step(np.zeros(4, dtype=np.int64))
            for i in range(4):
                if autoreset[i] or count[i] == quotas[i]:
                    continue
                length[i] += 1
                if terminated[i] or truncated[i]:
                    expected.append((i, count[i], length[i]))
                    count[i], length[i] = count[i] + 1, 0
            autoreset = terminated | truncated
        hand.close()
        assert [(r.env_index, r.episode_index, r.length) for r in records] == sorted(expected)
        assert all(r.reward == r.length for r in records)

    def test_a_vector_env_that_ignores_reset_masks_is_caught(self):
        envs = gym.make_vec("CartPole-v1", num_envs=4)
        with pytest.raises(ValueError, match="resets only the sub-envs in options"):
            run_episodes(DUMMY, envs, RolloutSettings(num_episodes=12, max_steps=9))
        envs.close()

    def test_tasks_on_a_native_vector_env_are_refused_by_name(self):
        envs = gym.make_vec("CartPole-v1", num_envs=2)
        with pytest.raises(ValueError, match="tasks: expected envs that reset one sub-env at "
                                             "a time.*got a CartPoleVectorEnv"):
            run_episodes(DUMMY, envs, RolloutSettings(num_episodes=2, tasks=[0, 1]))
        envs.close()

    def test_disabled_autoreset_is_refused(self):
        envs = SyncVectorEnv([LengthEnv] * 2, autoreset_mode=AutoresetMode.DISABLED)
        with pytest.raises(ValueError, match="envs: expected a vector env with NEXT_STEP"):
            run_episodes(DUMMY, envs, RolloutSettings(num_episodes=2))
        envs.close()


class TestPausing:
    def test_a_pool_does_not_step_paused_envs(self):
        pool = EnvPool([LengthEnv() for _ in range(4)])
        records = run_episodes(DUMMY, pool, RolloutSettings(num_episodes=7, seed=0))
        for i, env in enumerate(pool.envs):  # quotas 1, 2, 2, 2
            assert env.steps_taken == sum(r.length for r in records if r.env_index == i)

    def test_a_vector_env_drops_what_paused_envs_do(self):
        # The vector env keeps stepping slot 0 after its single episode; none of it counts.
        records, _ = run("sync-next", LengthEnv, RolloutSettings(num_episodes=7, seed=0), 4)
        assert [r.env_index for r in records] == [0, 1, 1, 2, 2, 3, 3]


class TestRecurrentState:
    @pytest.mark.parametrize("kind", ["pool", "sync-next", "sync-same"])
    def test_state_restarts_per_env_and_done_marks_episode_starts(self, kind):
        evaluator = CountingEvaluator()
        records, _ = run(kind, CountEnv, RolloutSettings(num_episodes=23, seed=0), 5,
                         evaluator=evaluator)
        assert len(records) == 23
        assert len({r.length for r in records}) > 3  # envs pause at different times
        assert all(r.reward == r.length for r in records)
        assert evaluator.done_mismatches == 0

    def test_recurrent_adapters_run_with_paused_envs(self):
        make = lambda: gym.make("CartPole-v1")  # noqa: E731
        probe = gym.make_vec("CartPole-v1", num_envs=1)
        for evaluator in (DummyEvaluator(probe.single_action_space, is_lstm=True, seed=0),
                          CleanRLEvaluator(LSTMAgent(probe), is_lstm=True, deterministic=True)):
            records, _ = run("pool", make, RolloutSettings(num_episodes=9, max_steps=50), 4,
                             evaluator=evaluator)
            assert len(records) == 9
        probe.close()


class TestTasks:
    TASKS = [0, 1, 2, 3]

    @pytest.mark.parametrize("kind", ["pool", "sync-next", "async-next"])
    def test_tasks_go_round_robin_and_reach_the_envs(self, kind):
        settings = RolloutSettings(num_episodes=10, tasks=self.TASKS)
        records, _ = run(kind, TaskEnv, settings, num_envs=3)
        counts = {t: sum(r.task == t for r in records) for t in self.TASKS}
        assert sorted(counts.values()) == [2, 2, 3, 3]  # N // T or N // T + 1 each
        for r in records:  # the env ran the task the record names
            assert (r.length, r.reward, r.success) == (r.task + 1, r.task * (r.task + 1),
                                                       r.task % 2 == 0)
        # Round by round: round 0 is slots 0, 1, 2 -> tasks 0, 1, 2; round 1 -> 3, 0, 1.
        assert [r.task for r in records if r.episode_index < 2] == [0, 3, 1, 0, 2, 1]

    def test_set_task_hook_replaces_the_reset_option(self):
        seen = []

        def set_task(env, task):
            seen.append(task)
            env.unwrapped.set_task(task)

        pool = make_envs(TaskEnv, num_envs=2, set_task=set_task)
        records = run_episodes(DUMMY, pool, RolloutSettings(num_episodes=4, tasks=[2, 5]))
        assert sorted(seen) == [2, 2, 5, 5]
        assert [r.length for r in records] == [r.task + 1 for r in records]
        assert all(options is None for env in pool.envs for _, options in env.unwrapped.resets)
        pool.close()

    def test_tasks_that_are_dicts(self):
        # Configurations as tasks (unhashable): grouped by name, str(task).
        tasks = [{"length": 1}, {"length": 2}]
        pool = make_envs(TaskEnv, num_envs=2,
                         set_task=lambda env, task: env.unwrapped.set_task(task["length"]))
        records = run_episodes(DUMMY, pool, RolloutSettings(num_episodes=4, tasks=tasks))
        pool.close()
        result = summarize(records)
        assert result["eval/task/{'length': 1}/episode_length"] == 2.0
        assert result["eval/task/{'length': 2}/reward"] == 6.0
        assert result["eval/task/{'length': 2}/num_episodes"] == 2

    def test_same_step_vector_envs_cannot_take_tasks(self):
        with pytest.raises(ValueError, match="tasks: a SAME_STEP vector env"):
            run("sync-same", TaskEnv, RolloutSettings(num_episodes=2, tasks=[1]), 2)


class TestSeeding:
    def test_same_seed_same_episodes_other_seed_other_episodes(self):
        first, _ = run("pool", LengthEnv, RolloutSettings(num_episodes=12, seed=7), 3)
        again, _ = run("sync-next", LengthEnv, RolloutSettings(num_episodes=12, seed=7), 3)
        other, _ = run("pool", LengthEnv, RolloutSettings(num_episodes=12, seed=8), 3)
        assert as_tuples(first) == as_tuples(again)
        assert as_tuples(first) != as_tuples(other)

    @pytest.mark.parametrize("kind", ["pool", "sync-next", "sync-same"])
    def test_every_episode_is_reset_with_its_own_seed(self, kind):
        envs = [TaskEnv() for _ in range(3)]
        pool = EnvPool(envs) if kind == "pool" else SyncVectorEnv(
            [lambda env=env: env for env in envs],
            autoreset_mode=AutoresetMode.SAME_STEP if kind == "sync-same" else
            AutoresetMode.NEXT_STEP)
        run_episodes(DUMMY, pool, RolloutSettings(num_episodes=6, seed=10))
        expected = [[seed_by_hand(10, slot, episode) for episode in range(2)]
                    for slot in range(3)]
        # A vector env's first reset seeds every sub-env once before the first episode's own
        # masked reset; SAME_STEP autoresets are unseeded and replaced by the seeded reset.
        assert [[seed for seed, _ in env.resets if seed is not None][-2:]
                for env in envs] == expected

    def test_evaluations_with_other_seeds_share_no_episode(self):
        """Each episode reports an id its env draws at reset: seeds 0 and 1 (and 0..4 as a
        user evaluating training runs 0..4 would) share none; seed 0 again gives the same."""
        def ids(seed):
            records, _ = run("pool", DrawEnv, RolloutSettings(
                num_episodes=80, seed=seed, info_keys={"id": "last"}), 8)
            return [r.info["id"] for r in records]

        runs = [ids(seed) for seed in range(5)]
        assert all(len(set(run_ids)) == 80 for run_ids in runs)
        assert len(set().union(*runs)) == 5 * 80
        assert ids(0) == runs[0]


class TestSlotSubsets:
    """Workers that each run some global slots give, merged, the records of one run."""

    @pytest.mark.parametrize("tasks", [None, [0, 1, 2]])
    def test_merged_subsets_equal_the_whole(self, tasks):
        settings = RolloutSettings(num_episodes=13, seed=5, tasks=tasks)
        make = TaskEnv if tasks else LengthEnv
        whole, _ = run("pool", make, settings, num_envs=5)
        parts = []
        for slots in ([0, 1], [2, 3, 4]):
            part, _ = run("pool", make, settings, num_envs=len(slots), slots=slots,
                          num_slots=5)
            parts += part
        assert parts == whole

    def test_slots_must_fit_the_envs(self):
        pool = EnvPool([LengthEnv() for _ in range(2)])
        with pytest.raises(ValueError, match="slots: expected 2 distinct"):
            run_episodes(DUMMY, pool, RolloutSettings(num_episodes=2), slots=[1, 1])
        with pytest.raises(ValueError, match=r"slots: expected indices in \[0, 2\)"):
            run_episodes(DUMMY, pool, RolloutSettings(num_episodes=2), slots=[1, 2])


class TestEnvChecks:
    @pytest.mark.parametrize("wrap", [
        lambda e: gym.wrappers.vector.NormalizeReward(e),
        lambda e: gym.wrappers.vector.ClipReward(e, 0.0, 1.0),
    ])
    def test_vector_reward_wrappers_are_refused(self, wrap):
        envs = wrap(SyncVectorEnv([LengthEnv] * 2))
        with pytest.raises(ValueError, match="rewards are the sub-envs' own"):
            run_episodes(DUMMY, envs, RolloutSettings(num_episodes=2))
        envs.close()

    def test_spaces_that_do_not_fit_the_agent(self):
        agent = MLPAgent(gym.make_vec("CartPole-v1", num_envs=1))
        pool = make_envs(LengthEnv, num_envs=2)  # 2 observations, CartPole has 4
        with pytest.raises(ValueError, match="envs: the env's single_observation_space"):
            check_fit(CleanRLEvaluator(agent, deterministic=True), pool)
        with pytest.raises(ValueError, match="single_observation_space"):
            check_fit(CleanRLEvaluator(agent, observation_space=gym.spaces.Box(
                -1, 1, (4,))), pool)
        pool.close()

    def test_actions_that_do_not_fit_the_env(self):
        pool = make_envs(LengthEnv, num_envs=2)
        box_actions = DummyEvaluator(gym.spaces.Box(-1, 1, (3,)))
        with pytest.raises(ValueError, match="envs: the env's single_action_space"):
            check_fit(box_actions, pool)
        pool.close()


class TestMakeEnvs:
    def test_kinds(self):
        pool = make_envs(LengthEnv, num_envs=3)
        assert isinstance(pool, EnvPool) and pool.num_envs == 3
        pool.close()
        envs = make_envs(LengthEnv, num_envs=2, vectorization_mode="async")
        assert isinstance(envs, AsyncVectorEnv)
        envs.close()
        vector = make_envs(lambda: SyncVectorEnv([LengthEnv] * 2), num_envs=2)
        assert isinstance(vector, SyncVectorEnv)
        vector.close()

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"make_env": 3}, "make_env: expected a callable"),
        ({"make_env": lambda: 3}, "make_env: expected a callable returning a gymnasium Env"),
        ({"num_envs": 0}, "num_envs: expected an integer >= 1"),
        ({"vectorization_mode": "fast"},
         r"vectorization_mode: expected one of \['sync', 'async'\]"),
        ({"make_env": lambda: SyncVectorEnv([LengthEnv] * 3)}, "num_envs: expected 3"),
        ({"make_env": lambda: SyncVectorEnv([LengthEnv] * 2), "set_task": print},
         "set_task: expected None"),
    ])
    def test_bad_arguments(self, kwargs, message):
        arguments = {"make_env": LengthEnv, "num_envs": 2, **kwargs}
        with pytest.raises(ValueError, match=message):
            make_envs(**arguments)

    def test_a_factory_of_one_env_for_several_slots_is_refused(self):
        # stepped as two slots, one env would interleave their episodes
        env = gym.wrappers.TimeLimit(LengthEnv(), 100)
        with pytest.raises(ValueError, match="make_env: expected a factory that builds a new "
                           "env on each call, got one that returned the same LengthEnv"):
            make_envs(lambda: gym.wrappers.RecordEpisodeStatistics(env), num_envs=2)

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"num_episodes": 0}, "num_episodes: expected an integer >= 1, got int 0"),
        ({"max_steps": 2.5}, "max_steps: expected an integer >= 1"),
        ({"deterministic": "yes"}, "deterministic: expected True, False or None"),
        ({"seed": 1.0}, "seed: expected an integer >= 0, got float 1.0"),
        ({"seed": -1}, "seed: expected an integer >= 0, got int -1"),
        ({"seed": True}, "seed: expected an integer >= 0, got bool True"),
        ({"interchangeable_slots": 1}, "interchangeable_slots: expected True or False"),
        ({"tasks": []}, "tasks: expected a non-empty list"),
        ({"tasks": [1, "1"]}, "tasks: expected tasks with distinct names"),
        ({"success_key": 1}, "success_key: expected an info key"),
    ])
    def test_bad_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            RolloutSettings(**{"num_episodes": 2, **kwargs})


def test_actions_are_the_agents_on_cartpole():
    """The CleanRL MLP agent acts greedily on CartPole; episodes match single envs."""
    probe = gym.make_vec("CartPole-v1", num_envs=1)
    agent = MLPAgent(probe)
    evaluator = CleanRLEvaluator(agent, deterministic=True)

    def policy(obs):
        with torch.no_grad():
            return int(agent.actor(torch.as_tensor(obs)[None]).argmax())

    make = lambda: gym.make("CartPole-v1")  # noqa: E731
    settings = RolloutSettings(num_episodes=8, max_steps=200, seed=0)
    records, _ = run("pool", make, settings, num_envs=4, evaluator=evaluator)
    assert as_tuples(records) == ground_truth(make, settings, 4, policy)
    probe.close()
