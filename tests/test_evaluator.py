"""The Evaluator template and every adapter: shapes, exact values, recurrent state, modes."""

from __future__ import annotations

import re
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval import Evaluator
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from syllabus_eval.demo.agents import MLPAgent
from tests.cases import CASES, RECURRENT, VECTOR, WITH_AGENT, Case
from tests.models import fake_envs

B = 5


def query_args(case: Case, evaluator: Evaluator, batch: int = B) -> dict:
    if not evaluator.is_lstm:
        return {}
    return {"lstm_state": evaluator.initial_lstm_state(batch), "done": torch.zeros(batch)}


def in_thread(fn):
    """Run ``fn`` in a fresh thread and return its result (re-raising its exception)."""
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as error:  # noqa: BLE001 - re-raised below
            box["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.parametrize("case", CASES, ids=repr)
class TestShapesAndDtypes:
    def test_get_action(self, case: Case) -> None:
        evaluator = case.make()
        action, extras = evaluator.get_action(case.obs(B), **query_args(case, evaluator))
        assert action.shape == (B, *case.action_shape)
        assert action.dtype == case.action_dtype
        assert action.device == evaluator.device
        assert {"lstm_state", "weights_version"} <= extras.keys()

    def test_get_value(self, case: Case) -> None:
        evaluator = case.make()
        value, extras = evaluator.get_value(case.obs(B), **query_args(case, evaluator))
        assert value.shape == (B, 1)
        assert value.dtype == torch.float32
        assert not value.requires_grad

    def test_action_comes_before_value(self, case: Case) -> None:
        evaluator = case.make()
        action, value, extras = evaluator.get_action_and_value(
            case.obs(B), **query_args(case, evaluator))
        assert action.shape == (B, *case.action_shape) and action.dtype == case.action_dtype
        assert value.shape == (B, 1) and value.dtype == torch.float32

    def test_greedy_actions_repeat(self, case: Case) -> None:
        evaluator = case.make()
        obs = case.obs(B)
        first, _ = evaluator.get_action(obs, deterministic=True, **query_args(case, evaluator))
        second, _ = evaluator.get_action(obs, deterministic=True, **query_args(case, evaluator))
        assert torch.equal(first, second)


@pytest.mark.parametrize("case", WITH_AGENT, ids=repr)
class TestAgentOutputs:
    def test_value_is_the_agents_own(self, case: Case) -> None:
        evaluator = case.make()
        obs = case.obs(B)
        args = query_args(case, evaluator)
        value, _ = evaluator.get_value(obs, **args)
        with torch.no_grad():
            expected = case.reference_value(evaluator.training_agent, torch.as_tensor(obs),
                                            args.get("lstm_state"), args.get("done"))
        assert torch.equal(value, expected)  # bit-exact on CPU

    def test_one_pass_value_matches_get_value(self, case: Case) -> None:
        evaluator = case.make()
        obs, args = case.obs(B), query_args(case, evaluator)
        _, value, extras = evaluator.get_action_and_value(obs, **args)
        alone, alone_extras = evaluator.get_value(obs, **args)
        assert torch.equal(value, alone)
        if evaluator.is_lstm:
            for a, b in zip(extras["lstm_state"], alone_extras["lstm_state"]):
                assert torch.equal(a, b)


class TestAdapterExtras:
    def test_cleanrl_sampled_actions_carry_log_prob_and_entropy(self) -> None:
        case = CASES[0]
        action, extras = case.make().get_action(case.obs(B))
        assert extras["log_prob"].shape == (B,) and extras["entropy"].shape == (B,)

    def test_cleanrl_greedy_is_argmax_of_actor(self) -> None:
        agent = MLPAgent(fake_envs(VECTOR, spaces.Discrete(3)))
        obs = CASES[0].obs(B)
        action, _ = CleanRLEvaluator(agent, deterministic=True).get_action(obs)
        with torch.no_grad():
            assert torch.equal(action, agent.actor(torch.as_tensor(obs)).argmax(-1))

    def test_moolib_logits_and_greedy_action(self) -> None:
        case = next(c for c in CASES if c.name == "moolib")
        evaluator = case.make()
        action, extras = evaluator.get_action(case.obs(B), deterministic=True)
        assert extras["policy_logits"].shape == (B, 4)
        assert torch.equal(action, extras["policy_logits"].argmax(-1))

    def test_dummy_actions_are_valid(self) -> None:
        for space in (spaces.Discrete(3, start=2), spaces.MultiDiscrete([2, 5]),
                      spaces.Box(-2, 2, (3,), np.float32), spaces.MultiBinary(4)):
            evaluator = DummyEvaluator(space, seed=1)
            for deterministic in (False, True):
                actions, _ = evaluator.get_action(np.zeros((7, 4)), deterministic=deterministic)
                assert all(space.contains(a.numpy().astype(space.dtype)) for a in actions)

    def test_dummy_passes_any_recurrent_state_through(self) -> None:
        state = (torch.ones(2, 3),)
        _, extras = DummyEvaluator(spaces.Discrete(2)).get_value(np.zeros((3, 4)), state)
        assert extras["lstm_state"] is state


@pytest.mark.parametrize("case", RECURRENT, ids=repr)
class TestRecurrentState:
    def test_state_advances(self, case: Case) -> None:
        evaluator = case.make()
        initial = evaluator.initial_lstm_state(B)
        _, extras = evaluator.get_value(case.obs(B), initial, torch.zeros(B))
        nxt = extras["lstm_state"]
        assert [t.shape for t in nxt] == [t.shape for t in initial]
        assert not all(torch.equal(a, b) for a, b in zip(nxt, initial))

    def test_done_resets_each_env_alone(self, case: Case) -> None:
        evaluator = case.make()
        obs = case.obs(B)
        _, extras = evaluator.get_value(case.obs(B, seed=1), evaluator.initial_lstm_state(B))
        advanced = extras["lstm_state"]
        done = torch.tensor([1.0] + [0.0] * (B - 1))
        value, _ = evaluator.get_value(obs, advanced, done)
        fresh, _ = evaluator.get_value(obs, evaluator.initial_lstm_state(B))
        carried, _ = evaluator.get_value(obs, advanced)
        assert torch.equal(value[0], fresh[0])  # env 0 started over
        assert torch.equal(value[1:], carried[1:])  # the others carried their state
        assert not torch.equal(fresh[1:], carried[1:])


class Recording(CleanRLEvaluator):
    """Records the order in which the template calls its steps."""

    def __init__(self, *args, **kwargs) -> None:
        self.calls: list[str] = []
        super().__init__(*args, **kwargs)

    def _refresh(self) -> bool:
        self.calls.append("sync")
        return super()._refresh()

    def _prepare_state(self, state):
        self.calls.append("prepare_state")
        return super()._prepare_state(state)

    def _prepare_lstm(self, lstm_state, done, batch_size):
        self.calls.append("prepare_lstm")
        return super()._prepare_lstm(lstm_state, done, batch_size)

    def _set_eval_mode(self):
        self.calls.append(f"eval_mode(grad={torch.is_grad_enabled()})")
        return super()._set_eval_mode()

    def _get_value(self, inputs):
        self.calls.append(f"hook(grad={torch.is_grad_enabled()})")
        return super()._get_value(inputs)

    def _set_train_mode(self, previous):
        self.calls.append("restore_mode")
        super()._set_train_mode(previous)


class TestTemplate:
    def test_steps_run_in_the_documented_order(self) -> None:
        agent = MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))
        evaluator = Recording(agent)
        evaluator.calls.clear()
        with torch.no_grad():
            next(agent.parameters()).add_(1.0)  # changed weights: the query syncs first
        with torch.enable_grad():
            evaluator.get_value(np.zeros((2, 4), np.float32))
        assert evaluator.calls == ["sync", "prepare_state", "prepare_lstm",
                                   "eval_mode(grad=False)", "hook(grad=False)", "restore_mode"]

    def test_mode_is_restored_when_the_hook_raises(self) -> None:
        class Failing(Recording):
            def _get_value(self, inputs):
                raise RuntimeError("boom")

        evaluator = Failing(MLPAgent(fake_envs(VECTOR, spaces.Discrete(2))))
        with pytest.raises(RuntimeError, match="boom"):
            evaluator.get_value(np.zeros((2, 4), np.float32))
        assert evaluator.calls[-1] == "restore_mode"

    @pytest.mark.parametrize("name", ["get_action", "get_value", "get_action_and_value"])
    def test_overriding_a_public_template_fails_at_class_creation(self, name: str) -> None:
        with pytest.raises(TypeError, match=f"overrides {name}.*override the hooks _{name}"):
            type("Bad", (Evaluator,), {name: lambda self, state: None})

    def test_overriding_through_a_mixin_fails_too(self) -> None:
        class Mixin:
            def get_value(self, state, lstm_state=None, done=None):
                return "bypassed", {}

        with pytest.raises(TypeError, match="overrides get_value"):
            type("Bad", (Mixin, CleanRLEvaluator), {})

    @pytest.mark.parametrize("copy_agent", [True, False])
    def test_grad_mode_is_set_per_query_in_any_thread(self, copy_agent: bool) -> None:
        agent = MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))
        evaluator = Recording(agent, copy_agent=copy_agent)
        obs = CASES[0].obs(B)

        def query():
            with torch.enable_grad():  # the caller's mode must not leak into the query
                answer = evaluator.get_value(obs)
                assert torch.is_grad_enabled()  # ... nor the query's into the caller
                with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
                    evaluator.get_value(np.zeros((B, 5), np.float32))  # fails in the agent
                assert torch.is_grad_enabled()
                return answer

        for value, _ in (query(), in_thread(query)):
            # In place, the agent's parameters require grad: a graph would show here.
            assert not value.requires_grad
        assert evaluator.calls.count("hook(grad=False)") == 4
        assert "hook(grad=True)" not in evaluator.calls


