"""Small envs with known episodes, evaluators that expose what the loop feeds them, and the
single-env ground truth the vectorized loop must reproduce."""

from __future__ import annotations

import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from syllabus_eval import Evaluator, RolloutSettings, episode_quota
from syllabus_eval.query.evaluator import AgentInputs


class LengthEnv(gym.Env):
    """Envs seeded with an odd seed have long episodes (40-60 steps), the others short ones
    (1-2 steps), the length drawn at each reset from the env's RNG: SB3 #402's case, where
    some envs end their episodes far sooner than others.

    Each step gives reward 1, the last one a bonus equal to the length, so a return is twice
    the length. The last info says ``success`` for long episodes. Observations: ``[t, task]``.
    """

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.task = 0
        self.steps_taken = 0  # over the env's life: shows whether a paused env is stepped
        self.length = self.t = 0
        self.long = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        if seed is not None:
            self.long = seed % 2 == 1
        self.length = int(self.np_random.integers(40, 61) if self.long
                          else self.np_random.integers(1, 3))
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any):
        self.steps_taken += 1
        self.t += 1
        terminated = self.t >= self.length
        reward = 1.0 + (self.length if terminated else 0.0)
        info = {"success": self.length > 10} if terminated else {}
        return self._obs(), reward, terminated, False, info

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.task], dtype=np.float32)


class FixedLengthEnv(gym.Env):
    """Every episode lasts ``length`` steps, reward 1 each: slots that differ, with known
    answers (LengthEnv's spaces, so its agents fit)."""

    observation_space = LengthEnv.observation_space
    action_space = LengthEnv.action_space

    def __init__(self, length: int) -> None:
        self.length, self.t = length, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: Any):
        self.t += 1
        return (np.array([self.t, 0], dtype=np.float32), 1.0, self.t >= self.length, False,
                {})


class AlternatingLengths:
    """An env factory that returns episodes of ``lengths[0]`` steps, then ``lengths[1]``, ...
    on successive calls: the slots of one evaluation differ."""

    def __init__(self, *lengths: int) -> None:
        self.lengths, self.calls = lengths, 0

    def __call__(self) -> FixedLengthEnv:
        self.calls += 1
        return FixedLengthEnv(self.lengths[(self.calls - 1) % len(self.lengths)])


class DrawEnv(gym.Env):
    """Each reset draws an episode id from the env's generator; episodes of 1 to 3 steps
    report it as ``info["id"]`` at their end: which episodes two evaluations share."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.id, self.t = float(self.np_random.random()), 0
        self.length = int(self.np_random.integers(1, 4))
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any):
        self.t += 1
        done = self.t >= self.length
        return np.zeros(1, dtype=np.float32), 1.0, done, False, {"id": self.id} if done else {}


class TaskEnv(gym.Env):
    """Task ``t`` (an int): episodes of ``t + 1`` steps with reward ``t`` each; success when
    ``t`` is even. The task comes from the reset option ``"task"`` or from ``set_task``."""

    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self.task = 0
        self.resets: list[tuple[int | None, dict | None]] = []  # (seed, options) per reset
        self.t = 0

    def set_task(self, task: int) -> None:
        self.task = task

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.resets.append((seed, options))
        if options and "task" in options:
            self.task = options["task"]
        self.t = 0
        return np.array([self.task], dtype=np.float32), {}

    def step(self, action: Any):
        self.t += 1
        terminated = self.t >= self.task + 1
        info = {"success": self.task % 2 == 0} if terminated else {}
        return np.array([self.task], dtype=np.float32), float(self.task), terminated, False, info


class ActionRewardEnv(gym.Env):
    """Five steps; reward 1 for action 1, 0 for action 0: returns show which weights acted."""

    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, dtype=np.float32), {}

    def step(self, action: Any):
        self.t += 1
        return np.zeros(4, dtype=np.float32), float(action), self.t >= 5, False, {}


class GatedEnv(gym.Wrapper):
    """Each step first waits for ``gate`` (so a test decides when an evaluation may end) and
    sets ``stepping``; with ``crash`` set, steps raise instead."""

    def __init__(self, env: gym.Env, gate: threading.Event, stepping: threading.Event,
                 crash: threading.Event | None = None) -> None:
        super().__init__(env)
        self.gate, self.stepping, self.crash = gate, stepping, crash

    def step(self, action: Any):
        self.stepping.set()
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        if self.crash is not None and self.crash.is_set():
            raise RuntimeError("the env exploded")
        return self.env.step(action)


class EndlessEnv(gym.Env):
    """Never ends; each step takes a millisecond and sets ``stepping``."""

    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, stepping: threading.Event) -> None:
        self.stepping = stepping

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(4, dtype=np.float32), {}

    def step(self, action: Any):
        self.stepping.set()
        time.sleep(0.001)
        return np.zeros(4, dtype=np.float32), 0.0, False, False, {}


class FramesEnv(gym.Env):
    """Channels-last uint8 frames, 36 x 36 x 1 (the smallest SB3's NatureCNN takes), drawn
    from the env's RNG; 2 actions, reward 1 for action 1; episodes of ``length`` steps."""

    observation_space = spaces.Box(0, 255, (36, 36, 1), np.uint8)
    action_space = spaces.Discrete(2)

    def __init__(self, length: int = 8) -> None:
        self.length = length

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action: Any):
        self.t += 1
        return self._frame(), float(action), False, self.t >= self.length, {}

    def _frame(self) -> np.ndarray:
        return self.np_random.integers(0, 256, (36, 36, 1), dtype=np.uint8)


