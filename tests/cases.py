"""Every shipped adapter with a real model, as parametrize cases for adapter-generic tests."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval import Evaluator
from syllabus_eval.adapters import (
    CleanRLEvaluator,
    DummyEvaluator,
    MoolibEvaluator,
    SB3Evaluator,
    TorchRLEvaluator,
)
from syllabus_eval.demo.agents import CNNAgent, ContinuousAgent, LSTMAgent, MLPAgent
from tests.models import MoolibNet, fake_envs

VECTOR = spaces.Box(-1.0, 1.0, (4,), np.float32)
FRAMES = spaces.Box(0, 255, (4, 84, 84), np.uint8)
SMALL_FRAMES = spaces.Box(0, 255, (2, 8, 8), np.uint8)


@dataclass
class Case:
    name: str
    make: Callable[[], Evaluator]
    observation_space: spaces.Space
    action_shape: tuple[int, ...]  # per env
    action_dtype: torch.dtype
    # (training agent, torch obs [B, ...], lstm_state, done) -> the agent's own value [B, 1]
    reference_value: Callable[[Any, torch.Tensor, Any, torch.Tensor], torch.Tensor] | None

    def obs(self, batch: int, seed: int = 0) -> np.ndarray:
        space = self.observation_space
        rng = np.random.default_rng(seed)
        if space.dtype == np.uint8:
            return rng.integers(0, 256, (batch, *space.shape), dtype=np.uint8)
        return rng.uniform(-1, 1, (batch, *space.shape)).astype(np.float32)

    def __repr__(self) -> str:
        return self.name


def _cleanrl_value(agent, obs, state, done):
    return agent.get_value(obs.float()) if state is None else agent.get_value(obs, state, done)


def _moolib_value(model, obs, state, done):
    batch = obs.shape[0]
    inputs = {"state": obs[None], "reward": torch.zeros(1, batch),
              "prev_action": torch.zeros(1, batch, dtype=torch.int64),
              "done": done.bool()[None] if done is not None else torch.zeros(1, batch).bool()}
    return model(inputs, state if state is not None else ())[0]["baseline"][0].unsqueeze(-1)


def _sb3_policy() -> SB3Evaluator:
    from stable_baselines3.common.policies import ActorCriticPolicy

    return SB3Evaluator(ActorCriticPolicy(VECTOR, DISCRETE, lambda _: 0.0, net_arch=[16]))


def _sb3_value(policy, obs, state, done):
    return policy.predict_values(obs)


def _torchrl_modules() -> TorchRLEvaluator:
    from tensordict.nn import TensorDictModule
    from torchrl.modules import ValueOperator

    return TorchRLEvaluator(
        TensorDictModule(nn.Linear(4, 2), in_keys=["observation"], out_keys=["action"]),
        value=ValueOperator(nn.Linear(4, 1), in_keys=["observation"]))


def _torchrl_value(agent, obs, state, done):
    from tensordict import TensorDict

    return agent["value"](TensorDict({"observation": obs}, batch_size=[len(obs)]))[
        "state_value"]


def _torch_seeded(make: Callable[[], Evaluator]) -> Callable[[], Evaluator]:
    def build() -> Evaluator:
        torch.manual_seed(0)
        return make()
    return build


DISCRETE = spaces.Discrete(3)
CASES = [
    Case("cleanrl-mlp", _torch_seeded(lambda: CleanRLEvaluator(
        MLPAgent(fake_envs(VECTOR, DISCRETE)))), VECTOR, (), torch.int64, _cleanrl_value),
    Case("cleanrl-continuous", _torch_seeded(lambda: CleanRLEvaluator(ContinuousAgent(
        fake_envs(VECTOR, spaces.Box(-1, 1, (2,), np.float32))))), VECTOR, (2,),
        torch.float32, _cleanrl_value),
    Case("cleanrl-cnn", _torch_seeded(lambda: CleanRLEvaluator(
        CNNAgent(fake_envs(FRAMES, DISCRETE)))), FRAMES, (), torch.int64, _cleanrl_value),
    Case("cleanrl-lstm", _torch_seeded(lambda: CleanRLEvaluator(
        LSTMAgent(fake_envs(VECTOR, DISCRETE)), is_lstm=True)), VECTOR, (), torch.int64,
        _cleanrl_value),
    Case("moolib", _torch_seeded(lambda: MoolibEvaluator(MoolibNet())), SMALL_FRAMES, (),
         torch.int64, _moolib_value),
    Case("moolib-lstm", _torch_seeded(lambda: MoolibEvaluator(MoolibNet(use_lstm=True))),
         SMALL_FRAMES, (), torch.int64, _moolib_value),
    Case("dummy-discrete", lambda: DummyEvaluator(DISCRETE, seed=0), VECTOR, (), torch.int64,
         None),
    Case("dummy-multidiscrete", lambda: DummyEvaluator(spaces.MultiDiscrete([2, 5]), seed=0),
         VECTOR, (2,), torch.int64, None),
    Case("dummy-box", lambda: DummyEvaluator(spaces.Box(-2, 2, (3,), np.float32), seed=0),
         VECTOR, (3,), torch.float32, None),
    Case("dummy-lstm", lambda: DummyEvaluator(DISCRETE, seed=0, is_lstm=True), VECTOR, (),
         torch.int64, None),
]
# The optional extras' adapters, where their libraries are installed (make test installs them).
if importlib.util.find_spec("stable_baselines3"):
    CASES.append(Case("sb3-ppo", _torch_seeded(_sb3_policy), VECTOR, (), torch.int64,
                      _sb3_value))
if importlib.util.find_spec("torchrl"):
    CASES.append(Case("torchrl", _torch_seeded(_torchrl_modules), VECTOR, (2,), torch.float32,
                      _torchrl_value))
RECURRENT = [c for c in CASES if c.name in ("cleanrl-lstm", "moolib-lstm")]
WITH_AGENT = [c for c in CASES if c.reference_value is not None]
