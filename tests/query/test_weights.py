"""Weight sync: refresh only on change, one optimizer step per query, even under concurrency;
compiled modules (``torch.compile``) as agents and weights."""

from __future__ import annotations

import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval import (
    EnvSpec,
    EpisodeSettings,
    EvalRunner,
    WeightSource,
    snapshot_state_dict,
    weight_source,
)
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.evaluation.snapshot import take_snapshot
from tests.cases import VECTOR
from tests.models import TearProbe, fake_envs

# Random, not zeros: a fresh agent's biases start at zero, so on zeros every agent answers 0.
OBS = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)


def mlp() -> MLPAgent:
    torch.manual_seed(0)
    return MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))


def train_step(agent: MLPAgent, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    agent.get_value(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()


@pytest.fixture
def copies(monkeypatch) -> list:
    """Counts the copies evaluators make from training agents."""
    calls = []
    original = WeightSource.try_copy_into

    def counting(self, targets):
        copied = original(self, targets)
        calls.append(copied)
        return copied

    monkeypatch.setattr(WeightSource, "try_copy_into", counting)
    return calls


class TestRefreshOnlyOnChange:
    def test_unchanged_weights_are_not_copied_again(self, copies) -> None:
        evaluator = CleanRLEvaluator(mlp())
        made = len(copies)
        for _ in range(50):
            evaluator.get_value(OBS)
        assert len(copies) == made

    def test_an_optimizer_step_is_picked_up_once(self, copies) -> None:
        agent = mlp()
        optimizer = torch.optim.Adam(agent.parameters(), lr=0.1)
        evaluator = CleanRLEvaluator(agent)
        before = evaluator.get_value(OBS)[0]
        train_step(agent, optimizer)
        made = len(copies)
        value, extras = evaluator.get_value(OBS)
        evaluator.get_value(OBS)
        assert len(copies) == made + 1
        with torch.no_grad():
            assert torch.equal(value, agent.get_value(torch.as_tensor(OBS)))
        assert not torch.equal(value, before)
        assert extras["weights_version"] == 1  # optimizer steps behind these weights

    def test_writes_outside_optimizers_are_detected(self) -> None:
        agent, other = mlp(), MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))
        evaluator = CleanRLEvaluator(agent)
        evaluator.get_value(OBS)
        with weight_source(agent).writing():
            agent.load_state_dict(other.state_dict())
        with torch.no_grad():
            assert torch.equal(evaluator.get_value(OBS)[0], other.get_value(torch.as_tensor(OBS)))


class TinyCritic(nn.Module):
    """A CleanRL-contract agent whose value is worked out by hand: ``w . x + b``."""

    def __init__(self, weight: list[float], bias: float) -> None:
        super().__init__()
        self.critic = nn.Linear(2, 1)
        with torch.no_grad():
            self.critic.weight.copy_(torch.tensor([weight]))
            self.critic.bias.fill_(bias)

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        return None, None, None, self.critic(x)


class TestWritesThroughData:
    """Issue #19: ``.data`` writes bump no version counter; inside ``writing()`` every evaluator
    of the agent must still see them at its next query, with weights_version advancing."""

    X = np.array([[1.0, 1.0]], np.float32)

    def evaluators(self, agent: nn.Module) -> list[CleanRLEvaluator]:
        every = [CleanRLEvaluator(agent), CleanRLEvaluator(agent),
                 CleanRLEvaluator(agent, copy_agent=False)]
        for evaluator in every:
            value, extras = evaluator.get_value(self.X)
            assert value.item() == pytest.approx(3.5)  # 1*1 + 2*1 + 0.5
            assert extras["weights_version"] == 0
        return every

    def test_a_polyak_update_through_data_is_seen(self) -> None:
        agent, online, tau = TinyCritic([1.0, 2.0], 0.5), TinyCritic([3.0, 4.0], 1.5), 0.5
        every = self.evaluators(agent)
        with weight_source(agent).writing():  # CleanRL's DQN target update, as written there
            for target_param, q_param in zip(agent.parameters(), online.parameters()):
                target_param.data.copy_(tau * q_param.data + (1.0 - tau) * target_param.data)
        for evaluator in every:
            value, extras = evaluator.get_value(self.X)
            # weight (2, 3), bias 1: 2*1 + 3*1 + 1
            assert value.item() == pytest.approx(6.0)
            assert extras["weights_version"] == 1

    def test_an_in_place_scaling_through_data_is_seen(self) -> None:
        agent = TinyCritic([1.0, 2.0], 0.5)
        every = self.evaluators(agent)
        for version, expected in ((1, 7.0), (2, 14.0)):  # (2, 4) and 1, then (4, 8) and 2
            with weight_source(agent).writing():
                for param in agent.parameters():
                    param.data.mul_(2.0)
            for evaluator in every:
                value, extras = evaluator.get_value(self.X)
                assert value.item() == pytest.approx(expected)
                assert extras["weights_version"] == version

    def test_unchanged_weights_are_still_not_copied_after_a_write(self, copies) -> None:
        agent = TinyCritic([1.0, 2.0], 0.5)
        evaluator = CleanRLEvaluator(agent)
        with weight_source(agent).writing():
            agent.critic.bias.data.fill_(1.5)
        made = len(copies)
        for _ in range(5):
            assert evaluator.get_value(self.X)[0].item() == pytest.approx(4.5)  # 1 + 2 + 1.5
        assert len(copies) == made + 1  # the write's refresh, then none


