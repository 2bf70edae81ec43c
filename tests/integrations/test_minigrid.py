"""MiniGrid levels as tasks: a level is one grid at every reset, held-out levels are other
grids, success is reaching the goal, and the runner evaluates a suite of levels per level."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("minigrid", reason="needs the minigrid extra: pip install "
                    "'syllabus-eval[minigrid]' (make test installs it)")

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner  # noqa: E402
from syllabus_eval.adapters import CleanRLEvaluator  # noqa: E402
from syllabus_eval.curricula import CurriculumWrapper, DomainRandomization  # noqa: E402
from syllabus_eval.errors import ArgumentError  # noqa: E402
from syllabus_eval.integrations.minigrid import (  # noqa: E402
    HELD_OUT_SEED,
    Level,
    MiniGridAgent,
    MiniGridLevels,
    held_out_levels,
    training_levels,
)

DOORKEY_5 = "MiniGrid-DoorKey-5x5-v0"
DOORKEY_8 = "MiniGrid-DoorKey-8x8-v0"
EMPTY_5 = "MiniGrid-Empty-5x5-v0"  # fixed grid: agent at (1, 1) facing right, goal at (3, 3)
LEFT, RIGHT, FORWARD = 0, 1, 2


def reference_layout(env_id: str, seed: int) -> tuple[bytes, tuple[int, int], int]:
    """MiniGrid's own grid, start cell and direction for a seed: the answer a level must give."""
    env = gym.make(env_id)
    env.reset(seed=seed)
    base = env.unwrapped
    layout = (base.grid.encode().tobytes(), tuple(int(x) for x in base.agent_pos),
              int(base.agent_dir))
    env.close()
    return layout


def layout_of(env: MiniGridLevels) -> tuple[bytes, tuple[int, int], int]:
    base = env.minigrid
    return base.grid.encode().tobytes(), tuple(int(x) for x in base.agent_pos), int(base.agent_dir)


class TestLevels:
    def test_a_level_is_the_same_grid_at_every_reset_whatever_the_reset_seed(self) -> None:
        env = MiniGridLevels([Level(DOORKEY_8, 3)])
        expected = reference_layout(DOORKEY_8, 3)
        first, _ = env.reset(seed=11, options={"task": (DOORKEY_8, 3)})
        for reset_seed in (None, 0, 12345):
            env.reset(options={"task": (DOORKEY_8, 4)})  # another level in between
            for _ in range(5):
                env.step(FORWARD)
            obs, info = env.reset(seed=reset_seed, options={"task": Level(DOORKEY_8, 3)})
            assert layout_of(env) == expected
            np.testing.assert_array_equal(obs, first)
            assert info["task"] == (DOORKEY_8, 3)

    def test_different_seeds_are_different_grids(self) -> None:
        env = MiniGridLevels([Level(DOORKEY_8, 0)])
        layouts = set()
        for seed in range(5):
            env.reset(options={"task": (DOORKEY_8, seed)})
            assert layout_of(env) == reference_layout(DOORKEY_8, seed)
            layouts.add(layout_of(env))
        assert len(layouts) == 5

    def test_held_out_levels_share_no_seed_and_no_grid_with_training(self) -> None:
        # DoorKey-5x5 has few layouts (about 48): 40 training seeds repeat many of them.
        train = training_levels(40, [DOORKEY_5, DOORKEY_8])
        test = held_out_levels(train, num_seeds=6)
        assert len(train) == 80 and len(test) == 12
        assert {level.env_id for level in test} == {DOORKEY_5, DOORKEY_8}
        assert not {level.seed for level in train} & {level.seed for level in test}
        assert all(level.seed >= HELD_OUT_SEED for level in test)
        train_layouts = {(lv.env_id, reference_layout(*lv)) for lv in train}
        test_layouts = [(lv.env_id, reference_layout(*lv)) for lv in test]
        assert not set(test_layouts) & train_layouts
        assert len(set(test_layouts)) == len(test)  # and no two held-out levels alike

    def test_without_a_task_a_reset_draws_one_of_its_levels(self) -> None:
        levels = [Level(DOORKEY_5, 0), Level(DOORKEY_8, 1)]
        env = MiniGridLevels(levels)
        drawn = {env.reset(seed=seed)[1]["task"] for seed in range(20)}
        assert drawn == set(levels)

    def test_observations_are_the_7x7x3_view_or_it_flattened(self) -> None:
        image_env, flat_env = MiniGridLevels(observation="image"), MiniGridLevels(
            observation="flat")
        image, _ = image_env.reset(options={"task": (DOORKEY_5, 0)})
        flat, _ = flat_env.reset(options={"task": (DOORKEY_5, 0)})
        assert image.shape == (7, 7, 3) and image.dtype == np.uint8
        assert image_env.observation_space.contains(image)
        assert flat.shape == (147,) and flat.dtype == np.float32
        np.testing.assert_array_equal(flat, image.reshape(-1))

    def test_levels_are_named_env_id_colon_seed_in_metric_keys(self) -> None:
        assert str(Level(DOORKEY_5, 7)) == "MiniGrid-DoorKey-5x5-v0:7"
        assert Level(DOORKEY_5, 7) == (DOORKEY_5, 7)


