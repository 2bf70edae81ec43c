"""MiniGrid levels as tasks: a training set of levels, held-out levels, and a CleanRL-style agent.

Usage::

    import gymnasium as gym
    from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner
    from syllabus_eval.adapters import CleanRLEvaluator
    from syllabus_eval.curricula import CurriculumWrapper, DomainRandomization
    from syllabus_eval.integrations.minigrid import (MiniGridAgent, MiniGridLevels,
                                                     held_out_levels, training_levels)

    train = training_levels(num_seeds=50)        # Level("MiniGrid-DoorKey-5x5-v0", 0), ...
    test = held_out_levels(train, num_seeds=10)  # other seeds, and grids no training level has
    curriculum = DomainRandomization(train, seed=0)
    envs = gym.vector.SyncVectorEnv(
        [lambda: CurriculumWrapper(MiniGridLevels(train), curriculum) for _ in range(8)])
    agent = MiniGridAgent()                      # a small CNN over the 7x7x3 egocentric view
    runner = EvalRunner(EnvSpec(MiniGridLevels, num_envs=8), CleanRLEvaluator(agent),
                        num_episodes=30, episodes=EpisodeSettings(max_steps=None),
                        suites={"train": train[::10], "test": test})
    runner.evaluate(weights=agent)["eval/test/success"]

A level is a :class:`Level`, ``(registered env id, seed)``: MiniGrid generates an env's grid,
the agent's start and its direction from the seed of ``reset``, so a level is the same episode
start at every reset. :class:`MiniGridLevels` plays the level named by the reset option
``"task"`` (what :class:`~syllabus_eval.curricula.CurriculumWrapper` and the runner's
``tasks=``/``suites=`` pass) and ignores the reset's own ``seed`` for the grid: that seed is
the runner's per-episode seed, and a level must not change with it. ``info`` carries the level
as ``task`` at every step and ``success`` (the goal reached: a positive reward at termination;
MiniGrid pays ``1 - 0.9 * steps / max_steps`` there and 0 elsewhere) at the last step of each
episode, which is what the runner counts as ``eval/.../success``. ``str(level)`` is
``"<env id>:<seed>"``, the name metric keys use (``eval/test/task/MiniGrid-DoorKey-5x5-v0:7/...``).

Few seeds give few grids on small envs (DoorKey-5x5 has about 48 layouts), so distinct seeds
are not enough for a held-out set: :func:`held_out_levels` takes seeds above
:data:`HELD_OUT_SEED` and skips those whose grid, start and direction equal a training level's.

MiniGrid is an optional dependency: ``pip install 'syllabus-eval[minigrid]'``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, NamedTuple, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from syllabus_eval.errors import bad_argument, check_count

try:
    import minigrid  # noqa: F401  (registers the MiniGrid-* env ids)
    from minigrid.minigrid_env import MiniGridEnv
except ImportError as error:  # pragma: no cover - the extra is installed by `make test`
    raise ImportError("syllabus_eval.integrations.minigrid needs MiniGrid: "
                      "pip install 'syllabus-eval[minigrid]'") from error

#: DoorKey at three sizes: pick up the key, open the door, reach the goal.
DOORKEY = ("MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-6x6-v0", "MiniGrid-DoorKey-8x8-v0")
#: the first seed of held-out levels; training seeds stay below it
HELD_OUT_SEED = 1_000_000
VIEW_SHAPE = (7, 7, 3)  # MiniGrid's default egocentric view: [H, W, (object, colour, state)]
NUM_ACTIONS = 7  # MiniGrid's Actions: left, right, forward, pickup, drop, toggle, done
_SEARCH = 100  # held_out_levels tries at most this many seeds per level it needs


class Level(NamedTuple):
    """One MiniGrid level: a registered env id and the seed that generates its grid.

    A tuple: ``Level("MiniGrid-DoorKey-5x5-v0", 3) == ("MiniGrid-DoorKey-5x5-v0", 3)``.
    ``str(level)`` (``"MiniGrid-DoorKey-5x5-v0:3"``) names it in metric keys.
    """

    env_id: str
    seed: int

    def __str__(self) -> str:
        return f"{self.env_id}:{self.seed}"


def as_level(task: Any, name: str = "task") -> Level:
    """``task`` as a :class:`Level`; a clear error naming ``name`` if it is none."""
    if isinstance(task, Level):
        level = task
    elif (isinstance(task, tuple) and len(task) == 2 and isinstance(task[0], str)
          and isinstance(task[1], (int, np.integer)) and not isinstance(task[1], bool)):
        level = Level(task[0], int(task[1]))
    else:
        raise bad_argument(name, "a level: (registered MiniGrid env id, seed), e.g. "
                           "('MiniGrid-DoorKey-5x5-v0', 0)", task)
    if level.seed < 0:
        raise bad_argument(name, "a level whose seed is a non-negative int", task)
    if level.env_id not in gym.registry:
        raise bad_argument(name, "a level whose env id is registered (MiniGrid-..., see "
                           "gymnasium.registry)", task)
    return level


def training_levels(num_seeds: int = 50, env_ids: Sequence[str] = DOORKEY) -> list[Level]:
    """The training set: seeds ``0 .. num_seeds - 1`` of each env id, env by env."""
    check_count("num_seeds", num_seeds)
    if num_seeds > HELD_OUT_SEED:
        raise bad_argument("num_seeds", f"at most {HELD_OUT_SEED} (held-out seeds start there)",
                           num_seeds)
    ids = _env_ids(env_ids)
    return [as_level((env_id, seed), "env_ids") for env_id in ids for seed in range(num_seeds)]


def held_out_levels(train: Iterable[Any], num_seeds: int = 10,
                    env_ids: Sequence[str] | None = None) -> list[Level]:
    """``num_seeds`` levels per env id that no training level equals, seed or grid.

    Seeds start at :data:`HELD_OUT_SEED`; a seed whose grid, agent start and direction equal
    those of a training level of the same env is skipped (small envs repeat their layouts).

    Args:
        train: the training levels.
        num_seeds: held-out levels per env id.
        env_ids: the env ids (default: those of ``train``, in order).
    """
    check_count("num_seeds", num_seeds)
    if isinstance(train, (str, tuple)) or not isinstance(train, Iterable):
        raise bad_argument("train", "a sequence of training levels (env id, seed)", train)
    train = [as_level(level, "train") for level in train]
    if not train:
        raise bad_argument("train", "at least one training level", train)
    ids = _env_ids(env_ids if env_ids is not None
                   else list(dict.fromkeys(level.env_id for level in train)))
    held_out: list[Level] = []
    for env_id in ids:
        env = gym.make(env_id)
        try:
            if not isinstance(env.unwrapped, MiniGridEnv):
                raise bad_argument("env_ids", "MiniGrid env ids (MiniGrid-...)", env_id)
            seen = {_layout(env, level.seed) for level in train if level.env_id == env_id}
            found = []
            for seed in range(HELD_OUT_SEED, HELD_OUT_SEED + _SEARCH * num_seeds):
                layout = _layout(env, seed)
                if layout not in seen:
                    seen.add(layout)  # held-out levels differ from each other too
                    found.append(Level(env_id, seed))
                    if len(found) == num_seeds:
                        break
        finally:
            env.close()
        if len(found) < num_seeds:
            raise bad_argument("num_seeds", f"at most {len(found)} for {env_id}: its other "
                               "grids are all training levels", num_seeds)
        held_out += found
    return held_out


def _env_ids(env_ids: Any) -> tuple[str, ...]:
    if isinstance(env_ids, str) or not isinstance(env_ids, Iterable):
        raise bad_argument("env_ids", "a sequence of registered MiniGrid env ids", env_ids)
    ids = tuple(env_ids)
    if not ids:
        raise bad_argument("env_ids", "at least one env id", env_ids)
    for env_id in ids:
        if not isinstance(env_id, str) or env_id not in gym.registry:
            raise bad_argument("env_ids", "registered MiniGrid env ids (MiniGrid-...)", env_id)
    return ids


def _layout(env: gym.Env, seed: int) -> Hashable:
    """What a level looks like at its start: the grid, the agent's cell and direction."""
    env.reset(seed=seed)
    base = env.unwrapped
    return base.grid.encode().tobytes(), tuple(int(x) for x in base.agent_pos), int(base.agent_dir)


