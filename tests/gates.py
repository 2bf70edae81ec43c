"""Runners whose evaluations the test holds and releases, on an agent whose weights show; a
local Ray for the tests that need one."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

from syllabus_eval import EnvSpec, EvalRunner
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.demo.agents import MLPAgent
from tests.fake_envs import ActionRewardEnv, GatedEnv

SPACES = SimpleNamespace(single_observation_space=ActionRewardEnv.observation_space,
                         single_action_space=ActionRewardEnv.action_space)


def set_action(agent: MLPAgent, action: int) -> None:
    """Make the agent's greedy action ``action`` whatever it sees (5 steps: return 5 * it)."""
    with torch.no_grad():
        agent.actor[-1].bias.copy_(torch.tensor([10.0, 0.0] if action == 0 else [0.0, 10.0]))


class Gate:
    """Envs whose steps wait until the test opens the gate (and crash on request)."""

    def __init__(self) -> None:
        self.open, self.stepping, self.crash = (threading.Event() for _ in range(3))

    def make_env(self) -> gym.Env:
        return GatedEnv(ActionRewardEnv(), self.open, self.stepping, self.crash)

    def runner(self, agent: MLPAgent, num_envs: int = 2, **kwargs) -> EvalRunner:
        kwargs = {"num_episodes": 4, **kwargs}
        return EvalRunner(EnvSpec(self.make_env, num_envs=num_envs), CleanRLEvaluator(agent),
                          **kwargs)


@pytest.fixture
def gate() -> Gate:
    gate = Gate()
    yield gate
    gate.open.set()  # never leave an evaluation waiting


def start_ray(ray) -> None:
    """A local Ray for the tests: two CPUs, no dashboard, a namespace of their own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             namespace="syllabus-eval-tests")


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray, started for the module and shut down after it."""
    ray = pytest.importorskip("ray")
    start_ray(ray)
    yield ray
    ray.shutdown()


@pytest.fixture
def agent() -> MLPAgent:
    """Acts 1 (return 5 over an ActionRewardEnv episode) until set_action says otherwise."""
    agent = MLPAgent(SPACES)
    set_action(agent, 1)
    return agent
