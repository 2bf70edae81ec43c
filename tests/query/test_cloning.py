"""The clone protocol: ``detached()`` clones (and pickled evaluators) of every adapter share no
mutable state with the original by accident, and a class that adds state without a rule fails
loudly, naming it."""

from __future__ import annotations

import enum
import importlib.util
import pickle
import threading
import types
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval import Evaluator
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator, SB3Evaluator
from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.query.cloning import Clone
from tests.cases import CASES, DISCRETE, VECTOR, Case, _torch_seeded
from tests.models import fake_envs

B = 4


def _sb3_model(algorithm: str) -> SB3Evaluator:
    import stable_baselines3 as sb3

    env = "CartPole-v1" if algorithm == "DQN" else "Pendulum-v1"
    kwargs = {} if algorithm == "DQN" else {"learning_starts": 0}
    model = getattr(sb3, algorithm)("MlpPolicy", env, policy_kwargs={"net_arch": [16]},
                                    buffer_size=100, device="cpu", seed=0, **kwargs)
    return SB3Evaluator(model)


PENDULUM = spaces.Box(-1.0, 1.0, (3,), np.float32)
CARTPOLE = VECTOR  # CartPole's observations are [B, 4] floats too
CLONE_CASES = [*CASES,
               Case("cleanrl-greedy", _torch_seeded(lambda: CleanRLEvaluator(
                   MLPAgent(fake_envs(VECTOR, DISCRETE)), deterministic=True)), VECTOR, (),
                   torch.int64, None),
               Case("cleanrl-in-place", _torch_seeded(lambda: CleanRLEvaluator(
                   MLPAgent(fake_envs(VECTOR, DISCRETE)), copy_agent=False)), VECTOR, (),
                   torch.int64, None)]
if importlib.util.find_spec("stable_baselines3"):
    CLONE_CASES += [Case(f"sb3-{name.lower()}", _torch_seeded(lambda name=name: _sb3_model(name)),
                         CARTPOLE if name == "DQN" else PENDULUM, (), torch.int64, None)
                    for name in ("DQN", "SAC", "TD3")]


# --- what the test calls mutable, and where it is reachable from (its own reading) ------------

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, enum.Enum, torch.device,
              torch.dtype, np.generic)
_NOT_STATE = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
              types.ModuleType)


def is_mutable(value: Any) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return any(is_mutable(item) for item in value)
    return not isinstance(value, _IMMUTABLE + _NOT_STATE)


def reachable(value: Any, found: dict[int, Any], depth: int = 8) -> dict[int, Any]:
    """Every mutable object reachable from ``value`` (containers' items, objects' attributes,
    modules' tensors), by id."""
    if depth == 0 or not is_mutable(value) or id(value) in found:
        return found
    if not isinstance(value, (tuple, frozenset)):
        found[id(value)] = value
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return found
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        items = list(getattr(value, "__dict__", {}).values())
        if isinstance(value, np.random.Generator):
            items.append(value.bit_generator)
    for item in items:
        reachable(item, found, depth - 1)
    return found


def declared_rules(cls: type) -> dict[str, Clone]:
    """The rules the classes along ``cls``'s bases declare, read from their ``clone_rules``."""
    rules = {}
    for klass in reversed(cls.__mro__):
        rules.update({name: Clone(rule) for name, rule in
                      vars(klass).get("clone_rules", {}).items()})
    return rules


def query_args(evaluator: Evaluator) -> dict:
    if not evaluator.is_lstm:
        return {}
    return {"lstm_state": evaluator.initial_lstm_state(B), "done": torch.zeros(B)}


def answers(evaluator: Evaluator, obs: np.ndarray) -> list[torch.Tensor]:
    """Greedy and sampled actions and values (sampled ones from a seeded torch generator, or
    the adapter's own: the Dummy's action space)."""
    out = [evaluator.get_action(obs, deterministic=True, **query_args(evaluator))[0]]
    torch.manual_seed(7)
    out.append(evaluator.get_action(obs, deterministic=False, **query_args(evaluator))[0])
    if evaluator.agent is not None:
        out.append(evaluator.get_value(obs, **query_args(evaluator))[0])
    return out


def other_weights(agent: nn.Module) -> dict[str, torch.Tensor]:
    """``agent``'s state dict with every floating-point tensor moved: weights of another
    step."""
    return {key: value + 0.5 if value.is_floating_point() else value
            for key, value in agent.state_dict().items()}


