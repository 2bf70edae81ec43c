"""Factories and envs for the hosted-curriculum tests, at module level so that worker processes
and Ray actors import them by name."""

from __future__ import annotations

from collections import Counter
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.curricula import CurriculumWrapper, Experience, PrioritizedLevelReplay
from tests.curricula.plr.test_plr import LinearAgent  # V(s) = w * s[0], w = 1 at first
from tests.models import TearProbe

GAMMA, LAMBDA = 0.9, 0.5
# V(s_0..s_3) = s[0] = 1, 2, 0.5, 3 and r = 1, 0, 2 (tests/curricula/plr/test_plr.py), by hand:
# terminated: delta = (1.8, -1.55, 1.5) -> A = (1.40625, -0.875, 1.5): value_l1 = 1.2604...
# with V doubled (2, 4, 1, 6): delta = (2.6, -3.1, 1) -> A = (1.4075, -2.65, 1): 1.6858...
OBSERVATIONS, REWARDS = [[1.0], [2.0], [0.5], [3.0]], [1.0, 0.0, 2.0]
SCORE = (1.40625 + 0.875 + 1.5) / 3
SCORE_DOUBLED = (1.4075 + 2.65 + 1.0) / 3




def double_the_critic(agent: LinearAgent) -> None:
    """One real optimizer step that makes w = 2 (SGD, lr 1, on -w)."""
    optimizer = torch.optim.SGD(agent.parameters(), lr=1.0)
    optimizer.zero_grad()
    (-agent.critic.weight.sum()).backward()
    optimizer.step()


def episode(env_id, task, observations=OBSERVATIONS, rewards=REWARDS) -> list[Experience]:
    """The records of one terminated episode: a reset, then one step per reward."""
    records = [Experience("reset", env_id, task, np.array(observations[0], np.float32))]
    for t, reward in enumerate(rewards):
        records.append(Experience("step", env_id, obs=np.array(observations[t + 1], np.float32),
                                  reward=reward, terminated=t == len(rewards) - 1))
    return records


def linear_plr(tasks=("a", "b"), **kwargs: Any) -> PrioritizedLevelReplay:
    """PLR scoring with V(s) = s[0] until weights are pushed (built where it is hosted)."""
    return PrioritizedLevelReplay(list(tasks), CleanRLEvaluator(LinearAgent()), gamma=GAMMA,
                                  gae_lambda=LAMBDA, **kwargs)


def probe_plr(size: int = 1000) -> PrioritizedLevelReplay:
    """PLR whose values are the TearProbe's: c, the optimizer steps pushed (NaN if torn)."""
    return PrioritizedLevelReplay(["a"], CleanRLEvaluator(TearProbe(size=size)), gamma=GAMMA,
                                  gae_lambda=LAMBDA)


class CoinEnv(gym.Env):
    """Episodes of 6 steps from a zero observation (V = 0 for the linear agent). The
    ``"calm"`` task pays 0 every step (its value_l1 score is exactly 0), ``"noisy"`` pays
    +1 or -1 at random (its advantages are the rewards' GAE: a score above 0)."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)
    LENGTH = 6

    def __init__(self) -> None:
        self.task, self.t = "calm", 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task, self.t = options["task"], 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        reward = 0.0 if self.task == "calm" else float(self.np_random.choice([-1.0, 1.0]))
        return np.zeros(1, np.float32), reward, self.t >= self.LENGTH, False, {}


class EnvRunner:
    """What an env actor does: envs wrapped around a hosted curriculum's client, random
    actions, the transitions it played counted per task."""

    def __init__(self, client: Any, num_envs: int = 2, seed: int = 0) -> None:
        self.envs = [CurriculumWrapper(CoinEnv(), client) for _ in range(num_envs)]
        self.client = client
        self.played: Counter = Counter()
        self.rng = np.random.default_rng(seed)
        self.done = [True] * num_envs
        for i, env in enumerate(self.envs):
            env.action_space.seed(seed + i)
            env.reset(seed=seed * 100 + i)
            self.done[i] = False

    def play(self, steps: int) -> dict:
        """``steps`` steps of each env (resetting ended episodes); the counts so far."""
        for _ in range(steps):
            for i, env in enumerate(self.envs):
                if self.done[i]:
                    env.reset()
                _, _, terminated, truncated, _ = env.step(int(self.rng.integers(2)))
                self.played[env.task] += 1
                self.done[i] = terminated or truncated
        return dict(self.played)

    def play_until_error(self, steps: int) -> tuple[str, str] | None:
        """Play until a reset or step raises: the error's type and message (None if none)."""
        try:
            self.play(steps)
        except Exception as error:
            return type(error).__name__, str(error)
        return None

    def close(self) -> dict:
        """Close the envs (their close records ship the rest) and flush the client."""
        for env in self.envs:
            env.close()
        self.client.flush(60)
        return dict(self.played)


def dummy_plr(tasks=(2, 3, 5), **kwargs: Any) -> PrioritizedLevelReplay:
    """PLR with zero values (the DummyEvaluator): scores count transitions, whatever they are."""
    from syllabus_eval.adapters import DummyEvaluator

    return PrioritizedLevelReplay(list(tasks), DummyEvaluator(spaces.Discrete(2)), seed=0,
                                  **kwargs)


def mlp_plr(seed: int = 0, **kwargs: Any) -> PrioritizedLevelReplay:
    """PLR on CleanRL's MLP agent for CartPole-shaped observations (weights pushed later)."""
    from syllabus_eval.demo.agents import MLPAgent
    from tests.models import fake_envs

    agent = MLPAgent(fake_envs(spaces.Box(-5.0, 5.0, (4,), np.float32), spaces.Discrete(2)))
    return PrioritizedLevelReplay([0, 1, 2], CleanRLEvaluator(agent), seed=seed, **kwargs)


def domain_randomization() -> Any:
    from syllabus_eval.curricula import DomainRandomization

    return DomainRandomization([2, 3, 5], seed=0)


def not_a_curriculum() -> list:
    return [1, 2]


def heap_report() -> Any:
    """Domain randomization that tells how many objects its process froze out of the
    collector's sight (``frozen_objects``)."""
    import gc

    from syllabus_eval.curricula import DomainRandomization

    class HeapReport(DomainRandomization):
        def frozen_objects(self) -> int:
            return gc.get_freeze_count()

    return HeapReport([2, 3, 5], seed=0)