class NormAgent(nn.Module):
    """A CleanRL-contract agent with mode-dependent layers (batch norm, dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5),
                                    nn.Linear(8, 1))

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        zeros = torch.zeros(x.shape[0])
        return zeros.long(), zeros, zeros, self.critic(x)


def snapshot(agent: nn.Module) -> dict:
    return {"modes": [m.training for m in agent.modules()],
            "tensors": {k: v.clone() for k, v in agent.state_dict().items()},
            "versions": [t._version for t in agent.state_dict().values()],
            "grads": [None if p.grad is None else p.grad.clone() for p in agent.parameters()],
            "requires_grad": [p.requires_grad for p in agent.parameters()]}


def assert_same(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"]
    assert before["versions"] == after["versions"]
    assert before["requires_grad"] == after["requires_grad"]
    for key, tensor in before["tensors"].items():
        assert torch.equal(tensor, after["tensors"][key]), key
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)


class TestTrainingAgentUntouched:
    def make_agent(self) -> NormAgent:
        agent = NormAgent()
        agent.get_value(torch.randn(8, 4)).sum().backward()  # grads present, as in training
        return agent

    def test_copied_agent_keeps_mode_weights_buffers_and_grads(self) -> None:
        agent = self.make_agent()
        before = snapshot(agent)
        evaluator = CleanRLEvaluator(agent)
        obs = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
        evaluator.get_value(obs)
        in_thread(lambda: evaluator.get_action_and_value(obs))
        assert_same(before, snapshot(agent))
        # Eval mode in the copy: dropout off, batch norm on running stats: repeatable answers.
        assert torch.equal(evaluator.get_value(obs)[0], evaluator.get_value(obs)[0])

    @pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
    def test_in_place_queries_restore_the_previous_mode(self, mode: str) -> None:
        agent = self.make_agent()
        agent.train(mode != "eval")
        if mode == "mixed":
            agent.critic[2].eval()
        before = snapshot(agent)
        evaluator = CleanRLEvaluator(agent, copy_agent=False)
        evaluator.get_value(np.zeros((3, 4), np.float32))
        assert_same(before, snapshot(agent))  # batch-norm statistics not updated either

    def test_in_place_queries_from_a_thread_warn_once_with_the_reason(self) -> None:
        evaluator = CleanRLEvaluator(self.make_agent(), copy_agent=False)
        obs = np.zeros((3, 4), np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                in_thread(lambda: evaluator.get_value(obs))
        messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
        assert len(messages) == 1 and "dropout or batch norm" in messages[0]

    def test_no_warning_without_mode_dependent_layers(self) -> None:
        evaluator = CleanRLEvaluator(MLPAgent(fake_envs(VECTOR, spaces.Discrete(2))),
                                     copy_agent=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            in_thread(lambda: evaluator.get_value(np.zeros((3, 4), np.float32)))


def readme_snippet(title: str) -> str:
    """The first Python example after the README's heading ``### title``."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split(f"### {title}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


