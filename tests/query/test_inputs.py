"""Input preparation: every accepted form, no needless copies, and a clear error for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator, MoolibEvaluator
from syllabus_eval.demo.agents import CNNAgent, LSTMAgent, MLPAgent
from syllabus_eval.query.inputs import as_batch, batch_size_of
from tests.cases import FRAMES, VECTOR
from tests.models import MoolibNet, fake_envs

CPU = torch.device("cpu")
DICT_SPACE = spaces.Dict({"pos": spaces.Box(-1, 1, (2,)), "img": spaces.Box(0, 1, (3, 3))})


class TestConversion:
    def test_float32_arrays_are_not_copied(self) -> None:
        obs = np.ones((4, 3), np.float32)
        assert as_batch(obs, CPU, torch.float32, "state").data_ptr() == obs.ctypes.data

    def test_fitting_tensors_pass_through(self) -> None:
        obs = torch.ones(4, 3)
        assert as_batch(obs, CPU, torch.float32, "state") is obs

    def test_other_dtypes_become_the_adapters_dtype(self) -> None:
        assert as_batch(np.ones((2, 3)), CPU, torch.float32, "s").dtype == torch.float32
        assert as_batch(np.ones((2, 3), np.uint8), CPU, None, "s").dtype == torch.uint8

    def test_lists_of_per_env_arrays_and_tensors_are_stacked(self) -> None:
        rows = [np.full(3, i, np.float32) for i in range(4)]
        expected = torch.as_tensor(np.stack(rows))
        assert torch.equal(as_batch(rows, CPU, torch.float32, "s"), expected)
        assert torch.equal(as_batch([torch.as_tensor(r) for r in rows], CPU, torch.float32, "s"),
                           expected)

    def test_dicts_and_lists_of_dicts(self) -> None:
        batch = {"pos": np.zeros((5, 2)), "img": np.zeros((5, 3, 3))}
        per_env = [{"pos": np.zeros(2), "img": np.zeros((3, 3))} for _ in range(5)]
        for value in (batch, per_env):
            out = as_batch(value, CPU, torch.float32, "state")
            assert out["pos"].shape == (5, 2) and out["img"].shape == (5, 3, 3)

    def test_batch_size_of_what_a_ported_prepare_state_returns(self) -> None:
        # Syllabus's template returns observations unconverted: arrays, lists, dicts of them.
        for value in (np.zeros((3, 4)), [np.zeros(4)] * 3, {"a": np.zeros((3, 2)), "b": [0] * 3},
                      torch.zeros(3, 1)):
            assert batch_size_of(value, "state") == 3
        for value in (np.float32(1.0), None, {}, [], "obs"):
            with pytest.raises(ValueError, match=r"state: expected a batch with a leading "
                                                 r"batch dimension"):
                batch_size_of(value, "state")

    def test_flipped_views_are_accepted(self) -> None:
        obs = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert torch.equal(as_batch(obs[::-1], CPU, torch.float32, "state"),
                           torch.as_tensor(obs[::-1].copy()))

    def test_recurrent_state_takes_the_adapters_dtype(self) -> None:
        evaluator = lstm()
        state = evaluator.initial_lstm_state(3)
        as_float64 = tuple(t.double() for t in state)
        value, extras = evaluator.get_value(X, as_float64, np.zeros(3))
        assert torch.equal(value, evaluator.get_value(X, state, np.zeros(3))[0])
        assert all(t.dtype == torch.float32 for t in extras["lstm_state"])

    def test_dict_observations_reach_the_agent(self) -> None:
        evaluator = DummyEvaluator(spaces.Discrete(2), observation_space=DICT_SPACE)
        per_env = [DICT_SPACE.sample() for _ in range(3)]
        action, _ = evaluator.get_action(per_env)
        assert action.shape == (3,)

    def test_preprocess_obs_runs_first(self) -> None:
        seen = []
        evaluator = CleanRLEvaluator(MLPAgent(fake_envs(VECTOR, spaces.Discrete(2))),
                                     preprocess_obs=lambda obs: seen.append(obs) or obs * 0)
        raw = np.ones((2, 4), np.float32)
        value, _ = evaluator.get_value(raw)
        zeros, _ = evaluator.get_value(np.zeros((2, 4), np.float32))
        assert seen[0] is raw and torch.equal(value, zeros)

    def test_moolib_accepts_a_full_input_dict(self) -> None:
        evaluator = MoolibEvaluator(MoolibNet())
        frames = np.zeros((3, 2, 8, 8), np.uint8)
        plain, _ = evaluator.get_value(frames)
        full, _ = evaluator.get_value({"state": frames, "reward": np.zeros(3),
                                       "prev_action": np.zeros(3, np.int64)})
        other, _ = evaluator.get_value({"state": frames, "reward": np.ones(3),
                                        "prev_action": np.ones(3, np.int64)})
        assert torch.equal(plain, full) and not torch.equal(plain, other)


def mlp(**kwargs):
    return CleanRLEvaluator(MLPAgent(fake_envs(VECTOR, spaces.Discrete(2))), **kwargs)


def lstm():
    return CleanRLEvaluator(LSTMAgent(fake_envs(VECTOR, spaces.Discrete(2))), is_lstm=True)


class NoCopy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.lock = __import__("threading").Lock()  # not deep-copyable

    def get_value(self, x):
        return self.layer(x)

    def get_action_and_value(self, x, action=None):
        return None, None, None, self.layer(x)


X = np.zeros((3, 4), np.float32)
STATE = lstm().initial_lstm_state(3)
# (description, call, error type, fragments the message must contain)
BAD_INPUTS = [
    ("wrong observation shape", lambda: mlp(observation_space=VECTOR).get_value(np.zeros((3, 5))),
     ValueError, ["state", "[B, 4]", "(3, 5)"]),
    ("missing batch dimension", lambda: mlp(observation_space=VECTOR).get_value(np.zeros(4)),
     ValueError, ["state", "add a batch dimension"]),
    ("scalar observation", lambda: mlp().get_value(np.float32(1.0)),
     ValueError, ["state", "leading batch dimension"]),
    ("ragged per-env list", lambda: mlp().get_value([np.zeros(4), np.zeros(3)]),
     ValueError, ["state", "one shape", "(3,)", "(4,)"]),
    ("object array", lambda: mlp().get_value(np.array([None, 1], dtype=object)),
     ValueError, ["state", "numeric"]),
    ("string observation", lambda: mlp().get_value("obs"),
     ValueError, ["state", "array", "str"]),
    ("empty batch list", lambda: mlp().get_value([]), ValueError, ["state", "non-empty"]),
    ("dict keys differ", lambda: DummyEvaluator(spaces.Discrete(2), observation_space=DICT_SPACE)
     .get_value({"pos": np.zeros((2, 2))}), ValueError, ["state", "'img'", "'pos'"]),
    ("dict batch sizes differ", lambda: DummyEvaluator(spaces.Discrete(2))
     .get_value({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}), ValueError, ["state", "batch"]),
    ("recurrent state missing", lambda: lstm().get_value(X),
     ValueError, ["lstm_state", "initial_lstm_state(3)"]),
    ("recurrent state of another batch", lambda: lstm().get_value(X, lstm().initial_lstm_state(2)),
     ValueError, ["lstm_state[0]", "expected shape (1, 3, 128)", "(1, 2, 128)"]),
    ("recurrent state without c", lambda: lstm().get_value(X, STATE[:1]),
     ValueError, ["lstm_state", "2 tensors", "initial_lstm_state", "tuple of length 1"]),
    ("recurrent state of another hidden size",
     lambda: lstm().get_value(X, (torch.zeros(1, 3, 64), torch.zeros(1, 3, 64))),
     ValueError, ["lstm_state[0]", "(1, 3, 128)", "(1, 3, 64)"]),
    ("single observation without a space", lambda: mlp().get_value(np.zeros(4)),
     ValueError, ["state", "batch of 4", "obs[None]"]),
    ("dict against a Box space", lambda: mlp(observation_space=VECTOR).get_value(
        {"pos": np.zeros((2, 4))}), ValueError, ["state", "Box", "not a dict", "'pos'"]),
    ("ragged list of tensors", lambda: mlp().get_value([torch.zeros(4), torch.zeros(3)]),
     ValueError, ["state", "one shape", "(3,)", "(4,)"]),
    ("device that does not exist", lambda: mlp(device="gpu"),
     ValueError, ["device", "'cuda:0'", "gpu"]),
    ("sync_timeout not a number", lambda: mlp(sync_timeout="x"),
     ValueError, ["sync_timeout", "> 0", "'x'"]),
    ("deterministic not a flag", lambda: mlp().get_action(X, deterministic="no"),
     ValueError, ["deterministic", "True or False", "'no'"]),
    ("moolib done given twice", lambda: MoolibEvaluator(MoolibNet()).get_value(
        {"state": np.zeros((2, 2, 8, 8), np.uint8), "done": np.zeros(2, bool)},
        done=np.zeros(2)), ValueError, ["done", "given twice", "state['done']"]),
    ("recurrent state not a tuple", lambda: lstm().get_value(X, torch.zeros(1, 3, 128)),
     ValueError, ["lstm_state", "tuple", "Tensor"]),
    ("done of another shape", lambda: lstm().get_value(X, STATE, np.zeros(4)),
     ValueError, ["done", "[3]", "(4,)"]),
    ("recurrent state for a feedforward agent", lambda: mlp().get_value(X, STATE),
     ValueError, ["lstm_state", "feedforward"]),
    ("agent that is no module", lambda: CleanRLEvaluator("agent"),
     TypeError, ["agent", "get_value"]),
    ("CleanRL agent without get_states", lambda: CleanRLEvaluator(
        MLPAgent(fake_envs(VECTOR, spaces.Discrete(2))), is_lstm=True),
     TypeError, ["is_lstm=True", "get_states"]),
    ("agent that cannot be copied", lambda: CleanRLEvaluator(NoCopy()),
     TypeError, ["copy_agent=True", "copy_agent=False"]),
    ("in-place on another device", lambda: mlp(copy_agent=False, device="meta"),
     ValueError, ["device", "copy_agent=False"]),
    ("weights that do not fit", lambda: mlp().load_weights(
        CNNAgent(fake_envs(FRAMES, spaces.Discrete(2))).state_dict()),
     ValueError, ["weights", "MLPAgent"]),
    ("weights of the wrong type", lambda: mlp().load_weights([1, 2]),
     ValueError, ["weights", "state dict", "list"]),
    ("unknown moolib input key", lambda: MoolibEvaluator(MoolibNet()).get_value(
        {"state": np.zeros((2, 2, 8, 8), np.uint8), "rewards": np.zeros(2)}),
     ValueError, ["state", "prev_action", "rewards"]),
    ("moolib reward per env", lambda: MoolibEvaluator(MoolibNet()).get_value(
        {"state": np.zeros((2, 2, 8, 8), np.uint8), "reward": np.zeros(3)}),
     ValueError, ["state['reward']", "[2]", "(3,)"]),
    ("moolib model without initial_state", lambda: MoolibEvaluator(nn.Linear(1, 1)),
     TypeError, ["model", "initial_state"]),
    ("dummy with an unsupported space", lambda: DummyEvaluator(spaces.Text(3)),
     ValueError, ["action_space", "Discrete", "Text"]),
    ("preprocess_obs not callable", lambda: mlp(preprocess_obs=3),
     ValueError, ["preprocess_obs", "callable", "int"]),
    # Issue #19: each named at the call that received it, not by torch frames deep.
    ("observation of the wrong width, no space given",
     lambda: mlp().get_value(np.zeros((3, 5), np.float32)),
     ValueError, ["state", "[B, 4]", "(3, 5)", "critic.0"]),
    ("greedy actions for observations of the wrong width",
     lambda: mlp(deterministic=True).get_action(np.zeros((3, 5), np.float32)),
     ValueError, ["state", "[B, 4]", "(3, 5)"]),
    ("frames with their channels last", lambda: CleanRLEvaluator(
        CNNAgent(fake_envs(FRAMES, spaces.Discrete(2)))).get_value(
        np.zeros((2, 84, 84, 4), np.uint8)),
     ValueError, ["state", "[B, 4, H, W]", "(2, 84, 84, 4)"]),
    ("done other than 0/1", lambda: lstm().get_value(X, STATE, np.full(3, 2.0)),
     ValueError, ["done", "0/1", "2.0"]),
    ("done tensor other than 0/1",
     lambda: lstm().get_action(X, STATE, torch.tensor([0.0, 0.5, 1.0])),
     ValueError, ["done", "0/1", "0.5"]),
    ("moolib done in the input dict other than 0/1", lambda: MoolibEvaluator(MoolibNet())
     .get_value({"state": np.zeros((2, 2, 8, 8), np.uint8), "done": np.full(2, 2.0)}),
     ValueError, ["state['done']", "0/1", "2.0"]),
    ("recurrent sequence without a batch dimension", lambda: lstm().get_value_sequence(
        np.zeros((5, 4), np.float32), lstm().initial_lstm_state(1)),
     ValueError, ["states", "[T, B, 4]", "(5, 4)", "states[:, None]"]),
    ("feedforward sequence without a batch dimension",
     lambda: mlp().get_value_sequence(np.zeros((5, 4), np.float32)),
     ValueError, ["states", "[T, B, 4]", "(5, 4)", "states[:, None]"]),
    ("weights version not an integer", lambda: mlp().load_weights(
        MLPAgent(fake_envs(VECTOR, spaces.Discrete(2))).state_dict(), version="x"),
     ValueError, ["version", "integer", "'x'"]),
    ("weights version below 0", lambda: mlp().load_weights(
        MLPAgent(fake_envs(VECTOR, spaces.Discrete(2))).state_dict(), version=-1),
     ValueError, ["version", ">= 0", "-1"]),
]


class TestBadInputs:
    @pytest.mark.parametrize("call,error,fragments",
                             [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
    def test_clear_error(self, call, error, fragments) -> None:
        with pytest.raises(error) as caught:
            call()
        for fragment in fragments:
            assert fragment in str(caught.value), (fragment, str(caught.value))


class FailingCritic(nn.Module):
    """A CleanRL-contract agent whose forward fails for a reason of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Linear(4, 1)

    def get_value(self, x):
        raise RuntimeError("a bug of the agent's own")

    def get_action_and_value(self, x, action=None):
        raise RuntimeError("a bug of the agent's own")


class TestErrorsStayWhereTheyBelong:
    def test_an_agents_own_error_on_fitting_observations_is_not_blamed_on_them(self) -> None:
        with pytest.raises(RuntimeError, match="a bug of the agent's own"):
            CleanRLEvaluator(FailingCritic()).get_value(X)

    def test_a_refused_version_loads_nothing(self) -> None:
        evaluator = mlp()
        before = evaluator.get_value(X)[0]
        with pytest.raises(ValueError, match="version"):
            evaluator.load_weights(MLPAgent(fake_envs(VECTOR, spaces.Discrete(2))).state_dict(),
                                   version="x")
        value, extras = evaluator.get_value(X)
        assert torch.equal(value, before) and extras["weights_version"] == 0

    def test_done_as_booleans_floats_or_tensors_is_the_same_flag(self) -> None:
        evaluator, obs = lstm(), np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        flags = np.array([True, False, True])
        values = [evaluator.get_value(obs, STATE, done)[0]
                  for done in (flags, flags.astype(np.float32), flags.astype(int).tolist(),
                               torch.tensor(flags), torch.tensor(flags, dtype=torch.float32))]
        assert all(torch.equal(value, values[0]) for value in values)
