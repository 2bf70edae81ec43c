"""The embedded CartPole task environment."""

from __future__ import annotations

import gymnasium as gym
import pytest

from syllabus_eval.demo.envs import CARTPOLE_TASKS


def run_episode(env: gym.Env, action: int | None = None) -> tuple[int, dict]:
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step(
            env.action_space.sample() if action is None else action)
        steps += 1
        if terminated or truncated:
            return steps, info


class TestCartPoleTasks:
    def test_tasks_change_the_physics_until_the_next_choice(self) -> None:
        env = gym.make("syllabus_eval.demo.envs:CartPoleTasks-v0").unwrapped
        env.reset(options={"task": "short-pole"})
        assert env.length == 0.25 and env.polemass_length == pytest.approx(0.025)
        env.reset()
        assert env.task == "short-pole" and env.length == 0.25
        env.reset(options={"task": "standard"})
        assert env.length == 0.5 and env.force_mag == 10.0

    def test_harder_tasks_fall_sooner(self) -> None:
        env = gym.make("syllabus_eval.demo.envs:CartPoleTasks-v0")
        lengths = {}
        for task in ("long-pole", "short-pole"):
            env.reset(seed=0, options={"task": task})
            lengths[task], _ = run_episode(env, action=0)  # always push left
        assert lengths["short-pole"] < lengths["long-pole"]

    def test_success_is_reaching_the_time_limit(self) -> None:
        env = gym.make("syllabus_eval.demo.envs:CartPoleTasks-v0", time_limit=5)
        env.reset(seed=0, options={"task": "long-pole"})
        steps, info = run_episode(env)
        assert steps == 5 and info == {"task": "long-pole", "success": True}
        env = gym.make("syllabus_eval.demo.envs:CartPoleTasks-v0")
        env.reset(seed=0)
        steps, info = run_episode(env, action=0)  # always pushing left: the pole falls
        assert steps < 500 and info["success"] is False

    def test_unknown_task_names_the_valid_ones(self) -> None:
        env = gym.make("syllabus_eval.demo.envs:CartPoleTasks-v0")
        with pytest.raises(ValueError, match="task: expected one of .*'standard'.*got str"):
            env.reset(options={"task": "upside-down"})
        assert set(CARTPOLE_TASKS) >= {"standard", "short-pole"}