class TestCustomAdapter:
    def test_the_readme_adapter_runs(self) -> None:
        namespace: dict = {}
        exec(readme_snippet("Writing an adapter"), namespace)  # the README's example, verbatim
        policy = namespace["policy"]
        evaluator = namespace["evaluator"]
        obs = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
        action, value, extras = evaluator.get_action_and_value(obs, deterministic=True)
        with torch.no_grad():
            logits, expected = policy(torch.as_tensor(obs))
        assert torch.equal(action, logits.argmax(-1)) and torch.equal(value, expected)
        assert extras["weights_version"] == 0


class TestGreedyActions:
    def test_trunk_agent_greedy_is_argmax_of_its_logits(self) -> None:
        case = next(c for c in CASES if c.name == "cleanrl-cnn")
        evaluator = case.make()
        obs = case.obs(B)
        action, _ = evaluator.get_action(obs, deterministic=True)
        agent = evaluator.training_agent
        with torch.no_grad():
            logits = agent.actor(agent.network(torch.as_tensor(obs).float() / 255.0))
        assert torch.equal(action, logits.argmax(-1))

    def test_agent_without_actor_head_fails_at_construction(self) -> None:
        with pytest.raises(TypeError, match="deterministic=True: NormAgent exposes no actor"):
            CleanRLEvaluator(NormAgent(), deterministic=True)


class TestDetached:
    def test_dummy_copies_draw_from_their_own_generator(self) -> None:
        original = DummyEvaluator(spaces.Discrete(1000), seed=3)
        clone = original.detached()
        obs = np.zeros((50, 4))
        from_clone = clone.get_action(obs)[0]
        assert torch.equal(from_clone, original.get_action(obs)[0])  # same seed state, apart