def mutate(clone: Evaluator, obs: np.ndarray) -> None:
    """What an evaluation does to its clone: other weights, a recurrent state stepped along an
    episode, sampled actions drawn."""
    if clone.agent is not None:
        clone.load_weights(other_weights(clone.agent), version=99)
    state = clone.initial_lstm_state(B)
    for step in range(3):
        done = torch.full((B,), float(step == 0))
        args = {"lstm_state": state, "done": done} if clone.is_lstm else {}
        _, _, extras = clone.get_action_and_value(obs, deterministic=False, **args)
        state = extras["lstm_state"]


@pytest.mark.parametrize("case", CLONE_CASES, ids=repr)
class TestEveryAdapterClonesApart:
    def test_each_mutable_attribute_is_declared_shared_or_the_clones_own(self, case: Case
                                                                          ) -> None:
        original = case.make()
        obs = case.obs(B)
        answers(original, obs)  # caches filled (greedy heads, recurrent layouts)
        clone = original.detached()
        rules = declared_rules(type(original))
        theirs: dict[int, Any] = {}
        for value in vars(original).values():
            reachable(value, theirs)
        for name, value in vars(clone).items():
            if not is_mutable(value) or rules.get(name) in (Clone.SHARE, Clone.LOCAL):
                continue
            assert name in rules, f"{name}: mutable and declared nowhere"
            shared = [type(obj).__name__ for key, obj in reachable(value, {}).items()
                      if key in theirs]
            assert not shared, f"{name} shares {shared} with the original"

    def test_the_clones_copy_of_the_agent_is_its_own(self, case: Case) -> None:
        original = case.make()
        clone = original.detached()
        if original.agent is None:
            assert clone.agent is None
            return
        mine = {id(t) for t in [*clone.agent.parameters(), *clone.agent.buffers()]}
        for agent in (original.agent, original.training_agent):
            assert not mine & {id(t) for t in [*agent.parameters(), *agent.buffers()]}

    def test_using_the_clone_leaves_the_originals_answers(self, case: Case) -> None:
        original, twin = case.make(), case.make()  # the twin is never cloned
        obs = case.obs(B)
        assert all(torch.equal(a, b) for a, b in zip(answers(original, obs), answers(twin, obs)))
        clone = original.detached()
        before = clone.get_value(obs, **query_args(clone))[0] if clone.agent else None
        mutate(clone, obs)
        assert all(torch.equal(a, b) for a, b in zip(answers(original, obs), answers(twin, obs)))
        if before is not None:  # the clone answers from its new weights, and only from them
            assert not torch.equal(clone.get_value(obs, **query_args(clone))[0], before)
            reference = case.make()  # what those weights answer (in place: from a copy)
            reference = reference if reference.copy_agent else reference.detached()
            reference.load_weights(other_weights(reference.agent))
            greedy = [e.get_action(obs, deterministic=True, **query_args(e))[0]
                      for e in (clone, reference)]
            values = [e.get_value(obs, **query_args(e))[0] for e in (clone, reference)]
            assert torch.equal(*greedy) and torch.equal(*values)

    def test_training_moves_the_original_not_the_clone(self, case: Case) -> None:
        original = case.make()
        if original.training_agent is None:
            pytest.skip("no training agent")
        obs = case.obs(B)
        clone = original.detached()
        before = clone.get_value(obs, **query_args(clone))[0]
        with torch.no_grad():  # an optimizer step's worth of change, in place
            for parameter in original.training_agent.parameters():
                parameter.add_(0.5)
        assert not torch.equal(original.get_value(obs, **query_args(original))[0], before)
        assert torch.equal(clone.get_value(obs, **query_args(clone))[0], before)

    def test_a_pickled_clone_answers_as_the_clone_and_starts_its_own_state(self, case: Case
                                                                             ) -> None:
        clone = case.make().detached()
        obs = case.obs(B)
        answers(clone, obs)
        back = pickle.loads(pickle.dumps(clone))
        assert back.training_agent is None  # left in the training process
        assert back._lock is not clone._lock
        greedy = clone.get_action(obs, deterministic=True, **query_args(clone))[0]
        assert torch.equal(back.get_action(obs, deterministic=True, **query_args(back))[0],
                           greedy)
        if clone.agent is not None:
            assert torch.equal(back.get_value(obs, **query_args(back))[0],
                               clone.get_value(obs, **query_args(clone))[0])


