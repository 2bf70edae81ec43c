"""TorchRL policies: a ``TensorDictModule`` (or ``TensorDictSequential``, ``ProbabilisticActor``)
writing ``"action"``, and an optional value module (``ValueOperator``) writing ``"state_value"``.

Usage::

    from tensordict.nn import TensorDictModule
    from syllabus_eval import EpisodeSettings, EvalRunner
    from syllabus_eval.adapters import TorchRLEvaluator

    policy = TensorDictModule(nn.Linear(17, 6), in_keys=["observation"], out_keys=["action"])
    runner = EvalRunner(make_env, TorchRLEvaluator(policy),
                        episodes=EpisodeSettings(max_steps=1000))
    metrics = runner.evaluate(weights=policy, step=0)     # a Gymnasium env, 17 -> 6
    evaluator = TorchRLEvaluator(actor, value=critic)     # get_value: critic's state_value

Observations become a ``TensorDict`` of batch size ``[B]``: a single Box observation under
``observation_key`` (``"observation"``, as TorchRL's ``GymEnv`` names it), a ``Dict``
observation under its own keys. Floating-point observations take the dtype of the policy's
floating-point parameters (MuJoCo's float64 observations meet an ``nn.Linear`` as float32, what
TorchRL's ``DoubleToFloat`` transform does for ``GymEnv``, which keeps float64); frames,
integers and flags keep theirs.

Greedy and sampled actions use TorchRL's exploration type (``ExplorationType.DETERMINISTIC`` /
``RANDOM``, tensordict's ``InteractionType``). That setting is one value for the whole process
in tensordict 0.14, not one per thread, and every call of a ``ProbabilisticActor`` writes it:
set from a query thread, it would switch a collector in the training thread to greedy actions
meanwhile. So queries never set it: on first use the adapter wraps tensordict's setting so
that, inside a query and in the querying thread only, it reads and writes that query's value;
everywhere else it behaves as before.

tensordict (and TorchRL for its modules) are optional: ``pip install 'syllabus-eval[torchrl]'``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn

from syllabus_eval.errors import describe
from syllabus_eval.query.compiled import unwrap_compiled
from syllabus_eval.query.evaluator import AgentInputs, Clone, Evaluator, LSTMState
from syllabus_eval.query.inputs import TensorTree


@functools.cache
def _tensordict() -> SimpleNamespace:
    """tensordict's names the adapter uses, imported on first use (an optional extra)."""
    try:
        from tensordict import TensorDict
        from tensordict.nn import InteractionType, TensorDictModuleBase, set_interaction_type
    except ImportError as error:
        raise ImportError("TorchRLEvaluator needs tensordict (and TorchRL for its modules): "
                          "pip install 'syllabus-eval[torchrl]'") from error
    return SimpleNamespace(TensorDict=TensorDict, TensorDictModuleBase=TensorDictModuleBase,
                           InteractionType=InteractionType,
                           set_interaction_type=set_interaction_type, modes=_per_query_modes())


