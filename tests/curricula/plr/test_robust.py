"""Robust PLR (PLR⊥): unscored tasks are scored by PLR's own evaluation episodes, on a thread
of its own, and training draws only replay scored tasks."""

from __future__ import annotations

import threading
import time
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from syllabus_eval import CurriculumError
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.curricula import CurriculumWrapper, Experience, PrioritizedLevelReplay
from syllabus_eval.demo.agents import LSTMAgent
from tests.curricula.plr.test_plr import LinearAgent
from tests.fake_envs import RewardTaskEnv
from tests.models import fake_envs

GAMMA, LAMBDA = 0.9, 0.5
# A "steady" episode (3 steps of reward 1, V = 0, terminated) by hand, gamma * lambda = 0.45:
# A_2 = 1, A_1 = 1 + 0.45 * 1 = 1.45, A_0 = 1 + 0.45 * 1.45 = 1.6525; value_l1 is their mean.
STEADY = (1.6525 + 1.45 + 1.0) / 3


class Envs:
    """An ``env_fn`` that keeps every env it made."""

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.made = kwargs, []

    def __call__(self) -> RewardTaskEnv:
        env = RewardTaskEnv(**self.kwargs)
        self.made.append(env)
        return env

    @property
    def resets(self) -> list[tuple[int, object]]:
        return [reset for env in self.made for reset in env.resets]


def robust_plr(tasks, env_fn, evaluator=None, **kwargs) -> PrioritizedLevelReplay:
    return PrioritizedLevelReplay(tasks, evaluator or CleanRLEvaluator(LinearAgent()),
                                  robust=True, env_fn=env_fn, gamma=GAMMA, gae_lambda=LAMBDA,
                                  **kwargs)


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class TestEvaluationScoresUnplayedTasks:
    def test_on_a_thread_of_its_own(self, no_leaked_threads):
        envs = Envs()
        # replay_prob 0 under the fixed schedule: every decision says "new task", so the
        # first draw queues every task not yet queued.
        with robust_plr(["calm", "steady", "noisy"], envs, num_eval_envs=2, seed=0,
                        replay_schedule="fixed", replay_prob=0.0) as plr:
            plr.sample(1)  # no training env exists: whatever is scored, evaluation scored
            plr.flush(timeout=30)
            scores, steps = plr.task_scores(), plr.scored_steps()
        assert scores["calm"] == 0.0 and scores["steady"] == pytest.approx(STEADY)
        assert scores["noisy"] > 0.0  # |GAE| of +-1 rewards
        assert steps == {"calm": 3, "steady": 3, "noisy": 3}  # one episode each
        assert sorted(task for _, task in envs.resets) == ["calm", "noisy", "steady"]
        assert threading.get_ident() not in {thread for thread, _ in envs.resets}
        assert all(env.closed for env in envs.made) and len(envs.made) == 2

    def test_noisy_task_outranks_calm_one_as_under_plr(self, no_leaked_threads):
        tasks = ["calm", "noisy"]
        with robust_plr(tasks, Envs(), seed=1) as robust:
            robust.flush(timeout=30)
            draws = Counter(robust.sample(400))
            robust_scores, robust_p = robust.task_scores(), robust.distribution()
        # The same tasks played by training envs under PLR.
        with PrioritizedLevelReplay(tasks, CleanRLEvaluator(LinearAgent()), gamma=GAMMA,
                                    gae_lambda=LAMBDA, seed=1) as plr:
            vector = gym.vector.SyncVectorEnv(
                [lambda: CurriculumWrapper(RewardTaskEnv(), plr) for _ in range(2)])
            vector.reset(seed=0)
            for _ in range(40):
                vector.step(np.zeros(2, dtype=np.int64))
            vector.close()
            plr.flush(timeout=30)
            plr_scores, plr_p = plr.task_scores(), plr.distribution()
        for scores, p in ((robust_scores, robust_p), (plr_scores, plr_p)):
            assert scores["calm"] == 0.0 < scores["noisy"]
            # Rank transform, beta 0.1: P_S is 1 against 2^-10; staleness (rho 0.1) adds
            # up to 0.1 to the task drawn least lately.
            assert p[1] > 0.85 and p[0] < 0.15
        assert draws["noisy"] > 0.9 * 400

    def test_recurrent_evaluator_starts_each_episode_from_its_initial_state(
            self, no_leaked_threads):
        box = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        evaluator = CleanRLEvaluator(LSTMAgent(fake_envs(box, spaces.Discrete(2))),
                                     is_lstm=True)
        envs = Envs(obs_step=1.0)  # observations [0], [1], [2], [3]: the state matters
        tasks = ["steady", "noisy", "calm"]
        with robust_plr(tasks, envs, evaluator, num_eval_envs=2, replay_schedule="fixed",
                        replay_prob=0.0) as plr:
            plr.sample(1)  # queues the third task
            plr.flush(timeout=30)  # two envs side by side: rows of one recurrent batch
            scores = plr.task_scores()
        state, values = evaluator.initial_lstm_state(1), []
        for t in range(4):  # one episode alone, step by step, from the initial state
            value, extras = evaluator.get_value(np.array([[float(t)]], np.float32), state,
                                                np.array([float(t == 0)], np.float32))
            state = extras["lstm_state"]
            values.append(value.item())
        advantage, advantages = 0.0, []
        for t in reversed(range(3)):  # steady: reward 1, terminated at t = 3
            delta = 1.0 + GAMMA * (values[t + 1] if t < 2 else 0.0) - values[t]
            advantage = delta + GAMMA * LAMBDA * advantage
            advantages.append(advantage)
        assert scores["steady"] == pytest.approx(float(np.mean(np.abs(advantages))), rel=1e-5)
        assert set(scores) == set(tasks)


