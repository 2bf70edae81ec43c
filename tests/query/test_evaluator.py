"""The Evaluator template and every adapter: shapes, exact values, recurrent state, modes;
Syllabus's custom-evaluator template run verbatim; compiled queries (``compile=...``)."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, Evaluator
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from syllabus_eval.demo.agents import LSTMAgent, MLPAgent
from tests.cases import CASES, RECURRENT, VECTOR, WITH_AGENT, Case
from tests.models import fake_envs
from tests.readme import readme_snippet

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


T = 6
POLICY_EXTRAS = ("entropy", "policy_logits")  # what sequences return, where the agent has them


def carried_state(case: Case, evaluator: Evaluator):
    """A recurrent state mid-episode (not zeros, so that restarts show), None without one."""
    if not evaluator.is_lstm:
        return None
    _, extras = evaluator.get_value(case.obs(B, seed=99), evaluator.initial_lstm_state(B))
    return extras["lstm_state"]


def step_by_step(evaluator: Evaluator, states: np.ndarray, state, done: torch.Tensor,
                 lengths: list[int], policy: bool):
    """What ``get_value_sequence`` must equal: ``get_value`` (or ``get_action_and_value``)
    step by step, each env's state carried while its sequence lasts."""
    values, policies = [], []
    for t in range(states.shape[0]):
        if policy:
            _, value, extras = evaluator.get_action_and_value(states[t], state, done[t])
            policies.append({key: extras[key] for key in POLICY_EXTRAS if key in extras})
        else:
            value, extras = evaluator.get_value(states[t], state, done[t])
        if state is not None:
            going = torch.tensor([t < n for n in lengths])
            dim = evaluator.lstm_batch_dim
            going = going.view(*[-1 if d == dim else 1 for d in range(state[0].dim())])
            state = tuple(torch.where(going, new, old)
                          for new, old in zip(extras["lstm_state"], state))
        values.append(value[:, 0])
    return torch.stack(values), {key: torch.stack([p[key] for p in policies])
                                 for key in (policies[0] if policies else ())}, state


@pytest.mark.parametrize("case", WITH_AGENT, ids=repr)
class TestValueSequences:
    """``get_value_sequence``: a ``[T, B]`` batch in one query, the same numbers as step by
    step (PLR scores whole segments with it)."""

    @pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
    @pytest.mark.parametrize("policy", [False, True], ids=["value", "policy"])
    def test_equals_step_by_step(self, case: Case, ragged: bool, policy: bool) -> None:
        evaluator = case.make()
        states = np.stack([case.obs(B, seed=t) for t in range(T)])
        done = torch.zeros(T, B)
        done[2, 1] = done[4, 3] = done[1, 0] = 1.0  # episodes restart mid-sequence
        lengths = [T, 3, 1, 5, 4] if ragged else [T] * B
        state = carried_state(case, evaluator)
        values, extras = evaluator.get_value_sequence(
            states, state, done, lengths=lengths if ragged else None, policy=policy)
        expected, policies, final = step_by_step(evaluator, states, state, done, lengths,
                                                 policy)
        assert values.shape == (T, B) and not values.requires_grad
        live = torch.arange(T)[:, None] < torch.tensor(lengths)  # padding is meaningless
        torch.testing.assert_close(values[live], expected[live], rtol=1e-5, atol=1e-6)
        for key, want in policies.items():
            torch.testing.assert_close(extras[key][live], want[live], rtol=1e-5, atol=1e-6)
        if evaluator.is_lstm:  # each env's state after its own last step
            for got, want in zip(extras["lstm_state"], final):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    def test_state_carries_across_calls(self, case: Case) -> None:
        evaluator = case.make()
        states = np.stack([case.obs(B, seed=t) for t in range(T)])
        state = carried_state(case, evaluator)
        whole, _ = evaluator.get_value_sequence(states, state, torch.zeros(T, B))
        first, extras = evaluator.get_value_sequence(states[:2], state, torch.zeros(2, B))
        rest, _ = evaluator.get_value_sequence(states[2:], extras["lstm_state"],
                                               torch.zeros(T - 2, B))
        torch.testing.assert_close(torch.cat([first, rest]), whole, rtol=1e-5, atol=1e-6)