class DictEnv(gym.Env):
    """A ``Dict`` space (a channels-last frame and a vector); 2-dim Box actions in [-2, 3]
    (not symmetric: unscaling shows); reward: minus the distance of the action to the vector's
    first two entries; episodes of 8 steps."""

    observation_space = spaces.Dict({
        "frame": spaces.Box(0, 255, (36, 36, 1), np.uint8),
        "vector": spaces.Box(-1.0, 1.0, (3,), np.float32)})
    action_space = spaces.Box(-2.0, 3.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.obs = self._obs()
        return self.obs, {}

    def step(self, action: Any):
        self.t += 1
        reward = -float(np.linalg.norm(np.asarray(action) - self.obs["vector"][:2]))
        self.obs = self._obs()
        return self.obs, reward, False, self.t >= 8, {}

    def _obs(self) -> dict[str, np.ndarray]:
        return {"frame": self.np_random.integers(0, 256, (36, 36, 1), dtype=np.uint8),
                "vector": self.np_random.uniform(-1, 1, 3).astype(np.float32)}


class CheetahSpacesEnv(gym.Env):
    """HalfCheetah's spaces without MuJoCo: 17-dim float64 observations, 6-dim actions in
    [-1, 1]. The observation moves by the action (padded), the reward is the first entry;
    episodes of ``length`` steps, the start state drawn from the env's RNG."""

    observation_space = spaces.Box(-np.inf, np.inf, (17,), np.float64)
    action_space = spaces.Box(-1.0, 1.0, (6,), np.float32)

    def __init__(self, length: int = 20) -> None:
        self.length = length

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.state = 0, self.np_random.normal(size=17)
        return self.state.copy(), {}

    def step(self, action: Any):
        self.t += 1
        self.state[:6] += np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return self.state.copy(), float(self.state[0]), False, self.t >= self.length, {}


class CountingEvaluator(Evaluator):
    """A recurrent stand-in whose state counts the steps of the episode; it acts the count.

    With an env that rewards ``action == t`` (:class:`CountEnv`), every episode returns its
    length only if the state is reset at each of its env's episode boundaries. It records any
    step where ``done`` disagrees with the count (``done`` must be 1 exactly at count 0).
    """

    obs_dtype = None

    def __init__(self) -> None:
        super().__init__(None, copy_agent=False, is_lstm=True)
        self.done_mismatches = 0

    def initial_lstm_state(self, batch_size: int) -> tuple[torch.Tensor]:
        return (torch.zeros(1, batch_size, 1),)  # [num_layers, B, hidden]

    def _get_action(self, inputs: AgentInputs):
        count = inputs.lstm_state[0][0, :, 0]  # [B]
        self.done_mismatches += int(((count == 0).float() != inputs.done).sum())
        return count.long(), (inputs.lstm_state[0] + 1,), {}


class CountEnv(gym.Env):
    """Reward 1 when the action equals the step's index in the episode; lengths 1 to 12."""

    observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = spaces.Discrete(64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(1, 13))
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any):
        reward = float(int(action) == self.t)
        self.t += 1
        return np.zeros(1, dtype=np.float32), reward, self.t >= self.length, False, {}


def seed_by_hand(seed: int, slot: int, episode: int) -> int:
    """The documented reset seed of episode ``episode`` of slot ``slot``, computed here."""
    words = np.random.SeedSequence(seed, spawn_key=(slot,)).generate_state(episode + 1)
    return int(words[episode])