class TestTrainingDraws:
    def test_replay_scored_tasks_only_and_training_updates_their_scores(
            self, no_leaked_threads):
        gate = threading.Event()  # held: evaluation ends after the first two tasks
        envs = Envs(gate=gate, free_resets=1)
        tasks = list(range(12))
        plr = robust_plr(tasks, envs, num_eval_envs=2, seed=0)
        try:
            plr.sample(1)  # waits for the first score
            wait_until(lambda: len(plr.task_scores()) == 2)
            first = set(plr.task_scores())
            assert set(plr.sample(300)) <= first

            vector = gym.vector.SyncVectorEnv(
                [lambda: CurriculumWrapper(RewardTaskEnv(), plr) for _ in range(2)])
            played = Counter()
            _, info = vector.reset(seed=0)
            played.update(info["task"].tolist())
            for _ in range(30):
                _, _, _, _, info = vector.step(np.zeros(2, dtype=np.int64))
                played.update(info["task"].tolist())
            vector.close()
            assert set(played) <= first

            gate.set()
            plr.flush(timeout=30)
            # Proportionate schedule, 2 of 12 scored: most decisions said "new task", so
            # every other task was queued, and each was evaluated once.
            assert set(plr.task_scores()) == set(tasks)
            evaluated = [task for _, task in envs.resets]
            assert sorted(evaluated) == tasks
            steps = plr.scored_steps()
            assert sum(steps[task] for task in first) > 2 * 3  # evaluation's 3 + training's
            assert all(steps[task] == 3 for task in set(tasks) - first)
        finally:
            gate.set()
            plr.close()

    def test_new_task_decisions_come_in_the_reference_ratio(self, no_leaked_threads):
        # Fixed schedule, replay probability p: the decisions before each replay are
        # geometric, (1 - p) / p new tasks per training draw on average.
        gate = threading.Event()
        envs = Envs(gate=gate, free_resets=1)
        plr = robust_plr(5000, envs, num_eval_envs=1, replay_schedule="fixed",
                         replay_prob=0.5, seed=3)
        try:
            plr.sample(1)
            queued = plr._robust.pending()
            plr.sample(400)
            new = plr._robust.pending() - queued
            assert abs(new - 400) < 4 * np.sqrt(400 * 0.5 / 0.5**2)  # 4 sd
            assert not plr.distribution()[~plr._table.seen].any()
        finally:
            gate.set()
            plr.close()