def test_in_place_sequence_queries_leave_the_training_agents_lstm_alone() -> None:
    """copy_agent=False queries the training agent itself: a rollout in another thread must
    never find its lstm swapped for the one-pass path's recorder."""
    agent = tiny_lstm_agent()
    lstm, get_states, seen = agent.lstm, agent.get_states, []

    def watched(*args, **kwargs):
        seen.append(agent.lstm)
        return get_states(*args, **kwargs)

    agent.get_states = watched
    evaluator = CleanRLEvaluator(agent, is_lstm=True, copy_agent=False)
    obs, done = torch.randn(T, 2, 4), torch.zeros(T, 2)
    state = evaluator.initial_lstm_state(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copy_agent=False warns once
        values, _ = evaluator.get_value_sequence(obs, state, done)
        expected, carried = [], state
        for t in range(T):
            value, extras = evaluator.get_value(obs[t], lstm_state=carried, done=done[t])
            expected.append(value.view(-1))
            carried = extras["lstm_state"]
    assert seen and all(module is lstm for module in seen)
    torch.testing.assert_close(values, torch.stack(expected), rtol=1e-5, atol=1e-6)


class TestValueSequenceInputs:
    def test_cleanrl_lstm_runs_its_lstm_once_per_sequence(self) -> None:
        case = next(c for c in CASES if c.name == "cleanrl-lstm")
        evaluator = case.make()
        calls = []
        evaluator.agent.lstm.register_forward_hook(lambda *_: calls.append(1))
        done = torch.zeros(T, B)
        done[3] = 1.0
        evaluator.get_value_sequence(np.stack([case.obs(B, seed=t) for t in range(T)]),
                                     evaluator.initial_lstm_state(B), done)
        assert len(calls) == 1  # one packed pass, not a step (or a reset) at a time

    def test_states_without_a_time_axis_are_refused(self) -> None:
        evaluator = CASES[0].make()
        with pytest.raises(ValueError, match=r"states.*\[T, B, \.\.\.\]"):
            evaluator.get_value_sequence(np.zeros(4, np.float32))

    def test_done_of_other_steps_is_refused(self) -> None:
        evaluator = next(c for c in CASES if c.name == "cleanrl-lstm").make()
        with pytest.raises(ValueError, match=r"done.*sequences of 3 steps"):
            evaluator.get_value_sequence(np.zeros((3, 2, 4), np.float32),
                                         evaluator.initial_lstm_state(2), torch.zeros(2, 2))

    @pytest.mark.parametrize("lengths", [[3], [0, 3], [1, 4], [2.5, 3], np.array([2.0, 3.0]),
                                         torch.tensor([2.0, 3.0]), [True, True]],
                             ids=["size", "zero", "long", "fraction", "float-array",
                                  "float-tensor", "bool"])
    def test_lengths_outside_the_sequence_are_refused(self, lengths: Any) -> None:
        evaluator = CASES[0].make()
        with pytest.raises(ValueError, match=r"lengths.*integers in \[1, 3\], shape \[2\]"):
            evaluator.get_value_sequence(np.zeros((3, 2, 4), np.float32), lengths=lengths)

    def test_integer_lengths_of_any_kind_are_taken(self) -> None:
        evaluator = CASES[0].make()
        states = np.zeros((3, 2, 4), np.float32)
        for lengths in ([2, 3], np.array([2, 3], np.int32), torch.tensor([2, 3])):
            values, _ = evaluator.get_value_sequence(states, lengths=lengths)
            assert values.shape == (3, 2)

    @pytest.mark.parametrize("name", ["cleanrl-lstm", "moolib-lstm", "dummy-lstm"])
    @pytest.mark.parametrize("flag", [2.0, 0.5, -1.0, np.nan])
    def test_done_other_than_0_or_1_is_refused(self, name: str, flag: float) -> None:
        # A packed pass resets where done is nonzero, a step by step one may scale by it.
        case = next(c for c in CASES if c.name == name)
        evaluator = case.make()
        done = np.zeros((T, B), np.float32)
        done[2, 1] = flag
        with pytest.raises(ValueError, match=r"done: expected booleans or 0/1 flags .*got "
                                             r"ndarray of shape \(6, 5\)"):
            evaluator.get_value_sequence(np.stack([case.obs(B, seed=t) for t in range(T)]),
                                         evaluator.initial_lstm_state(B), done)

    def test_boolean_done_is_the_0_1_one(self) -> None:
        case = next(c for c in CASES if c.name == "cleanrl-lstm")
        evaluator = case.make()
        states = np.stack([case.obs(B, seed=t) for t in range(T)])
        done = np.zeros((T, B), bool)
        done[2, 1] = done[4, 0] = True
        state = evaluator.initial_lstm_state(B)
        as_bool, _ = evaluator.get_value_sequence(states, state, done)
        as_float, _ = evaluator.get_value_sequence(states, state, done.astype(np.float32))
        as_list, _ = evaluator.get_value_sequence(states, state, done.astype(int).tolist())
        assert torch.equal(as_bool, as_float) and torch.equal(as_bool, as_list)

    def test_moolib_done_in_the_input_dict_is_checked_too(self) -> None:
        evaluator = next(c for c in CASES if c.name == "moolib").make()
        frames = np.zeros((2, 3, 2, 8, 8), np.uint8)  # [T, B, C, H, W]
        with pytest.raises(ValueError, match=r"states\['done'\]: expected booleans or 0/1"):
            evaluator.get_value_sequence({"state": frames, "done": np.full((2, 3), 2.0)})

    def test_no_steps_are_refused(self) -> None:
        evaluator = CASES[0].make()
        with pytest.raises(ValueError, match=r"states: expected sequences of at least one step"
                                             r".*T >= 1, got ndarray of shape \(0, 2, 4\)"):
            evaluator.get_value_sequence(np.zeros((0, 2, 4), np.float32))

    def test_policy_must_be_a_flag(self) -> None:
        evaluator = CASES[0].make()
        with pytest.raises(ValueError, match=r"policy: expected True or False, got str 'yes'"):
            evaluator.get_value_sequence(np.zeros((3, 2, 4), np.float32), policy="yes")


class RecordsSteps:
    """Mixin: records the steps that the template runs the same in either hook form."""

    def __init__(self, *args, **kwargs) -> None:
        self.calls: list[str] = []
        self.hook_inputs: list = []  # what hooks were given, for the forms that record them
        super().__init__(*args, **kwargs)

    def _refresh(self) -> bool:
        self.calls.append("sync")
        return super()._refresh()

    def _prepare_state(self, state):
        self.calls.append("prepare_state")
        return super()._prepare_state(state)


class Recording(RecordsSteps, CleanRLEvaluator):
    """Records the order in which the template calls its steps."""

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
                # Fails in the agent (whose error the query's names state with).
                with pytest.raises(ValueError, match="shapes cannot be multiplied"):
                    evaluator.get_value(np.zeros((B, 5), np.float32))
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

    def test_trunk_agent_greedy_runs_the_trunk_once_per_query(self) -> None:
        case = next(c for c in CASES if c.name == "cleanrl-cnn")
        evaluator = case.make()
        rows = []
        evaluator.agent.network.register_forward_hook(
            lambda module, args, output: rows.append(len(args[0])))
        for seed in range(3):
            evaluator.get_action(case.obs(B, seed=seed), deterministic=True)
        actions = evaluator.agent.actor.out_features
        assert rows == [B, actions * B, B, B]  # after the first query's check: B rows a query

    def test_trunk_agent_that_acts_otherwise_keeps_scoring_every_action(self) -> None:
        class Masking(nn.Module):  # get_action_and_value forbids action 0; get_value cannot tell
            def __init__(self) -> None:
                super().__init__()
                self.network, self.actor = nn.Linear(4, 8), nn.Linear(8, 3)
                self.critic = nn.Linear(8, 1)
                with torch.no_grad():
                    self.actor.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # 0 would win

            def get_value(self, x):
                return self.critic(self.network(x))

            def get_action_and_value(self, x, action=None):
                logits = self.actor(self.network(x)).clone()
                logits[:, 0] = -1e9
                probs = torch.distributions.Categorical(logits=logits)
                action = probs.sample() if action is None else action
                return action, probs.log_prob(action), probs.entropy(), self.get_value(x)

        evaluator = CleanRLEvaluator(Masking(), deterministic=True)
        obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
        for _ in range(2):
            action, _ = evaluator.get_action(obs)
            assert not (action == 0).any()
        with torch.no_grad():
            _, log_prob, _, _ = evaluator.agent.get_action_and_value(
                torch.as_tensor(obs).repeat(3, 1), torch.arange(3).repeat_interleave(16))
        assert torch.equal(action, log_prob.view(3, 16).argmax(0))

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


# --- Syllabus's custom-evaluator template, as its documentation writes it ----------------------
# The class below is the template of Syllabus's evaluator documentation ("Implementing a Custom
# Evaluator"), verbatim: its import, `from syllabus.core.evaluator import Evaluator`, is ours
# (`from syllabus_eval import Evaluator`, at the top), and below each comment of a body are the
# few lines that make it run on CleanRL's recurrent agent (LSTMAgent).


class CustomEvaluator(Evaluator):
    def _get_action(self, inputs):
        # Convert inputs to the format expected by the agent
        # Call the agent's get_action method
        # Convert the output to the format expected by the curriculum
        hidden, lstm_state = self.agent.get_states(inputs.obs, inputs.lstm_state, inputs.done)
        logits = self.agent.actor(hidden)
        action = logits.argmax(-1) if inputs.deterministic else logits.softmax(-1).multinomial(
            1).squeeze(-1)
        extras = {"logits": logits}
        return action, lstm_state, extras

    def _get_value(self, inputs):
        # Convert inputs to the format expected by the agent
        # Call the agent's get_value method
        # Convert the output to the format expected by the curriculum
        hidden, lstm_state = self.agent.get_states(inputs.obs, inputs.lstm_state, inputs.done)
        value = self.agent.critic(hidden)
        extras = {}
        return value, lstm_state, extras

    def _get_action_and_value(self, inputs):
        # Convert inputs to the format expected by the agent
        # Call the agent's get_action_and_value method
        # Convert the output to the format expected by the curriculum
        action, lstm_state, extras = self._get_action(inputs)
        value, _, _ = self._get_value(inputs)
        return action, value, lstm_state, extras

    def _prepare_state(self, state):
        # Convert the state to the format expected by the agent.
        # Your method should start by calling ``self._preprocess_obs`` if it is provided.
        if self._preprocess_obs:
            state = self._preprocess_obs(state)
        state = torch.as_tensor(np.asarray(state), dtype=torch.float32)
        return state

    def _prepare_lstm(self, lstm_state, done):
        # Convert the lstm state to the format expected by the agent
        lstm_state = tuple(torch.as_tensor(np.asarray(s), dtype=torch.float32)
                           for s in lstm_state)
        done = torch.as_tensor(np.asarray(done), dtype=torch.float32)
        return lstm_state, done

    def _set_eval_mode(self):
        # Set the agent to evaluation mode
        self.agent.eval()
        pass

    def _set_train_mode(self):
        # Set the agent to training mode
        self.agent.train()
        pass


class RecordedTemplate(RecordsSteps, CustomEvaluator):
    """The template's steps as the queries run them, recorded in the template's own forms."""

    def _prepare_lstm(self, lstm_state, done):
        self.calls.append("prepare_lstm")
        return super()._prepare_lstm(lstm_state, done)

    def _set_eval_mode(self):
        self.calls.append("eval_mode")
        super()._set_eval_mode()

    def _set_train_mode(self):
        self.calls.append("train_mode")
        super()._set_train_mode()

    def _record(self, name: str, inputs) -> None:
        self.calls.append(f"{name}(training={self.agent.training}, "
                          f"grad={torch.is_grad_enabled()})")
        self.hook_inputs.append(inputs)

    def _get_action(self, inputs):
        self._record("_get_action", inputs)
        return super()._get_action(inputs)

    def _get_value(self, inputs):
        self._record("_get_value", inputs)
        return super()._get_value(inputs)

    def _get_action_and_value(self, inputs):
        self._record("_get_action_and_value", inputs)
        return super()._get_action_and_value(inputs)


def tiny_lstm_agent(seed: int = 0) -> LSTMAgent:
    torch.manual_seed(seed)
    return LSTMAgent(fake_envs(CARTPOLE, spaces.Discrete(2)), hidden=8, trunk_size=8)


CARTPOLE = gym.make("CartPole-v1").observation_space


class TestSyllabusTemplate:
    def test_every_query_runs_the_six_steps_in_order(self) -> None:
        agent = tiny_lstm_agent()
        optimizer = torch.optim.SGD(agent.parameters(), lr=0.1)
        agent.eval()  # the training agent's own mode: the template's train() is the copy's
        evaluator = RecordedTemplate(agent, is_lstm=True, preprocess_obs=lambda obs: obs * 2)
        obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        # As a curriculum may pass them: arrays and a list; the template's _prepare_lstm
        # makes them tensors.
        state = [np.full((1, 3, 8), 0.5, np.float32), np.zeros((1, 3, 8), np.float32)]
        done = [0.0, 1.0, 0.0]
        for query, hook in [(evaluator.get_action, "_get_action"),
                            (evaluator.get_value, "_get_value"),
                            (evaluator.get_action_and_value, "_get_action_and_value")]:
            optimizer.zero_grad()
            zeros = torch.zeros(1, 3, 8)
            agent.get_value(torch.as_tensor(obs), (zeros, zeros), torch.zeros(3)).sum().backward()
            optimizer.step()  # changed weights: the query syncs first
            evaluator.calls.clear()
            evaluator.hook_inputs.clear()
            with torch.enable_grad():
                *answers, extras = query(obs, state, done)
            # (The template's _get_action_and_value calls its two other hooks in between.)
            assert evaluator.calls[:5] == ["sync", "prepare_state", "prepare_lstm", "eval_mode",
                                           f"{hook}(training=False, grad=False)"]
            assert evaluator.calls[-1] == "train_mode"
            inputs = evaluator.hook_inputs[0]
            assert all(t.dtype == torch.float32 for t in (*inputs.lstm_state, inputs.done))
            with torch.no_grad():  # the agent's own answers on the prepared inputs
                hidden, expected_state = agent.get_states(
                    torch.as_tensor(obs) * 2, tuple(map(torch.as_tensor, state)),
                    torch.tensor(done))
            for got, want in zip(extras["lstm_state"], expected_state):
                assert torch.equal(got, want)
            if hook != "_get_action":
                assert torch.equal(answers[-1], agent.critic(hidden).detach())
            assert extras["weights_version"] == evaluator.weights_version
        assert not agent.training  # the template's _set_train_mode changed the copy only

    def test_eval_runner_evaluates_with_it(self) -> None:
        class RecurrentTemplate(CustomEvaluator):
            # What recurrent rollouts need besides the template: the state episodes start in.
            def initial_lstm_state(self, batch_size):
                lstm = self.agent.lstm
                return tuple(torch.zeros(lstm.num_layers, batch_size, lstm.hidden_size)
                             for _ in range(2))

        agent, other = tiny_lstm_agent(), tiny_lstm_agent(seed=1)
        envs = EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=2)
        episodes = EpisodeSettings(max_steps=50, seed=0)
        results = []
        for evaluator in (RecurrentTemplate(agent, is_lstm=True),
                          CleanRLEvaluator(agent, is_lstm=True)):
            with EvalRunner(envs, evaluator, num_episodes=4, episodes=episodes) as runner:
                results.append((runner.evaluate(step=1), runner.evaluate(other, step=2)))
        for template, cleanrl in zip(*results):  # the training agent's weights, then other's
            assert template.episodes == cleanrl.episodes and len(template.episodes) == 4
        assert results[0][0].episodes != results[0][1].episodes

    def test_prepare_state_may_return_the_numpy_state_unchanged(self) -> None:
        class AsGiven(CustomEvaluator):
            # The template's _prepare_state with the body Syllabus's documentation gives it
            # (and Syllabus's own evaluators keep): the observations, not converted.
            def _prepare_state(self, state):
                # Convert the state to the format expected by the agent.
                # Your method should start by calling ``self._preprocess_obs`` if it is provided.
                if self._preprocess_obs:
                    state = self._preprocess_obs(state)
                return state

            def _get_value(self, inputs):
                # What such an evaluator's hooks then do: convert for the agent themselves.
                self.given.append(inputs.obs)
                obs = inputs.obs["x"] if isinstance(inputs.obs, dict) else inputs.obs
                inputs.obs = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
                return super()._get_value(inputs)

        agent = tiny_lstm_agent()
        ported, ours = AsGiven(agent, is_lstm=True), CleanRLEvaluator(agent, is_lstm=True)
        ported.given = []
        obs = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        state = ours.initial_lstm_state(3)
        expected, _ = ours.get_value(obs, state, np.zeros(3))
        for given in (obs, list(obs), {"x": obs}):  # B = 3 from each
            value, _ = ported.get_value(given, state, np.zeros(3))
            assert ported.given[-1] is given  # reached the hook as _prepare_state returned it
            assert torch.equal(value, expected)
        states = np.stack([obs, obs[::-1]])  # [T, B, 4]: the rows of each step, unconverted
        values, _ = ported.get_value_sequence(states, state, np.zeros((2, 3)))
        expected, _ = ours.get_value_sequence(states, state, np.zeros((2, 3)))
        assert isinstance(ported.given[-1], np.ndarray)
        torch.testing.assert_close(values, expected, rtol=1e-6, atol=1e-7)

    def test_a_prepare_state_without_a_batch_is_named(self) -> None:
        class Forgets(CustomEvaluator):
            def _prepare_state(self, state):
                if self._preprocess_obs:
                    state = self._preprocess_obs(state)  # and no return

        with pytest.raises(ValueError, match=r"Forgets\._prepare_state: expected a batch .*"
                                             r"got NoneType None; Forgets\._prepare_state must "
                                             r"return the batch of observations"):
            Forgets(tiny_lstm_agent(), is_lstm=True).get_value(np.zeros((3, 4), np.float32))

    def test_preprocess_obs_is_callable_under_syllabus_name_given_or_not(self) -> None:
        agent = tiny_lstm_agent()
        plain = CustomEvaluator(agent)
        obs = np.ones((2, 4), np.float32)
        # Not given: "if self._preprocess_obs" skips it, and calling it changes nothing.
        assert not plain._preprocess_obs and plain._preprocess_obs(obs) is obs
        double = lambda obs: obs * 2  # noqa: E731
        assert CustomEvaluator(agent, preprocess_obs=double)._preprocess_obs is double
        plain._preprocess_obs = double  # set under either name, used under both
        assert plain.preprocess_obs is double

    def test_super_calls_in_syllabus_form_reach_our_hooks(self) -> None:
        class Ported(CleanRLEvaluator):
            def _prepare_lstm(self, lstm_state, done):
                return super()._prepare_lstm(lstm_state, done)

            def _set_train_mode(self):
                super()._set_train_mode()

        agent = tiny_lstm_agent()
        agent.train()
        agent.critic.eval()  # mixed modes, in place: restored, never forced
        before = [m.training for m in agent.modules()]
        ported, ours = (cls(agent, is_lstm=True, copy_agent=False)
                        for cls in (Ported, CleanRLEvaluator))
        obs = np.zeros((3, 4), np.float32)
        value, _ = ported.get_value(obs, ported.initial_lstm_state(3))
        assert torch.equal(value, ours.get_value(obs, ours.initial_lstm_state(3))[0])
        assert [m.training for m in agent.modules()] == before
        with pytest.raises(ValueError, match=r"lstm_state\[0\]: expected shape \(1, 3, 8\)"):
            ported.get_value(obs, ported.initial_lstm_state(4))  # the query's batch size

    @pytest.mark.parametrize(("name", "hook", "accepted"), [
        ("_prepare_lstm", lambda self, lstm_state: None,
         r"_prepare_lstm\(self, lstm_state, done, batch_size\) \(ours\) or "
         r"_prepare_lstm\(self, lstm_state, done\) -> \(lstm_state, done\) \(Syllabus's"),
        ("_set_train_mode", lambda self, previous, step: None,
         r"_set_train_mode\(self, previous\) \(ours\) or _set_train_mode\(self\) \(Syllabus's"),
        ("_set_eval_mode", lambda self, agent: None,
         r"_set_eval_mode\(self\) -> previous modes \(ours\) or _set_eval_mode\(self\), "
         "returning nothing"),
    ])
    def test_a_hook_of_neither_form_fails_at_class_creation(self, name, hook, accepted) -> None:
        with pytest.raises(TypeError, match=rf"Bad\.{name}\(self, .*\): expected the hook's "
                                            rf"signature {accepted}"):
            type("Bad", (CustomEvaluator,), {name: hook})


