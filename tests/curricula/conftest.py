"""Shared pieces of the curricula tests: a task-aware env, a transition counter, a thread check."""

from __future__ import annotations

import threading
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode


class ChainEnv(gym.Env):
    """Walk right along a chain of ``task`` cells (action 1 moves, 0 stays).

    The episode terminates at the last cell with reward 1, or is truncated after
    ``2 * task`` steps. Observation: ``[position, task]``, so a test can see the task it got.
    The task comes from ``options["task"]``, or from ``env.length`` set by a hook.
    """

    observation_space = spaces.Box(0.0, 1000.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.length: int | None = None
        self.last_options: dict | None = None
        self.position = self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.last_options = options
        if options and "task" in options:
            self.length = int(options["task"])
        if self.length is None:
            raise ValueError("ChainEnv needs a task: options['task'] or env.length")
        self.position = self.steps = 0
        return self._obs(), {}

    def step(self, action):
        self.position += int(action)
        self.steps += 1
        terminated = self.position >= self.length
        truncated = not terminated and self.steps >= 2 * self.length
        return self._obs(), float(terminated), terminated, truncated, {}

    def _obs(self) -> np.ndarray:
        return np.array([self.position, self.length], dtype=np.float32)


class TransitionCounter:
    """Counts the transitions a vector env played, per task, from its step results.

    With ``NEXT_STEP`` autoreset the step after an episode's end is a reset, not a transition;
    with ``SAME_STEP`` every step is one, and an ending episode's task is in ``final_info``.
    """

    def __init__(self, num_envs: int, mode: AutoresetMode = AutoresetMode.NEXT_STEP) -> None:
        self.counts: Counter = Counter()
        self.mode = mode
        self._after_end = np.zeros(num_envs, dtype=bool)

    def step(self, info: dict, terminated: np.ndarray, truncated: np.ndarray) -> None:
        ended = np.logical_or(terminated, truncated)
        for i in range(len(ended)):
            if self.mode == AutoresetMode.SAME_STEP:
                source = info["final_info"] if ended[i] else info
                self.counts[source["task"][i].item()] += 1
            elif not self._after_end[i]:
                self.counts[info["task"][i].item()] += 1
        self._after_end = ended

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@pytest.fixture
def chain_env() -> type[ChainEnv]:
    return ChainEnv


@pytest.fixture
def transition_counter() -> type[TransitionCounter]:
    return TransitionCounter


@pytest.fixture
def no_leaked_threads():
    """Fails the test if it leaves a thread behind."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"