class TestExplicitWeights:
    def test_load_weights_reports_the_given_version(self) -> None:
        evaluator = CleanRLEvaluator(mlp(), auto_sync=False)
        other = MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))
        for weights in (other, other.state_dict()):
            evaluator.load_weights(weights, version=7)
            value, extras = evaluator.get_value(OBS)
            with torch.no_grad():
                assert torch.equal(value, other.get_value(torch.as_tensor(OBS)))
            assert extras["weights_version"] == 7
        evaluator.load_weights(other)
        assert evaluator.get_value(OBS)[1]["weights_version"] == 8

    def test_manual_sync_ignores_training(self) -> None:
        agent = mlp()
        evaluator = CleanRLEvaluator(agent, auto_sync=False)
        before = evaluator.get_value(OBS)[0]
        train_step(agent, torch.optim.SGD(agent.parameters(), lr=0.5))
        assert torch.equal(evaluator.get_value(OBS)[0], before)

    def test_load_weights_from_a_module_waits_for_its_step(self) -> None:
        evaluator = CleanRLEvaluator(mlp(), auto_sync=False)
        other = MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))  # other weights
        source = weight_source(other)
        source.begin_write(1)  # another thread is inside an optimizer step of `other`
        try:
            with pytest.raises(TimeoutError, match="did not finish within"):
                evaluator.sync_timeout = 0.2
                evaluator.load_weights(other)
        finally:
            source.end_write(1)
        evaluator.load_weights(other)
        with torch.no_grad():
            assert torch.equal(evaluator.get_value(OBS)[0],
                               other.get_value(torch.as_tensor(OBS)))

    @pytest.mark.parametrize("copy_agent", [True, False])
    def test_detached_reports_the_version_of_its_weights(self, copy_agent: bool) -> None:
        agent = mlp()
        live = CleanRLEvaluator(agent, copy_agent=copy_agent)
        optimizer = torch.optim.SGD(agent.parameters(), lr=0.5)
        for _ in range(3):  # steps nobody queried
            train_step(agent, optimizer)
        value, extras = live.detached().get_value(OBS)
        assert extras["weights_version"] == 3
        with torch.no_grad():
            assert torch.equal(value, agent.get_value(torch.as_tensor(OBS)))

    def test_detached_keeps_explicitly_loaded_weights(self) -> None:
        agent, other = mlp(), MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))
        manual = CleanRLEvaluator(agent, auto_sync=False)
        manual.load_weights(other, version=7)
        value, extras = manual.detached().get_value(OBS)
        assert extras["weights_version"] == 7
        with torch.no_grad():
            assert torch.equal(value, other.get_value(torch.as_tensor(OBS)))

    def test_detached_evaluator_keeps_its_weights(self) -> None:
        agent = mlp()
        live = CleanRLEvaluator(agent)
        frozen = live.detached()
        before = frozen.get_value(OBS)[0]
        train_step(agent, torch.optim.SGD(agent.parameters(), lr=0.5))
        assert torch.equal(frozen.get_value(OBS)[0], before)
        assert not torch.equal(live.get_value(OBS)[0], before)

    def test_a_detached_clone_is_built_apart_and_keeps_adapter_settings(self) -> None:
        class Scaled(CleanRLEvaluator):  # an adapter with settings of its own
            def __init__(self, agent, scale: float) -> None:
                super().__init__(agent, deterministic=True)
                self.scale = scale

            def _get_value(self, inputs):
                value, state, extras = super()._get_value(inputs)
                return value * self.scale, state, extras

        agent = mlp()
        live = Scaled(agent, scale=2.0)
        live.get_action(OBS)  # finds its greedy head in its own copy
        clone = live.detached()
        assert clone.scale == 2.0 and clone._lock is not live._lock
        with torch.no_grad():
            assert torch.equal(clone.get_value(OBS)[0],
                               2.0 * agent.get_value(torch.as_tensor(OBS)))
        greedy = clone.get_action(OBS)[0]
        for _ in range(20):  # training turns the live copy's actor elsewhere...
            optimizer = torch.optim.SGD(agent.parameters(), lr=5.0)
            optimizer.zero_grad()
            agent.actor(torch.as_tensor(OBS)).gather(1, greedy[:, None]).sum().backward()
            optimizer.step()
        assert not torch.equal(live.get_action(OBS)[0], greedy)
        # ... and the clone's greedy actions come from its own, untouched actor
        assert torch.equal(clone.get_action(OBS)[0], greedy)

    def test_snapshot_is_private(self) -> None:
        agent = mlp()
        snap = snapshot_state_dict(agent)
        train_step(agent, torch.optim.SGD(agent.parameters(), lr=0.5))
        assert not all(torch.equal(v, agent.state_dict()[k]) for k, v in snap.items())