class TorchRLEvaluator(Evaluator):
    """Queries a TorchRL policy and, optionally, its value module.

    Args:
        policy: a ``TensorDictModuleBase`` (``TensorDictModule``, ``TensorDictSequential``,
            ``ProbabilisticActor``, ...) reading observations and writing ``action_key``;
            compiled (``torch.compile``) or not, as ``value``: the wrapped modules are used.
        value: a ``TensorDictModuleBase`` writing ``value_key`` ([B, 1] or [B]), e.g. a
            ``ValueOperator``; it may read the policy's outputs (a Q-value critic reading
            ``"action"``: the policy then runs first, greedy in ``get_value``, and in
            ``get_action_and_value`` the critic values the action answered).
        device: where queries run (default: the policy's device).
        preprocess_obs: applied to raw observations first.
        copy_agent: query a private, synced copy (default) or the modules themselves.
        observation_key: where a single (non-dict) observation goes in the TensorDict.
        action_key: the policy's output answered as the action.
        value_key: the value module's output answered as the value.
        **kwargs: the :class:`~syllabus_eval.Evaluator` options (``deterministic``,
            ``observation_space``, ``auto_sync``, ``sync_timeout``).

    The agent whose weights are copied and synced is ``policy`` itself, or with a value module
    an ``nn.ModuleDict(policy=policy, value=value)`` around both (shared layers stay shared):
    give ``EvalRunner`` ``weights=policy`` in the first case, and ``weights=None`` (the live
    modules) or ``weights=evaluator.training_agent`` (or its state dict) in the second.

    Actions are the policy's ``action_key`` output as it writes it (a one-hot policy answers
    one-hot actions). ``extras`` holds the policy's other outputs under their keys (``loc``,
    ``scale``, ``logits``, ...), its log-probability as ``log_prob``. Value modules run with
    the deterministic exploration type.
    """

    obs_dtype = None  # integer and bool observations are kept; floats: see _prepare_state
    recurrent = False
    # Settings read from the modules at construction, never changed after.
    clone_rules: ClassVar[dict[str, Clone]] = dict.fromkeys(
        ("observation_key", "action_key", "value_key", "_has_value", "_float_dtype",
         "_value_reads_policy", "_needed", "_extras"), Clone.SHARE)

    def __init__(self, policy: nn.Module, value: nn.Module | None = None,
                 device: str | torch.device | None = None, preprocess_obs: Any = None,
                 copy_agent: bool = True, *, observation_key: str = "observation",
                 action_key: str = "action", value_key: str = "state_value",
                 **kwargs: Any) -> None:
        td = _tensordict()
        # Compiled modules (torch.compile) hold no weights of their own: the modules they wrap
        # train, and are the ones to copy, sync and query.
        policy, value = unwrap_compiled(policy), unwrap_compiled(value)
        _check_module("policy", policy, action_key, td)
        if value is not None:
            _check_module("value", value, value_key, td)
        agent = policy if value is None else nn.ModuleDict({"policy": policy, "value": value})
        super().__init__(agent, device, preprocess_obs, copy_agent, **kwargs)
        self.observation_key = observation_key
        self.action_key = action_key
        self.value_key = value_key
        self._has_value = value is not None
        self._float_dtype = next((p.dtype for p in policy.parameters() if p.is_floating_point()),
                                 torch.get_default_dtype())
        policy_outputs = set(policy.out_keys)
        self._value_reads_policy = value is not None and bool(
            policy_outputs & set(value.in_keys))
        # What observations must give: the policy's inputs, and the value's own.
        value_inputs = () if value is None else value.in_keys
        needed = list(policy.in_keys) + [key for key in value_inputs
                                         if key not in policy_outputs]
        self._needed = list(dict.fromkeys(needed))
        log_prob_keys = set(getattr(policy, "log_prob_keys", ()))
        self._extras = {key: "log_prob" if key in log_prob_keys and len(log_prob_keys) == 1
                        else key for key in policy.out_keys if key != action_key}

    # --- observations ------------------------------------------------------------------------

    def _prepare_state(self, state: Any) -> TensorTree:
        obs = _cast_floats(super()._prepare_state(state), self._float_dtype)  # on the device
        if not isinstance(obs, dict):
            obs = {self.observation_key: obs}
        missing = [key for key in self._needed if not _has_key(obs, key)]
        if missing:
            raise ValueError(
                f"state: the policy{' and value' if self._has_value else ''} read "
                f"{self._needed}, missing {missing} in observations {describe(obs)} (a "
                f"single observation goes under observation_key={self.observation_key!r}; a "
                "Dict observation under its own keys)")
        return obs

    # --- the hooks ---------------------------------------------------------------------------

    def _get_action(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        action, _, extras = self._run(inputs, policy=True, value=False)
        return action, None, extras

    def _get_value(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        self._require_value()
        # A critic reading the policy's action values the greedy one.
        _, value, _ = self._run(inputs, policy=self._value_reads_policy, value=True,
                                deterministic=True)
        return value, None, {}

    def _get_action_and_value(self, inputs: AgentInputs
                              ) -> tuple[torch.Tensor, torch.Tensor, LSTMState | None, dict]:
        self._require_value()
        action, value, extras = self._run(inputs, policy=True, value=True)
        return action, value, None, extras

    def _require_value(self) -> None:
        if not self._has_value:
            raise ValueError("get_value: this TorchRLEvaluator has no value module; build it "
                             "with TorchRLEvaluator(policy, value=ValueOperator(...))")

    def _run(self, inputs: AgentInputs, *, policy: bool, value: bool,
             deterministic: bool | None = None) -> tuple[Any, Any, dict]:
        """One pass: the policy (in the query's exploration type), then the value module (in
        the deterministic one) on the same TensorDict, so a critic can read the action."""
        td = _tensordict()
        modes = td.InteractionType
        data = td.TensorDict(inputs.obs, batch_size=[inputs.batch_size], device=self.device)
        policy_module, value_module = ((self.agent["policy"], self.agent["value"])
                                       if self._has_value else (self.agent, None))
        action = answer = None
        extras: dict = {}
        if policy:
            greedy = inputs.deterministic if deterministic is None else deterministic
            with _exploration(modes.DETERMINISTIC if greedy else modes.RANDOM):
                data = policy_module(data)
            action = data.get(self.action_key)
            written = data.keys(include_nested=True)
            extras = {name: data.get(key) for key, name in self._extras.items()
                      if key in written}
        if value:
            with _exploration(modes.DETERMINISTIC):
                data = value_module(data)
            answer = data.get(self.value_key)
            if answer.dim() == 1:
                answer = answer.unsqueeze(-1)  # [B] -> [B, 1]
            if tuple(answer.shape) != (inputs.batch_size, 1):
                raise ValueError(f"value: expected {self.value_key!r} of shape "
                                 f"[{inputs.batch_size}, 1] (or [B]), got {describe(answer)}")
        return action, answer, extras


def _check_module(name: str, module: Any, key: str, td: SimpleNamespace) -> None:
    if not isinstance(module, td.TensorDictModuleBase):
        raise TypeError(f"{name}: expected a tensordict TensorDictModuleBase (TensorDictModule, "
                        f"TensorDictSequential, ProbabilisticActor, ValueOperator, ...), got "
                        f"{type(module).__name__}")
    if key not in module.out_keys:
        option = "action_key" if name == "policy" else "value_key"
        raise ValueError(f"{name}: expected a module that writes {key!r} ({option}), got "
                         f"{type(module).__name__} with out_keys {list(module.out_keys)}")


def _cast_floats(tree: TensorTree, dtype: torch.dtype) -> TensorTree:
    if isinstance(tree, dict):
        return {key: _cast_floats(value, dtype) for key, value in tree.items()}
    return tree.to(dtype) if tree.is_floating_point() else tree


def _has_key(tree: TensorTree, key: Any) -> bool:
    """Whether the observations ``tree`` hold ``key``, a string or a nested tuple."""
    for part in key if isinstance(key, tuple) else (key,):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


# --- a per-query exploration type --------------------------------------------------------------

class _PerQueryModes:
    """tensordict's interaction-type setting (its ``_interaction_type``), with a value of its
    own for each query: inside :func:`_exploration`, in that thread, ``get_mode`` and
    ``set_mode`` use the query's cell; everywhere else the shared setting, as before."""

    def __init__(self, shared: Any) -> None:
        self._shared = shared
        self._local = threading.local()

    def get_mode(self) -> Any:
        cell = getattr(self._local, "cell", None)
        return self._shared.get_mode() if cell is None else cell[0]

    def set_mode(self, mode: Any) -> None:
        cell = getattr(self._local, "cell", None)
        if cell is None:
            self._shared.set_mode(mode)
        else:
            cell[0] = mode

    @contextlib.contextmanager
    def override(self, mode: Any) -> Iterator[None]:
        previous = getattr(self._local, "cell", None)
        self._local.cell = [mode]
        try:
            yield
        finally:
            self._local.cell = previous


_install_lock = threading.Lock()


def _per_query_modes() -> _PerQueryModes | None:
    """Wrap tensordict's setting once (``None`` where tensordict keeps it otherwise, then
    queries fall back to the public, process-wide ``set_interaction_type``). The wrapper reads
    and writes the shared value itself, so threads inside ``set_interaction_type`` meanwhile
    keep theirs."""
    from tensordict.nn import probabilistic

    with _install_lock:
        shared = getattr(probabilistic, "_interaction_type", None)
        if isinstance(shared, _PerQueryModes):
            return shared
        if not (callable(getattr(shared, "get_mode", None))
                and callable(getattr(shared, "set_mode", None))):
            return None
        probabilistic._interaction_type = _PerQueryModes(shared)
        return probabilistic._interaction_type


def _exploration(mode: Any) -> contextlib.AbstractContextManager:
    """The exploration type ``mode`` for this query only (see :class:`_PerQueryModes`)."""
    td = _tensordict()
    return td.set_interaction_type(mode) if td.modes is None else td.modes.override(mode)
