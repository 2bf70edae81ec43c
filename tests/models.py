"""Test models: a moolib-contract network and a model whose torn weights are detectable."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn


def fake_envs(observation_space: spaces.Space, action_space: spaces.Space) -> SimpleNamespace:
    """What CleanRL's ``Agent(envs)`` reads from a vector env: its single spaces."""
    return SimpleNamespace(single_observation_space=observation_space,
                           single_action_space=action_space)


class MoolibNet(nn.Module):
    """A small model with the contract of moolib's example ``Net``.

    ``forward(inputs, core_state)`` takes ``[T, B, ...]`` inputs (``state`` uint8 frames,
    ``reward``, ``done`` bool, ``prev_action`` int64) and returns
    ``(dict(policy_logits=[T, B, A], baseline=[T, B], action=[T, B]), core_state)``.
    """

    def __init__(self, num_actions: int = 4, channels: int = 2, size: int = 8,
                 use_lstm: bool = False, hidden: int = 16) -> None:
        super().__init__()
        self.num_actions, self.use_lstm = num_actions, use_lstm
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * size * size, hidden)
        core_size = hidden + num_actions + 1  # features, one-hot previous action, reward
        if use_lstm:
            self.core = nn.LSTM(core_size, hidden, num_layers=1)
            core_size = hidden
        self.policy = nn.Linear(core_size, num_actions)
        self.baseline = nn.Linear(core_size, 1)

    def initial_state(self, batch_size: int = 1) -> tuple:
        if not self.use_lstm:
            return ()
        shape = (self.core.num_layers, batch_size, self.core.hidden_size)
        return torch.zeros(shape), torch.zeros(shape)

    def forward(self, inputs: dict, core_state: tuple = ()):
        T, B, *_ = inputs["state"].shape
        x = torch.flatten(inputs["state"], 0, 1).float() / 255.0  # [T * B, C, H, W]
        x = F.relu(self.fc(F.relu(self.conv(x)).flatten(1)))
        prev = F.one_hot(inputs["prev_action"].view(T * B), self.num_actions).float()
        reward = torch.clamp(inputs["reward"], -1, 1).view(T * B, 1)
        core = torch.cat([x, reward, prev], dim=-1)
        if self.use_lstm:
            outputs = []
            for step, notdone in zip(core.view(T, B, -1), (~inputs["done"]).float()):
                core_state = tuple(notdone.view(1, -1, 1) * s for s in core_state)
                out, core_state = self.core(step.unsqueeze(0), core_state)
                outputs.append(out)
            core = torch.cat(outputs).flatten(0, 1)
        logits = self.policy(core)
        action = torch.multinomial(F.softmax(logits, dim=1), num_samples=1)
        return dict(policy_logits=logits.view(T, B, -1), baseline=self.baseline(core).view(T, B),
                    action=action.view(T, B)), core_state


class TearProbe(nn.Module):
    """Every element of every layer holds the same number ``c``; SGD steps add 1 to all.

    ``get_value`` returns ``c`` when all layers agree and NaN when they don't: a query that
    mixed weights from before and after a step (a torn read) is visible in its answer.
    Large layers and ``foreach=False`` steps make the window for tearing wide.
    """

    def __init__(self, layers: int = 6, size: int = 200_000) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(size)) for _ in range(layers))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.stack([w.min() for w in self.weights])
        high = torch.stack([w.max() for w in self.weights])
        consistent = bool((low == high).all() and (low == low[0]).all())
        value = low[0] if consistent else torch.tensor(float("nan"))
        return value.expand(x.shape[0], 1)

    def get_action_and_value(self, x: torch.Tensor, action=None):
        value = self.get_value(x)
        zeros = torch.zeros(x.shape[0])
        return zeros.long(), zeros, zeros, value

    def loss(self) -> torch.Tensor:
        return -sum(w.sum() for w in self.weights)  # SGD(lr=1) adds exactly 1 everywhere


class EchoNet(nn.Module):
    """A moolib-contract model that acts ``(prev_action + reward) % A``: its actions are right
    only if it is handed each env's true previous action and reward (``PreviousStepEnv``)."""

    def __init__(self, num_actions: int = 3) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.scale = nn.Parameter(torch.ones(()))  # weights to sync, of no consequence

    def initial_state(self, batch_size: int = 1) -> tuple:
        return ()

    def forward(self, inputs: dict, core_state: tuple = ()):
        T, B = inputs["prev_action"].shape
        echo = (inputs["prev_action"] + inputs["reward"].round().long()) % self.num_actions
        logits = F.one_hot(echo, self.num_actions).float() * 10 * self.scale  # [T, B, A]
        return dict(policy_logits=logits, baseline=torch.zeros(T, B), action=echo), core_state