def hammer(probe: TearProbe, query, steps: int, readers: int = 3,
           check_mode: bool = True) -> tuple[list, list]:
    """Train ``probe`` for ``steps`` SGD steps while ``readers`` threads call ``query``."""
    optimizer = torch.optim.SGD(probe.parameters(), lr=1.0, foreach=False)
    answers: list[list[float]] = [[] for _ in range(readers)]
    errors: list[BaseException] = []
    done = threading.Event()

    def read(out: list) -> None:
        try:
            while not done.is_set():
                out.append(query())
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=read, args=(a,)) for a in answers]
    for thread in threads:
        thread.start()
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            probe.loss().backward()
            # Queries on a copy never flip the training agent's mode (in-place ones do: that
            # is why copy_agent=False warns).
            assert probe.training or not check_mode
            optimizer.step()
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors
    return answers, [t.is_alive() for t in threads]


class TestConsistentWeights:
    """Every answer comes from the weights of exactly one optimizer step."""

    def test_the_probe_detects_torn_copies(self) -> None:
        # Control: copying without the protocol does tear, so the tests below can fail.
        probe, copy = TearProbe(), TearProbe()

        def naive_query() -> float:
            with torch.no_grad():
                for target, source in zip(copy.parameters(), probe.parameters()):
                    target.copy_(source)
                return float(copy.get_value(torch.zeros(1, 1))[0, 0])

        torn = 0
        deadline = time.monotonic() + 20
        while not torn and time.monotonic() < deadline:
            answers, _ = hammer(probe, naive_query, steps=100)
            torn = sum(np.isnan(a).sum() for a in answers)
        assert torn > 0

    @pytest.mark.parametrize("copy_agent", [True, False])
    def test_queries_during_optimizer_steps_never_mix_weights(self, copy_agent: bool) -> None:
        probe = TearProbe()
        evaluator = CleanRLEvaluator(probe, copy_agent=copy_agent)
        answered = []  # (value, reported version) of each query

        def query() -> float:
            value, extras = evaluator.get_value(np.zeros((1, 1), np.float32))
            answered.append((float(value[0, 0]), extras["weights_version"]))
            return float(value[0, 0])

        answers, alive = hammer(probe, query, steps=150, check_mode=copy_agent)
        assert not any(alive)
        flat = np.concatenate([np.asarray(a) for a in answers])
        assert len(flat) > 50  # the readers really ran alongside training
        assert not np.isnan(flat).any()  # no torn weights
        assert np.array_equal(flat, np.round(flat)) and flat.max() <= 150
        for thread_answers in answers:  # each reader only ever moves forward in time
            assert np.all(np.diff(thread_answers) >= 0)
        assert evaluator.get_value(np.zeros((1, 1), np.float32))[0].item() == 150.0
        # The probe's value is its number of steps: each answer names the weights that gave it.
        assert all(value == version for value, version in answered)