def tiny_mlp(seed: int = 0) -> MLPAgent:
    torch.manual_seed(seed)
    return MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)), hidden=8)


def train_step(agent: MLPAgent, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    agent.get_value(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()


class TestCompile:
    """``compile=...``: the query hooks compiled, on the private copy. Answers are compared
    with a tight tolerance: compiled kernels may round differently in the last bits."""

    def test_answers_match_eager_and_follow_optimizer_steps(self, torch_compile) -> None:
        agent = tiny_mlp()
        optimizer = torch.optim.SGD(agent.parameters(), lr=0.5)
        # Greedy by default: the adapter finds its greedy head when built, not while compiling.
        compiled, eager = (CleanRLEvaluator(agent, deterministic=True, compile=compile)
                           for compile in (True, False))
        obs = CASES[0].obs(B)

        def same_answers() -> None:
            for query in (compiled, eager):
                query.answers = (query.get_value(obs)[0], query.get_action(obs)[0],
                                 query.get_action_and_value(obs, deterministic=False)[1])
            value, greedy, one_pass_value = compiled.answers
            assert torch.allclose(value, eager.answers[0], rtol=1e-5, atol=1e-6)
            assert torch.equal(greedy, eager.answers[1])
            assert torch.allclose(one_pass_value, eager.answers[2], rtol=1e-5, atol=1e-6)

        in_thread(same_answers)  # compiled on a worker thread, as a curriculum's
        for _ in range(2):
            train_step(agent, optimizer)
            # Refreshes copy into the tensors the compiled code reads: no recompilation.
            with torch._dynamo.config.patch(error_on_recompile=True):
                same_answers()
        assert compiled.get_value(obs)[1]["weights_version"] == 2
        with torch.no_grad():
            assert torch.allclose(compiled.answers[0], agent.get_value(torch.as_tensor(obs)),
                                  rtol=1e-5, atol=1e-6)

    def test_detached_clones_compile_their_own_copy(self, dynamo) -> None:
        agent, other = tiny_mlp(), tiny_mlp(seed=1)
        # TorchDynamo without Inductor: what is compiled, and on which copy, at no C++ cost.
        evaluator = CleanRLEvaluator(agent, compile={"backend": "eager"})
        clone = evaluator.detached()
        clone.load_weights(other)
        obs = CASES[0].obs(B)
        with torch.no_grad():
            assert torch.equal(clone.get_value(obs)[0], other.get_value(torch.as_tensor(obs)))
            assert torch.equal(evaluator.get_value(obs)[0],
                               agent.get_value(torch.as_tensor(obs)))
        episodes = []
        for queries in (evaluator, CleanRLEvaluator(agent)):  # the runner queries a clone
            with EvalRunner(EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=2), queries,
                            num_episodes=4, episodes=EpisodeSettings(seed=0)) as runner:
                episodes.append(runner.evaluate(other).episodes)
        assert episodes[0] == episodes[1]

    @pytest.mark.parametrize(("make", "message"), [
        (lambda: CleanRLEvaluator(tiny_mlp(), copy_agent=False, compile=True),
         r"compile: expected False without a private copy to compile \(copy_agent=False or "
         r"no agent\): the training agent is never changed, got bool True"),
        (lambda: DummyEvaluator(spaces.Discrete(2), compile={}), "compile: expected False"),
        (lambda: CleanRLEvaluator(tiny_mlp(), compile={"modes": "max-autotune"}),
         r"compile: expected torch.compile's keyword arguments, got dict with keys \['modes'\]"
         r": got an unexpected keyword argument 'modes'"),
        (lambda: CleanRLEvaluator(tiny_mlp(), compile="yes"),
         r"compile: expected True, False or a dict of torch.compile's keyword arguments, got "
         r"str 'yes'"),
    ], ids=["in-place", "no-agent", "unknown-option", "not-an-option"])
    def test_bad_arguments(self, make, message) -> None:
        with pytest.raises(ValueError, match=message):
            make()
