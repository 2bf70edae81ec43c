"""A compact PPO training loop in CleanRL's style, for the demo and the benchmarks.

Usage::

    envs = gym.make_vec("CartPole-v1", num_envs=4)
    agent = MLPAgent(envs)
    trainer = PPOTrainer(envs, agent, PPOConfig(), seed=0)
    for stats in trainer.iterate(total_steps=50_000):   # one PPO update per iteration
        print(stats.global_step, stats.episode_returns)

It follows CleanRL's ``ppo.py`` (Huang et al., "The 37 implementation details of PPO"): GAE,
advantage normalisation per minibatch, clipped surrogate and value loss, entropy bonus,
gradient clipping, linear learning-rate annealing. Episode returns come from the ``episode``
info that ``gymnasium.wrappers.vector.RecordEpisodeStatistics`` adds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from syllabus_eval.query.advantages import gae


@dataclass
class PPOConfig:
    """PPO hyper-parameters (CleanRL's CartPole defaults)."""

    num_steps: int = 128  # rollout length per env between updates
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5


@dataclass
class IterationStats:
    """What one iteration (a rollout and an update) produced."""

    iteration: int
    global_step: int  # env steps so far, over all envs
    episode_returns: list[float] = field(default_factory=list)
    episode_tasks: list[object] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)


class PPOTrainer:
    """Trains a CleanRL-contract agent (``get_value``, ``get_action_and_value``) with PPO.

    Args:
        envs: a Gymnasium vector env (``NEXT_STEP`` autoreset, the default); wrapped in
            ``RecordEpisodeStatistics`` here if it is not already.
        agent: the training agent.
        config: hyper-parameters.
        seed: seeds torch and the first reset.
        on_step: called after every vector step with ``(obs, rewards, terminated, truncated,
            infos)``, e.g. to feed a curriculum.
    """

    def __init__(self, envs: gym.vector.VectorEnv, agent: nn.Module,
                 config: PPOConfig | None = None, seed: int | None = None,
                 on_step: Callable[..., None] | None = None) -> None:
        if not isinstance(envs, gym.wrappers.vector.RecordEpisodeStatistics):
            envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
        self.envs, self.agent = envs, agent
        self.config = config or PPOConfig()
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=self.config.learning_rate,
                                          eps=1e-5)
        self.on_step = on_step
        if seed is not None:
            torch.manual_seed(seed)
        obs, _ = envs.reset(seed=seed)
        self._obs = torch.as_tensor(obs, dtype=torch.float32)
        self._done = torch.zeros(envs.num_envs)
        self.global_step = 0

    def iterate(self, total_steps: int) -> Iterator[IterationStats]:
        """Collect and update until ``total_steps`` env steps; yields after every update."""
        config, envs = self.config, self.envs
        batch = config.num_steps * envs.num_envs
        iterations = max(1, total_steps // batch)
        for iteration in range(1, iterations + 1):
            if config.anneal_lr:
                fraction = 1.0 - (iteration - 1.0) / iterations
                self.optimizer.param_groups[0]["lr"] = fraction * config.learning_rate
            stats = IterationStats(iteration, self.global_step)
            rollout = self._collect(stats)
            stats.losses = self._update(*rollout)
            stats.global_step = self.global_step
            yield stats

    def _collect(self, stats: IterationStats) -> tuple[torch.Tensor, ...]:
        config, envs, agent = self.config, self.envs, self.agent
        T, B = config.num_steps, envs.num_envs
        obs = torch.zeros((T, B, *envs.single_observation_space.shape))
        actions = torch.zeros((T, B, *envs.single_action_space.shape), dtype=torch.long)
        log_probs, rewards, dones, values = (torch.zeros(T, B) for _ in range(4))
        for t in range(T):
            obs[t], dones[t] = self._obs, self._done
            with torch.no_grad():
                action, log_prob, _, value = agent.get_action_and_value(self._obs)
            actions[t], log_probs[t], values[t] = action, log_prob, value.flatten()
            next_obs, reward, terminated, truncated, infos = envs.step(action.numpy())
            self.global_step += B
            if self.on_step is not None:
                self.on_step(next_obs, reward, terminated, truncated, infos)
            rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
            self._obs = torch.as_tensor(next_obs, dtype=torch.float32)
            self._done = torch.as_tensor(np.logical_or(terminated, truncated), dtype=torch.float32)
            if "episode" in infos:
                finished = infos["_episode"]
                stats.episode_returns += [float(r) for r in infos["episode"]["r"][finished]]
                if "task" in infos:
                    stats.episode_tasks += list(np.asarray(infos["task"], dtype=object)[finished])
        with torch.no_grad():
            next_value = agent.get_value(self._obs).flatten()
        advantages = gae(rewards.numpy(), values.numpy(), next_value.numpy(), config.gamma,
                         config.gae_lambda, dones=dones.numpy(), next_done=self._done.numpy())
        return obs, actions, log_probs, values, torch.from_numpy(advantages).float()

    def _update(self, obs: torch.Tensor, actions: torch.Tensor, log_probs: torch.Tensor,
                values: torch.Tensor, advantages: torch.Tensor) -> dict[str, float]:
        config, agent = self.config, self.agent
        returns = (advantages + values).flatten()
        obs = obs.flatten(0, 1)  # [T * B, ...]
        actions, log_probs = actions.flatten(0, 1), log_probs.flatten()
        advantages, values = advantages.flatten(), values.flatten()
        size = obs.shape[0]
        minibatch = size // config.num_minibatches
        for _ in range(config.update_epochs):
            order = torch.randperm(size)
            for start in range(0, size, minibatch):
                idx = order[start:start + minibatch]
                _, new_log_prob, entropy, new_value = agent.get_action_and_value(obs[idx],
                                                                                 actions[idx])
                ratio = (new_log_prob - log_probs[idx]).exp()
                adv = advantages[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = torch.max(
                    -adv * ratio, -adv * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)
                ).mean()
                new_value = new_value.flatten()
                clipped = values[idx] + (new_value - values[idx]).clamp(-config.clip_coef,
                                                                         config.clip_coef)
                value_loss = 0.5 * torch.max((new_value - returns[idx]) ** 2,
                                             (clipped - returns[idx]) ** 2).mean()
                loss = (policy_loss - config.ent_coef * entropy.mean()
                        + config.vf_coef * value_loss)
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                self.optimizer.step()
        return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                "entropy": entropy.mean().item()}
