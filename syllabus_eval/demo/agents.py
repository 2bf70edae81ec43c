"""Reference agents built like CleanRL's PPO agents, for the demo, tests and benchmarks.

Usage::

    envs = gym.make_vec("CartPole-v1", num_envs=8)
    agent = MLPAgent(envs)                        # ppo.py
    action, log_prob, entropy, value = agent.get_action_and_value(torch.Tensor(obs))

``MLPAgent`` (``ppo.py``), ``ContinuousAgent`` (``ppo_continuous_action.py``), ``CNNAgent``
(``ppo_atari.py``) and ``LSTMAgent`` (``ppo_atari_lstm.py``; an MLP trunk on vector
observations, a CNN trunk on images) keep CleanRL's method signatures, which is what
:class:`~syllabus_eval.adapters.CleanRLEvaluator` relies on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal


def layer_init(layer: nn.Module, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    """Orthogonal weights and constant bias, the PPO initialisation."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def _mlp(inputs: int, outputs: int, hidden: int, std: float) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(inputs, hidden)), nn.Tanh(),
                         layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                         layer_init(nn.Linear(hidden, outputs), std=std))


def _atari_trunk(channels: int) -> nn.Sequential:
    return nn.Sequential(  # [B, C, 84, 84] -> [B, 512]
        layer_init(nn.Conv2d(channels, 32, 8, stride=4)), nn.ReLU(),
        layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
        layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
        nn.Flatten(), layer_init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU())


class MLPAgent(nn.Module):
    """Discrete actions, separate actor and critic MLPs (CleanRL ``ppo.py``)."""

    def __init__(self, envs: Any, hidden: int = 64) -> None:
        super().__init__()
        obs_size = int(np.prod(envs.single_observation_space.shape))
        self.critic = _mlp(obs_size, 1, hidden, std=1.0)
        self.actor = _mlp(obs_size, int(envs.single_action_space.n), hidden, std=0.01)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        probs = Categorical(logits=self.actor(x))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


class ContinuousAgent(nn.Module):
    """Gaussian actions with a state-independent log-std (CleanRL ``ppo_continuous_action.py``)."""

    def __init__(self, envs: Any, hidden: int = 64) -> None:
        super().__init__()
        obs_size = int(np.prod(envs.single_observation_space.shape))
        act_size = int(np.prod(envs.single_action_space.shape))
        self.critic = _mlp(obs_size, 1, hidden, std=1.0)
        self.actor_mean = _mlp(obs_size, act_size, hidden, std=0.01)
        self.actor_logstd = nn.Parameter(torch.zeros(1, act_size))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        mean = self.actor_mean(x)
        probs = Normal(mean, self.actor_logstd.expand_as(mean).exp())
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


class CNNAgent(nn.Module):
    """Shared convolutional trunk on uint8 frames [B, C, 84, 84] (CleanRL ``ppo_atari.py``)."""

    def __init__(self, envs: Any) -> None:
        super().__init__()
        self.network = _atari_trunk(envs.single_observation_space.shape[0])
        self.actor = layer_init(nn.Linear(512, int(envs.single_action_space.n)), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1.0)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(self.network(x / 255.0))

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        hidden = self.network(x / 255.0)
        probs = Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


class LSTMAgent(nn.Module):
    """A trunk, then an LSTM whose state is zeroed where ``done`` (CleanRL ``ppo_atari_lstm.py``).

    ``lstm_state = (h, c)``, each [num_layers, B, hidden]; ``done`` float [B] (or [T * B]).
    """

    def __init__(self, envs: Any, hidden: int = 128, trunk_size: int = 64) -> None:
        super().__init__()
        shape = envs.single_observation_space.shape
        self.images = len(shape) == 3
        if self.images:
            self.network, features = _atari_trunk(shape[0]), 512
        else:
            self.network = nn.Sequential(layer_init(nn.Linear(int(np.prod(shape)), trunk_size)),
                                         nn.Tanh())
            features = trunk_size
        self.lstm = nn.LSTM(features, hidden)
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            else:
                nn.init.orthogonal_(param, 1.0)
        self.actor = layer_init(nn.Linear(hidden, int(envs.single_action_space.n)), std=0.01)
        self.critic = layer_init(nn.Linear(hidden, 1), std=1.0)

    def get_states(self, x: torch.Tensor, lstm_state: tuple, done: torch.Tensor):
        hidden = self.network(x / 255.0 if self.images else x)
        batch_size = lstm_state[0].shape[1]
        hidden = hidden.reshape((-1, batch_size, self.lstm.input_size))  # [T, B, F]
        done = done.reshape((-1, batch_size))  # [T, B]
        outputs = []
        for h, d in zip(hidden, done):
            keep = (1.0 - d).view(1, -1, 1)  # reset the state of envs whose episode ended
            h, lstm_state = self.lstm(h.unsqueeze(0),
                                      (keep * lstm_state[0], keep * lstm_state[1]))
            outputs.append(h)
        return torch.flatten(torch.cat(outputs), 0, 1), lstm_state  # [T * B, hidden]

    def get_value(self, x: torch.Tensor, lstm_state: tuple, done: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.get_states(x, lstm_state, done)
        return self.critic(hidden)

    def get_action_and_value(self, x: torch.Tensor, lstm_state: tuple, done: torch.Tensor,
                             action: torch.Tensor | None = None):
        hidden, lstm_state = self.get_states(x, lstm_state, done)
        probs = Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return (action, probs.log_prob(action), probs.entropy(), self.critic(hidden),
                lstm_state)