class TestBadArguments:
    @pytest.mark.parametrize("kwargs, message", [
        ({"robust": True}, "env_fn: expected a callable returning one gymnasium Env"),
        ({"robust": True, "env_fn": "CartPole-v1"},
         "env_fn: expected a callable returning one gymnasium Env"),
        ({"robust": True, "env_fn": lambda: 3},
         r"env_fn: expected a callable returning one gymnasium Env \(not a VectorEnv\), got "
         "int 3"),
        ({"robust": True, "env_fn": lambda: gym.vector.SyncVectorEnv([RewardTaskEnv])},
         r"env_fn: expected a callable returning one gymnasium Env \(not a VectorEnv\)"),
        ({"env_fn": RewardTaskEnv}, "env_fn: expected None unless robust=True"),
        ({"robust": "yes", "env_fn": RewardTaskEnv}, "robust: expected True or False"),
        ({"robust": True, "env_fn": RewardTaskEnv, "num_eval_envs": 0},
         "num_eval_envs: expected an integer >= 1"),
        ({"robust": True, "env_fn": RewardTaskEnv, "first_score_timeout": 0},
         "first_score_timeout: expected a number > 0.0"),
        ({"robust": True, "env_fn": RewardTaskEnv, "set_task": 1},
         "set_task: expected a callable"),
    ])
    def test_clear_errors_and_no_thread_left(self, kwargs, message, no_leaked_threads):
        with pytest.raises(ValueError, match=message):
            PrioritizedLevelReplay(["calm"], CleanRLEvaluator(LinearAgent()), **kwargs)

    def test_a_factory_returning_one_env_twice(self, no_leaked_threads):
        env = RewardTaskEnv()
        with pytest.raises(ValueError, match="env_fn: expected a factory that builds a new "
                                             "env on each call"):
            robust_plr(["calm"], lambda: env, num_eval_envs=2)
        assert env.closed

    def test_envs_that_do_not_fit_the_agent(self, no_leaked_threads):
        envs = Envs()
        with pytest.raises(ValueError, match="envs: the env's single_observation_space"):
            robust_plr(["calm"], envs, CleanRLEvaluator(LinearAgent(obs_size=3)))
        assert envs.made and all(env.closed for env in envs.made)


class TestFailures:
    def test_a_failed_evaluation_surfaces_from_every_call(self, no_leaked_threads):
        envs = Envs()
        plr = robust_plr(["broken"], envs, num_eval_envs=1)
        calls = (lambda: plr.flush(timeout=30), plr.sample,
                 lambda: plr.observe(Experience("reset", 0, "broken", np.zeros(1, np.float32))))
        for call in calls:
            with pytest.raises(CurriculumError, match="PrioritizedLevelReplay evaluation "
                                                      "failed") as info:
                call()
            assert isinstance(info.value.__cause__, RuntimeError)
            assert "the level is broken" in str(info.value.__cause__)
        plr.observe(Experience("close", 0))  # an env closing: no raise
        plr.close()  # already reported: closes quietly
        assert all(env.closed for env in envs.made)

    def test_close_raises_it_if_unreported(self, no_leaked_threads):
        plr = robust_plr(["broken"], Envs(), num_eval_envs=1)
        wait_until(lambda: not plr._robust._thread.alive)
        with pytest.raises(CurriculumError, match="evaluation failed"):
            plr.close()
        plr.close()  # idempotent

    def test_no_score_in_time(self, no_leaked_threads):
        envs = Envs(length=10**9)  # an episode that never ends, never cut into segments
        plr = robust_plr(["calm"], envs, num_eval_envs=1, first_score_timeout=0.3,
                         num_steps=10**9)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="first_score_timeout=0.3"):
            plr.sample(1)
        assert time.monotonic() - started < 5
        with pytest.raises(TimeoutError, match="1 queued tasks still unevaluated"):
            plr.flush(timeout=0.2)
        plr.close()  # cuts the endless evaluation short
        assert envs.made[0].closed


class TestLifecycle:
    def test_close_leaves_no_thread_and_is_idempotent(self, no_leaked_threads):
        envs = Envs()
        plr = robust_plr(list(range(6)), envs, num_eval_envs=3)
        plr.sample(2)
        plr.close()
        plr.close()
        assert all(env.closed for env in envs.made)
        with pytest.raises(RuntimeError, match="closed"):
            plr.observe(Experience("reset", 0, 1, np.zeros(1, np.float32)))

    def test_plain_plr_builds_no_envs_and_no_evaluation_thread(self):
        before = set(threading.enumerate())
        with PrioritizedLevelReplay(["calm"], CleanRLEvaluator(LinearAgent())) as plr:
            started = {t.name for t in threading.enumerate() if t not in before}
            assert started == {"PrioritizedLevelReplay worker"}
            assert plr.distribution().tolist() == [1.0]  # unseen: PLR draws it, untouched
