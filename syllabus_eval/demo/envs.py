"""Embedded environments: CartPole variants as tasks, needing nothing beyond Gymnasium.

Usage::

    env = gym.make("syllabus_eval.demo.envs:CartPoleTasks-v0")  # registers on import
    obs, info = env.reset(options={"task": "short-pole"})
    ...
    info["task"], info["success"]   # success: the episode ran to its time limit (500 steps)

Tasks change CartPole's physics (pole length and mass, cart mass, push force), which changes
how hard balancing is; the task stays until a reset names another one. The demo trains on
:data:`CARTPOLE_TASKS` and reports :data:`HELD_OUT_TASKS` as a held-out ``test`` suite.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from syllabus_eval.errors import bad_argument

#: task name -> CartPole attributes it sets: the tasks the demo trains on ...
CARTPOLE_TASKS: dict[str, dict[str, float]] = {
    "standard": {},
    "long-pole": {"length": 1.0},
    "short-pole": {"length": 0.25},
    "heavy-pole": {"masspole": 0.5},
    "weak-push": {"force_mag": 5.0},
}
#: ... and held-out variants it never trains on, its ``test`` suite
HELD_OUT_TASKS: dict[str, dict[str, float]] = {
    "longer-pole": {"length": 0.75},
    "heavy-cart": {"masscart": 2.0},
    "strong-push": {"force_mag": 15.0},
}
_ALL_TASKS = {**CARTPOLE_TASKS, **HELD_OUT_TASKS}


class CartPoleTasks(CartPoleEnv):
    """CartPole whose physics is chosen per episode by ``reset(options={"task": name})``.

    Args:
        task: the task of the first episode.
        time_limit: steps after which an episode is truncated and counts as a success (the
            env owns its limit, so that it knows which episodes succeeded).

    ``info`` carries ``task`` at every step and ``success`` on the last step of an episode.
    """

    def __init__(self, task: str = "standard", time_limit: int = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.time_limit = time_limit
        self._elapsed = 0
        self._defaults = {k: getattr(self, k)
                          for k in ("length", "masspole", "masscart", "force_mag")}
        self.task = task
        self._apply(task)

    def _apply(self, task: str) -> None:
        if task not in _ALL_TASKS:
            raise bad_argument("task", f"one of {sorted(_ALL_TASKS)}", task)
        for name, value in {**self._defaults, **_ALL_TASKS[task]}.items():
            setattr(self, name, value)
        # CartPole derives these at construction; keep them consistent with the task.
        self.total_mass = self.masspole + self.masscart
        self.polemass_length = self.masspole * self.length
        self.task = task

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if options and "task" in options:
            self._apply(options["task"])
        obs, info = super().reset(seed=seed, options=options)
        self._elapsed = 0
        info["task"] = self.task
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = super().step(action)
        self._elapsed += 1
        truncated = truncated or (self._elapsed >= self.time_limit and not terminated)
        info["task"] = self.task
        if terminated or truncated:
            info["success"] = not terminated
        return obs, reward, terminated, truncated, info


if "CartPoleTasks-v0" not in gym.registry:
    gym.register("CartPoleTasks-v0", entry_point=CartPoleTasks)