class MiniGridLevels(gym.Env):
    """Plays MiniGrid levels: each reset starts the level of its ``"task"`` option.

    Args:
        levels: the levels a reset without a ``"task"`` option draws from, uniformly, with
            the env's own generator (seeded by the reset's ``seed``); a task given at reset
            may be any level. Default: :func:`training_levels`.
        observation: ``"image"``: MiniGrid's egocentric view, uint8 ``[7, 7, 3]`` (object,
            colour, state ids; what :class:`MiniGridAgent` takes); ``"flat"``: the same view
            flattened to float32 ``[147]``, for MLP agents.
        render_mode: MiniGrid's (``"rgb_array"`` for the runner's videos).

    One MiniGrid env per env id is made on first use and kept; every env id must keep
    MiniGrid's default 7x7 view and its 7 actions, so that the spaces are shared.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, levels: Sequence[Any] | None = None, *, observation: str = "image",
                 render_mode: str | None = None) -> None:
        if observation not in ("image", "flat"):
            raise bad_argument("observation", "'image' or 'flat'", observation)
        if levels is None:
            levels = training_levels()
        if isinstance(levels, (str, tuple)) or not isinstance(levels, Iterable):
            raise bad_argument("levels", "a sequence of levels (env id, seed)", levels)
        self.levels = [as_level(level, "levels") for level in levels]
        if not self.levels:
            raise bad_argument("levels", "at least one level", levels)
        self.observation = observation
        self.render_mode = render_mode
        if observation == "image":
            self.observation_space = gym.spaces.Box(0, 255, VIEW_SHAPE, np.uint8)
        else:
            self.observation_space = gym.spaces.Box(0.0, 255.0, (math.prod(VIEW_SHAPE),),
                                                    np.float32)
        self.action_space = gym.spaces.Discrete(NUM_ACTIONS)
        self._envs: dict[str, gym.Env] = {}
        self.level: Level | None = None

    def _env(self, env_id: str) -> gym.Env:
        env = self._envs.get(env_id)
        if env is None:
            env = gym.make(env_id, render_mode=self.render_mode)
            base = env.unwrapped
            if not isinstance(base, MiniGridEnv):
                env.close()
                raise bad_argument("task", "a level of a MiniGrid env", env_id)
            if (base.observation_space["image"].shape != VIEW_SHAPE
                    or base.action_space.n != NUM_ACTIONS):
                env.close()
                raise bad_argument("task", f"a MiniGrid env with a {VIEW_SHAPE} view and "
                                   f"{NUM_ACTIONS} actions", env_id)
            self._envs[env_id] = env
        return env

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)  # seeds the draw of a level when no task is given
        options = dict(options or {})
        if "task" in options:
            level = as_level(options.pop("task"))
        else:
            level = self.levels[int(self.np_random.integers(len(self.levels)))]
        # The level's seed makes the grid; the reset's seed (the runner's per-episode seed)
        # must not, or a level would differ from one evaluation to the next.
        obs, info = self._env(level.env_id).reset(seed=level.seed, options=options or None)
        self.level = level
        return self._observe(obs), {**info, "task": level}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self.level is None:
            raise gym.error.ResetNeeded("MiniGridLevels: call reset before step")
        obs, reward, terminated, truncated, info = self._envs[self.level.env_id].step(action)
        info = {**info, "task": self.level}
        if terminated or truncated:
            # MiniGrid rewards only reaching the goal; lava and time-outs end with 0.
            info["success"] = bool(terminated and reward > 0)
        return self._observe(obs), reward, terminated, truncated, info

    def _observe(self, obs: dict[str, Any]) -> np.ndarray:
        image = obs["image"]  # [7, 7, 3] uint8
        if self.observation == "image":
            return image
        return image.reshape(-1).astype(np.float32)

    @property
    def minigrid(self) -> MiniGridEnv | None:
        """The MiniGrid env of the current level (its ``grid``, ``agent_pos``, ...); ``None``
        before the first reset."""
        return None if self.level is None else self._envs[self.level.env_id].unwrapped

    def render(self) -> Any:
        if self.level is None:
            return None
        return self._envs[self.level.env_id].render()

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        super().close()


def _init(layer: nn.Module, std: float = math.sqrt(2)) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)  # the PPO initialisation, as CleanRL's layer_init
    nn.init.constant_(layer.bias, 0.0)
    return layer


class MiniGridAgent(nn.Module):
    """A small CNN actor-critic over MiniGrid's 7x7x3 view, with CleanRL ``ppo.py``'s methods.

    Args:
        hidden: the width of the actor's and critic's hidden layer.
        num_actions: the number of discrete actions (MiniGrid's 7).

    Takes the ``"image"`` observations of :class:`MiniGridLevels` (``[B, 7, 7, 3]``, any
    dtype: CleanRL's loop passes ``torch.Tensor(obs)``, float32). The trunk is three 2x2
    convolutions with a max-pool, 7x7 down to one 64-channel cell (the network of the
    ``rl-starter-files`` MiniGrid agents).
    """

    def __init__(self, hidden: int = 64, num_actions: int = NUM_ACTIONS) -> None:
        super().__init__()
        check_count("hidden", hidden)
        check_count("num_actions", num_actions)
        # `network`, as in CleanRL's ppo_atari.py: greedy evaluation reads the actor on its output
        self.network = nn.Sequential(  # [B, 3, 7, 7] -> [B, 64]
            _init(nn.Conv2d(3, 16, 2)), nn.ReLU(), nn.MaxPool2d(2),   # -> [B, 16, 3, 3]
            _init(nn.Conv2d(16, 32, 2)), nn.ReLU(),                   # -> [B, 32, 2, 2]
            _init(nn.Conv2d(32, 64, 2)), nn.ReLU(), nn.Flatten())     # -> [B, 64]
        self.actor = nn.Sequential(_init(nn.Linear(64, hidden)), nn.Tanh(),
                                   _init(nn.Linear(hidden, num_actions), std=0.01))
        self.critic = nn.Sequential(_init(nn.Linear(64, hidden)), nn.Tanh(),
                                    _init(nn.Linear(hidden, 1), std=1.0))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != VIEW_SHAPE:
            raise bad_argument("x", f"MiniGrid views [B, {', '.join(map(str, VIEW_SHAPE))}]",
                               tuple(x.shape))
        return self.network(x.float().permute(0, 3, 1, 2))  # [B, 7, 7, 3] -> [B, 3, 7, 7]

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        """The critic's value ``[B, 1]``."""
        return self.critic(self._features(x))

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(action [B], log_prob [B], entropy [B], value [B, 1])``, a sampled action if none
        is given (CleanRL ``ppo.py``)."""
        features = self._features(x)
        probs = Categorical(logits=self.actor(features))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(features)