class TestCompiledClones:
    def test_a_compiled_evaluators_clone_compiles_its_own_hooks(self, dynamo) -> None:
        torch.manual_seed(0)
        agent = MLPAgent(fake_envs(VECTOR, DISCRETE), hidden=8)
        original = CleanRLEvaluator(agent, compile={"backend": "eager"})
        clone = original.detached()
        obs = CASES[0].obs(B)
        expected = original.get_value(obs)[0]
        assert clone._get_value is not original._get_value
        clone.load_weights(other_weights(clone.agent))
        assert not torch.equal(clone.get_value(obs)[0], expected)
        assert torch.equal(original.get_value(obs)[0], expected)


# --- the rules themselves ----------------------------------------------------------------------

class Noisy(DummyEvaluator):
    """An adapter with state of each kind."""

    clone_rules = {"rng": "copy", "settings": Clone.SHARE, "_cache": "fresh",
                   "trainer": Clone.LOCAL}
    _cache: dict | None = None

    def __init__(self) -> None:
        super().__init__(DISCRETE, seed=0)
        self.rng = np.random.default_rng(0)
        self.settings = {"scale": 2.0}
        self._cache = {"found": "in the original"}
        self.trainer = threading.Event()  # stands for a live training object


class TestRules:
    def test_each_rule_does_what_it_says(self) -> None:
        original = Noisy()
        clone = original.detached()
        assert clone.settings is original.settings  # share
        assert clone.trainer is original.trainer  # local: shared in this process
        assert clone.rng is not original.rng  # copy: the same draws, apart
        assert clone.rng.integers(1 << 30) == original.rng.integers(1 << 30)
        assert clone._cache is None and original._cache == {"found": "in the original"}

    def test_pickling_follows_the_rules(self) -> None:
        back = pickle.loads(pickle.dumps(Noisy()))
        assert back.trainer is None  # local: left behind
        assert back._cache is None  # fresh: from the class
        assert back.settings == {"scale": 2.0}
        assert back.rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)

    def test_immutable_settings_need_no_rule(self) -> None:
        class Scaled(DummyEvaluator):
            def __init__(self) -> None:
                super().__init__(DISCRETE)
                self.scale, self.name, self.dtype = 2.0, "scaled", torch.float64

        clone = Scaled().detached()
        assert (clone.scale, clone.name, clone.dtype) == (2.0, "scaled", torch.float64)

    @pytest.mark.parametrize("action", ["detached", "pickle"])
    def test_undeclared_mutable_state_is_refused_by_name(self, action: str) -> None:
        class Forgetful(DummyEvaluator):
            def __init__(self) -> None:
                super().__init__(DISCRETE)
                self.history = []  # added without a rule

        evaluator = Forgetful()
        with pytest.raises(TypeError, match=r"Forgetful\.history: .* 'history' \(list of length 0"
                                            r"\) has none; declare it in "
                                            r"Forgetful\.clone_rules as 'share'"):
            evaluator.detached() if action == "detached" else pickle.dumps(evaluator)

    @pytest.mark.parametrize(("body", "error", "message"), [
        ({"clone_rules": {"rng": "shared"}}, ValueError,
         r"Bad\.clone_rules\['rng'\]: expected one of \['share', 'copy', 'fresh', 'local'\], "
         r"got str 'shared'"),
        ({"clone_rules": {"agent": "share"}}, TypeError,
         r"Bad\.clone_rules\['agent'\]: 'agent' is the Evaluator base class's own attribute, "
         r"which it clones as 'copy'"),
        ({"clone_rules": {"_cache": "fresh"}}, TypeError,
         r"Bad\.clone_rules\['_cache'\]: a 'fresh' attribute starts from the class's value; "
         r"give Bad a class attribute _cache"),
        ({"_detach_into": lambda self, clone: None}, TypeError,
         r"Bad\._detach_into: clones no longer call it; declare .* in clone_rules"),
    ], ids=["unknown-rule", "base-attribute-otherwise", "fresh-without-start", "old-fix-up"])
    def test_bad_declarations_fail_at_class_creation(self, body, error, message) -> None:
        with pytest.raises(error, match=message):
            type("Bad", (DummyEvaluator,), body)

    def test_rules_of_a_mixin_and_of_subclasses_add_up(self) -> None:
        class Records:
            clone_rules = {"calls": "fresh"}
            calls = None

        class Both(Records, Noisy):
            clone_rules = {"extra": "copy"}

            def __init__(self) -> None:
                super().__init__()
                self.calls, self.extra = [], [1]

        original = Both()
        clone = original.detached()
        assert clone.calls is None and clone.rng is not original.rng
        assert clone.extra == [1] and clone.extra is not original.extra