def ground_truth(make_env: Any, settings: RolloutSettings, num_slots: int,
                 policy: Any = lambda obs: 0) -> list[tuple]:
    """``(env_index, episode_index, reward, length, terminated, truncated, success)`` of each
    episode, running each slot's episodes one env at a time, as the module docs define them:
    slot ``i`` runs its quota of episodes on an env of its own, episode ``j`` reset with word
    ``j`` of ``SeedSequence(seed, spawn_key=(i,)).generate_state`` (unseeded without a seed);
    ``max_steps`` as truncation."""
    episodes = []
    for slot in range(num_slots):
        env = make_env()
        quota = episode_quota(settings.num_episodes, num_slots, slot)
        for episode in range(quota):
            seed = None if settings.seed is None else seed_by_hand(settings.seed, slot, episode)
            obs, _ = env.reset(seed=seed)
            total, length, info = 0.0, 0, {}
            terminated = truncated = False
            while not (terminated or truncated):
                obs, reward, terminated, truncated, info = env.step(policy(obs))
                total += reward
                length += 1
                if settings.max_steps is not None and length >= settings.max_steps:
                    truncated = truncated or not terminated
            episodes.append((slot, episode, total, length, terminated, truncated,
                             info.get(settings.success_key)))
        env.close()
    return episodes


def as_tuples(records: list) -> list[tuple]:
    return [(r.env_index, r.episode_index, r.reward, r.length, r.terminated, r.truncated,
             r.success) for r in records]


class PreviousStepEnv(gym.Env):
    """Rewards the action ``(last action + last reward) % 3`` (both 0 at an episode's start)
    with ``1 + t % 2`` at step ``t``, any other action with 0: an agent that sees its true
    previous action and reward scores ``1 + 2 + 1 + ...`` over 6 steps (9) and succeeds."""

    observation_space = spaces.Box(0, 255, (2, 8, 8), np.uint8)
    action_space = spaces.Discrete(3)
    length = 6

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.last_action, self.last_reward, self.all_right = 0, 0, 0.0, True
        return self._obs(), {}

    def step(self, action: Any):
        self.t += 1
        right = int(action) == (self.last_action + int(self.last_reward)) % 3
        reward = float(1 + self.t % 2) if right else 0.0
        self.all_right &= right
        self.last_action, self.last_reward = int(action), reward
        terminated = self.t >= self.length
        info = {"success": self.all_right} if terminated else {}
        return self._obs(), reward, terminated, False, info

    def _obs(self) -> np.ndarray:
        return np.full((2, 8, 8), self.t, dtype=np.uint8)


class PaintedLengthEnv(gym.Wrapper):
    """A LengthEnv that renders ``rgb_array`` frames (16 x 24), brightness 4 * t: videos of
    known length, and returns that differ from env to env."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = "rgb_array") -> None:
        super().__init__(LengthEnv())
        self._render_mode = render_mode

    @property
    def render_mode(self) -> str | None:
        return self._render_mode

    def render(self) -> np.ndarray | None:
        if self._render_mode != "rgb_array":
            return None
        return np.full((16, 24, 3), min(255, 4 * self.env.unwrapped.t), dtype=np.uint8)


class RewardTaskEnv(gym.Env):
    """Known answers for Robust PLR: episodes of ``length`` steps whose rewards the task's kind
    sets: ``"calm"`` pays 0, ``"steady"`` 1, ``"noisy"`` +1 or -1 at random, and ``"broken"``
    raises at its first step (an int task ``t`` is of kind ``KINDS[t % 3]``). Observations
    are ``[t * obs_step]``: all 0 by default, so a linear critic's V is 0. Each reset records
    ``(thread id, task)`` in ``resets``; with a ``gate``, resets after the first
    ``free_resets`` wait for it. ``closed`` tells whether the env was closed."""

    KINDS = ("calm", "steady", "noisy")
    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, length: int = 3, obs_step: float = 0.0,
                 gate: threading.Event | None = None, free_resets: int = 0) -> None:
        self.length, self.obs_step = length, obs_step
        self.gate, self.free_resets = gate, free_resets
        self.resets: list[tuple[int, Any]] = []
        self.kind, self.t, self.closed = "calm", 0, False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if (self.gate is not None and len(self.resets) >= self.free_resets
                and not self.gate.wait(timeout=30)):
            raise TimeoutError("the test never opened the gate")
        task = options["task"]
        self.resets.append((threading.get_ident(), task))
        self.kind = self.KINDS[task % 3] if isinstance(task, int) else task
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any):
        if self.kind == "broken":
            raise RuntimeError("the level is broken")
        self.t += 1
        reward = {"calm": 0.0, "steady": 1.0}.get(self.kind)
        if reward is None:
            reward = float(self.np_random.choice([-1.0, 1.0]))
        return self._obs(), reward, self.t >= self.length, False, {}

    def close(self) -> None:
        self.closed = True

    def _obs(self) -> np.ndarray:
        return np.array([self.t * self.obs_step], dtype=np.float32)
