"""Factories for process and Ray workers (module level, so workers import them by name), and a
test env that tests in this process steer through files while it runs in a worker."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from syllabus_eval.adapters import CleanRLEvaluator, MoolibEvaluator
from syllabus_eval.demo.agents import MLPAgent
from tests.fake_envs import ActionRewardEnv, LengthEnv, TaskEnv
from tests.models import EchoNet, fake_envs

INIT_VARIABLE = "SYLLABUS_EVAL_TEST_INIT"


def cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def cartpole_agent(seed: int) -> MLPAgent:
    env = cartpole()
    torch.manual_seed(seed)
    return MLPAgent(fake_envs(env.observation_space, env.action_space))


def cartpole_evaluator(seed: int = 12345) -> CleanRLEvaluator:
    """By default a worker's evaluator: seeded apart from the tests' agents, so that only the
    weights sent with each evaluation can make a worker act like them."""
    return CleanRLEvaluator(cartpole_agent(seed))


def length_agent() -> MLPAgent:
    return MLPAgent(fake_envs(LengthEnv.observation_space, LengthEnv.action_space))


def length_evaluator() -> CleanRLEvaluator:
    return CleanRLEvaluator(length_agent())


class RemoteControlledEnv(gym.Wrapper):
    """A :class:`LengthEnv` (or ``env``) whose steps obey files in ``folder``, so that a test
    can steer it in another process. Each step first writes ``stepping-<pid>``; then, while
    ``hold`` exists, it waits (60 s at most); with ``crash`` it raises ``RuntimeError``.
    Without these files it is a plain :class:`LengthEnv` (or ``env``)."""

    def __init__(self, folder: str, env: gym.Env | None = None) -> None:
        super().__init__(LengthEnv() if env is None else env)
        self.folder = Path(folder)

    def step(self, action: Any):
        (self.folder / f"stepping-{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while (self.folder / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        if (self.folder / "crash").exists():
            raise RuntimeError(f"the env exploded at step {self.env.t + 1}")
        return self.env.step(action)


def remote_controlled_env(folder: str) -> RemoteControlledEnv:
    return RemoteControlledEnv(folder)


def remote_controlled_action_env(folder: str) -> RemoteControlledEnv:
    """An :class:`ActionRewardEnv` (return 5 for action 1, 0 for action 0: the weights show)
    steered like :func:`remote_controlled_env`."""
    return RemoteControlledEnv(folder, ActionRewardEnv())


def mark_init(folder: str) -> None:
    """An ``init_fn``: leaves ``init-<pid>`` in ``folder`` and sets :data:`INIT_VARIABLE`."""
    (Path(folder) / f"init-{os.getpid()}").touch()
    os.environ[INIT_VARIABLE] = folder


def evaluator_after_init() -> CleanRLEvaluator:
    """An ``evaluator_fn`` that refuses to build unless :func:`mark_init` ran first here."""
    if INIT_VARIABLE not in os.environ:
        raise RuntimeError(f"init_fn has not run in process {os.getpid()}")
    return length_evaluator()


def hang_when_started_again(folder: str) -> None:
    """An ``init_fn`` whose second start never ends (a simulator that cannot come back)."""
    marker = Path(folder) / "started-once"
    if marker.exists():
        time.sleep(3600)
    marker.touch()


def cartpole_vector_env() -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=4)


def normalized_cartpole() -> gym.Env:
    """CartPole behind NormalizeObservation, as CleanRL's continuous make_env builds envs."""
    return gym.wrappers.NormalizeObservation(gym.make("CartPole-v1"))


def cleanrl_continuous_cartpole() -> gym.Env:
    """CartPole wrapped in the order of CleanRL's ``ppo_continuous_action.py`` make_env: the
    episode recorder inside, ``NormalizeReward`` (which has an ``update_running_mean`` of its
    own) outside ``NormalizeObservation``."""
    env = gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))
    env = gym.wrappers.NormalizeObservation(env)
    env = gym.wrappers.TransformObservation(env, lambda obs: np.clip(obs, -10, 10),
                                            env.observation_space)
    return gym.wrappers.NormalizeReward(env)


def trained_envs(steps: int = 60, vector: type = gym.vector.SyncVectorEnv
                 ) -> gym.vector.VectorEnv:
    """Training envs whose sub-envs' statistics have moved apart (different seeds)."""
    envs = vector([normalized_cartpole] * 2)
    envs.reset(seed=[0, 100])
    rng = np.random.default_rng(0)
    for _ in range(steps):
        envs.step(rng.integers(0, 2, 2))
    return envs


def echo_evaluator() -> MoolibEvaluator:
    """A moolib evaluator whose actions show whether it got its previous action and reward."""
    return MoolibEvaluator(EchoNet())


def task_evaluator() -> CleanRLEvaluator:
    """An evaluator for TaskEnv, whose returns depend on the task only."""
    return CleanRLEvaluator(MLPAgent(fake_envs(TaskEnv.observation_space, TaskEnv.action_space)))


def rendered_cartpole() -> gym.Env:
    return gym.make("CartPole-v1", render_mode="rgb_array")


class SlowCartPole(gym.Wrapper):
    """CartPole that sleeps 20 ms a step: an evaluation long enough to be interrupted."""

    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))

    def step(self, action: Any):
        time.sleep(0.02)
        return self.env.step(action)
