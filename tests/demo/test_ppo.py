"""The PPO loop used by the demo and the benchmarks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.demo.ppo import PPOConfig, PPOTrainer
from syllabus_eval.query.advantages import gae


class TestGAE:
    def test_matches_a_hand_computation(self) -> None:
        # One env, T = 3, gamma = 0.5, lambda = 0.5; the episode ends after step 1
        # (dones[2] = 1: the observation at t = 2 starts a new episode).
        # The trainer's rollout buffers are float32 tensors.
        rewards = torch.tensor([[1.0], [2.0], [3.0]])
        values = torch.tensor([[0.5], [1.0], [2.0]])
        dones = torch.tensor([[0.0], [0.0], [1.0]])
        next_value, next_done = torch.tensor([4.0]), torch.tensor([0.0])
        d2 = 3.0 + 0.5 * 4.0 - 2.0  # 3.0, bootstraps from next_value
        d1 = 2.0 - 1.0  # 1.0, no bootstrap across the episode boundary
        d0 = 1.0 + 0.5 * 1.0 - 0.5  # 1.0
        expected = [[d0 + 0.25 * d1], [d1], [d2]]
        np.testing.assert_allclose(gae(rewards, values, next_value, 0.5, 0.5, dones=dones,
                                       next_done=next_done), expected)


class TestTrainer:
    def test_iterations_step_the_optimizer_and_count_env_steps(self) -> None:
        envs = gym.make_vec("CartPole-v1", num_envs=2)
        agent = MLPAgent(envs)
        before = [p.detach().clone() for p in agent.parameters()]
        steps = []
        trainer = PPOTrainer(envs, agent, PPOConfig(num_steps=16), seed=0,
                             on_step=lambda *args: steps.append(args[1].shape))
        stats = list(trainer.iterate(total_steps=64))
        assert [s.global_step for s in stats] == [32, 64]
        assert len(steps) == 32 and steps[0] == (2,)
        assert all(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))
        assert all(set(s.losses) == {"policy_loss", "value_loss", "entropy"} for s in stats)

    @pytest.mark.parametrize("seed", [0])
    def test_learns_cartpole(self, seed: int) -> None:
        torch.set_num_threads(1)
        envs = gym.make_vec("CartPole-v1", num_envs=4)
        trainer = PPOTrainer(envs, MLPAgent(envs), PPOConfig(), seed=seed)
        returns = [r for s in trainer.iterate(total_steps=30_000) for r in s.episode_returns]
        early, late = returns[:20], returns[-10:]
        assert sum(late) / len(late) > 2 * sum(early) / len(early)