class TestSuccess:
    def test_reaching_the_goal_is_a_success_with_minigrids_reward(self) -> None:
        env = MiniGridLevels([Level(EMPTY_5, 0)])
        env.reset(options={"task": (EMPTY_5, 0)})
        path = [FORWARD, FORWARD, RIGHT, FORWARD, FORWARD]  # (1,1) -> (3,1) -> (3,3)
        for action in path[:-1]:
            _, reward, terminated, truncated, info = env.step(action)
            assert not (terminated or truncated) and "success" not in info
        _, reward, terminated, truncated, info = env.step(path[-1])
        assert terminated and not truncated and info["success"] is True
        assert reward == pytest.approx(1 - 0.9 * 5 / 100)  # max_steps = 4 * 5 * 5

    def test_running_out_of_time_is_a_failure(self) -> None:
        env = MiniGridLevels([Level(EMPTY_5, 0)])
        env.reset(options={"task": (EMPTY_5, 0)})
        for step in range(1, 101):
            _, reward, terminated, truncated, info = env.step(LEFT)
            if step < 100:
                assert not truncated
        assert truncated and not terminated and reward == 0 and info["success"] is False


def spinning_agent() -> MiniGridAgent:
    """An agent whose every action is 'turn left': it never reaches a goal."""
    agent = MiniGridAgent()
    with torch.no_grad():
        agent.actor[-1].weight.zero_()
        agent.actor[-1].bias.copy_(torch.tensor([5.0, 0, 0, 0, 0, 0, 0]))
    return agent


class TestRunner:
    def test_the_runner_evaluates_each_held_out_level_its_share_of_episodes(self) -> None:
        test = held_out_levels(training_levels(5, [DOORKEY_5]), num_seeds=3)
        with EvalRunner(EnvSpec(MiniGridLevels, num_envs=3), CleanRLEvaluator(spinning_agent()),
                        num_episodes=6, episodes=EpisodeSettings(max_steps=None, seed=0),
                        suites={"test": test}) as runner:
            result = runner.evaluate()
        assert result["eval/test/num_episodes"] == 6
        for level in test:
            key = f"eval/test/task/{level}/"
            assert result[key + "num_episodes"] == 2
            assert result[key + "success"] == 0.0
            assert result[key + "episode_length"] == 250  # DoorKey-5x5's 10 * 5 * 5 steps
        assert result["eval/test/reward"] == 0.0

    def test_a_cleanrl_agent_trains_on_levels_from_a_curriculum(self) -> None:
        train = training_levels(3, [DOORKEY_5])
        curriculum = DomainRandomization(train, seed=0)
        envs = gym.vector.SyncVectorEnv(
            [lambda: CurriculumWrapper(MiniGridLevels(train), curriculum) for _ in range(2)])
        agent = MiniGridAgent()
        obs, infos = envs.reset(seed=0)
        action, log_prob, entropy, value = agent.get_action_and_value(torch.Tensor(obs))
        assert action.shape == log_prob.shape == entropy.shape == (2,)
        assert value.shape == (2, 1) and agent.get_value(torch.Tensor(obs)).shape == (2, 1)
        assert set(infos["task"]) <= set(train)
        envs.step(action.numpy())
        envs.close()


class TestBadInput:
    @pytest.mark.parametrize("task", ["MiniGrid-DoorKey-5x5-v0", (DOORKEY_5,), (DOORKEY_5, -1),
                                      ("MiniGrid-Nowhere-v0", 0), (DOORKEY_5, 1.5),
                                      ("CartPole-v1", 0)])
    def test_a_bad_task_names_the_task(self, task) -> None:
        env = MiniGridLevels([Level(DOORKEY_5, 0)])
        with pytest.raises(ArgumentError, match="task") as caught:
            env.reset(options={"task": task})
        assert caught.value.argument == "task"

    @pytest.mark.parametrize(("call", "argument"), [
        (lambda: MiniGridLevels([]), "levels"),
        (lambda: MiniGridLevels(("MiniGrid-DoorKey-5x5-v0", 0)), "levels"),
        (lambda: MiniGridLevels([("MiniGrid-DoorKey-5x5-v0", "0")]), "levels"),
        (lambda: MiniGridLevels(observation="rgb"), "observation"),
        (lambda: training_levels(0), "num_seeds"),
        (lambda: training_levels(2, ["MiniGrid-Nowhere-v0"]), "env_ids"),
        (lambda: training_levels(2, "MiniGrid-DoorKey-5x5-v0"), "env_ids"),
        (lambda: held_out_levels([], 2), "train"),
        (lambda: held_out_levels((DOORKEY_5, 0), 2), "train"),
        (lambda: held_out_levels([("CartPole-v1", 0)], 2), "env_ids"),
        # LavaGapS5 has 3 layouts, all among 20 training seeds: no held-out level is left
        (lambda: held_out_levels(training_levels(20, ["MiniGrid-LavaGapS5-v0"]), 1),
         "num_seeds"),
        (lambda: MiniGridAgent().get_value(torch.zeros(2, 147)), "x"),
    ])
    def test_bad_arguments_are_named(self, call, argument) -> None:
        with pytest.raises(ArgumentError) as caught:
            call()
        assert caught.value.argument == argument

    def test_without_minigrid_the_import_names_the_extra(self) -> None:
        script = ("import sys\nsys.modules['minigrid'] = None\n"
                  "try:\n    import syllabus_eval.integrations.minigrid\n"
                  "except ImportError as error:\n"
                  "    assert \"pip install 'syllabus-eval[minigrid]'\" in str(error), error\n"
                  "    print('ok')\n")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