def with_compiled_critic() -> MLPAgent:
    """An agent with a compiled submodule: its state-dict keys read ``critic._orig_mod.0...``."""
    agent = mlp()
    agent.critic = torch.compile(agent.critic)
    return agent


@pytest.mark.usefixtures("dynamo")
class TestCompiledModules:
    """``torch.compile(module)`` wraps it: same parameters, keys prefixed ``_orig_mod.``. None
    of these tests runs compiled code (queries use a plain copy), so none compiles."""

    @pytest.mark.parametrize("copy_agent", [True, False])
    def test_a_compiled_agent_is_queried_and_synced_as_its_module(self, copy_agent) -> None:
        agent = mlp()
        compiled = torch.compile(agent)
        evaluator = CleanRLEvaluator(compiled, copy_agent=copy_agent)
        assert evaluator.training_agent is agent  # the wrapped module trains
        reference = CleanRLEvaluator(agent, copy_agent=copy_agent)
        assert torch.equal(evaluator.get_value(OBS)[0], reference.get_value(OBS)[0])
        train_step(agent, torch.optim.SGD(compiled.parameters(), lr=0.5))  # the same tensors
        value, extras = evaluator.get_value(OBS)
        with torch.no_grad():
            assert torch.equal(value, agent.get_value(torch.as_tensor(OBS)))
        assert extras["weights_version"] == 1  # the step hooks saw it
        assert set(evaluator.state_dict()) == set(agent.state_dict())

    def test_compiled_weights_and_their_state_dicts_load(self) -> None:
        evaluator = CleanRLEvaluator(mlp(), auto_sync=False)
        other = MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))
        with torch.no_grad():
            expected = other.get_value(torch.as_tensor(OBS))
        compiled = torch.compile(other)
        assert all(key.startswith("_orig_mod.") for key in compiled.state_dict())
        for weights in (compiled, compiled.state_dict()):
            evaluator.load_weights(mlp())  # back to other weights first
            evaluator.load_weights(weights)
            assert torch.equal(evaluator.get_value(OBS)[0], expected)
        snapshot = take_snapshot(evaluator, compiled, "cpu", step=3)  # what runners send
        assert set(snapshot.weights) == set(other.state_dict())
        with pytest.raises(ValueError, match=r"weights: expected the keys and shapes .*: "
                                             r"missing \['actor.0.weight'\]"):
            take_snapshot(evaluator, {k: v for k, v in compiled.state_dict().items()
                                      if k != "_orig_mod.actor.0.weight"}, "cpu")

    def test_compiled_submodules_in_the_agent_and_in_weights(self) -> None:
        agent = with_compiled_critic()
        assert "critic._orig_mod.0.weight" in agent.state_dict()
        evaluator = CleanRLEvaluator(agent)
        assert "critic.0.weight" in evaluator.agent.state_dict()  # a plain private copy
        for parameter in agent.parameters():  # a step without running the compiled critic
            parameter.grad = torch.ones_like(parameter)
        torch.optim.SGD(agent.parameters(), lr=0.1).step()
        with torch.no_grad():  # eager, as the copy answers (compiled kernels may differ a bit)
            assert torch.equal(evaluator.get_value(OBS)[0],
                               agent.critic._orig_mod(torch.as_tensor(OBS)))
        other = with_compiled_critic()
        with torch.no_grad():
            expected = other.critic._orig_mod(torch.as_tensor(OBS))
        for weights in (other, other.state_dict()):
            detached = evaluator.detached()
            detached.load_weights(take_snapshot(evaluator, weights, "cpu").weights)
            assert torch.equal(detached.get_value(OBS)[0], expected)

    def test_a_runner_evaluates_compiled_weights(self) -> None:
        agent, other = mlp(), MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))
        with EvalRunner(EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=2),
                        CleanRLEvaluator(torch.compile(agent)), num_episodes=4,
                        episodes=EpisodeSettings(seed=0)) as runner:
            for weights in (other, torch.compile(other), torch.compile(other).state_dict()):
                episodes = runner.evaluate(weights).episodes
                assert episodes == runner.evaluate(other).episodes
