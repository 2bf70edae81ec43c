"""The agent-query template: ask a training agent for actions and values from any thread.

Usage::

    from syllabus_eval.adapters import CleanRLEvaluator

    evaluator = CleanRLEvaluator(agent, device="cpu")           # keeps a private copy
    value, extras = evaluator.get_value(obs)                      # [B, 1], from a worker thread
    action, extras = evaluator.get_action(obs, deterministic=True)
    action, value, extras = evaluator.get_action_and_value(obs)

Each public method is a template that (1) refreshes the private copy if the training weights
changed, (2) prepares observations (``_prepare_state``), (3) prepares recurrent state and done
flags (``_prepare_lstm``), (4) puts the agent in eval mode, (5) calls the adapter's hook under
``torch.no_grad()``, and (6) restores the previous mode. Adapters override only the hooks.

A custom evaluator written for Syllabus keeps its hooks as they are: ``_prepare_lstm(self,
lstm_state, done)`` returning ``(lstm_state, done)``, ``_set_eval_mode(self)`` and
``_set_train_mode(self)`` are called that way, and ``self._preprocess_obs`` is there to call
(see :class:`Evaluator`).
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval.errors import bad_argument, check_count, check_flag, check_number, describe
from syllabus_eval.query.compiled import (
    compile_options,
    unwrap_compiled,
    without_compile_prefix,
    without_compiled_submodules,
)
from syllabus_eval.query.devices import QueryMode, as_device, device_of
from syllabus_eval.query.hook_forms import FROM_QUERY, HOOK_FORMS, NO_PREPROCESSING, hook_form
from syllabus_eval.query.inputs import (
    TensorTree,
    as_batch,
    batch_size_of,
    check_against_space,
    check_done_flags,
    obs_shape_error,
    take_rows,
)
from syllabus_eval.query.protocols import AgentQueries, LSTMState
from syllabus_eval.query.weights import WeightSource, snapshot_state_dict, weight_source

__all__ = ["AgentInputs", "AgentQueries", "Evaluator", "LSTMState"]


@dataclass(slots=True)
class AgentInputs:
    """What a hook receives: prepared tensors on the evaluator's device."""

    # [B, ...] (or a dict of them); [T * B, ...], time-major, for sequences. Tensors from our
    # _prepare_state; a ported one's result as it returned it (numpy arrays, say).
    obs: TensorTree | Any
    lstm_state: LSTMState | None  # each [num_layers, B, hidden] for CleanRL / moolib
    done: torch.Tensor | None  # [B] ([T * B] for sequences) float32; None: feedforward agents
    batch_size: int  # B
    deterministic: bool
    steps: int = 1  # T: the steps of each env's sequence (get_value_sequence)
    lengths: torch.Tensor | None = None  # [B] int64: env b's steps are its first lengths[b]


_TEMPLATES = ("get_action", "get_value", "get_action_and_value", "get_value_sequence")
_QUERY_HOOKS = tuple("_" + name for name in _TEMPLATES)  # what compile=True compiles
# Layers whose behaviour depends on train/eval mode.
_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)


class Evaluator:
    """Base class: thread-safe, consistent queries of a (possibly training) agent.

    Subclasses override the hooks (``_get_action``, ``_get_value``, ``_get_action_and_value``,
    and where needed ``_prepare_state``, ``_prepare_lstm``, ``_set_eval_mode``,
    ``_set_train_mode``), never the public templates. Two hooks may also be written as in
    Syllabus's custom-evaluator template, and are then called that way: ``_prepare_lstm(self,
    lstm_state, done)`` (without the batch size) and ``_set_train_mode(self)`` (without the
    previous modes: the override decides what it sets; ours restores them). ``_set_eval_mode``
    may then return nothing. Which form a class uses is read from its signatures when the
    class is created; a signature of neither form is a ``TypeError`` then. The base hooks also
    take Syllabus's calls through ``super()``: ``super()._prepare_lstm(lstm_state, done)`` and
    ``super()._set_train_mode()`` use the running query's batch size and saved modes.

    Args:
        agent: the training agent (an ``nn.Module``, or one ``torch.compile`` made, whose
            wrapped module is then the training agent); ``None`` for agents without weights.
        device: where queries run, a device this machine has (else a ``ValueError`` here,
            not torch's error at the first copy); default: the agent's device (CPU without
            parameters).
        preprocess_obs: called on raw observations before they become tensors (e.g. frozen
            observation normalisation from the training run).
        copy_agent: keep a private copy on ``device``, refreshed when the training weights
            change. ``False`` queries the training agent in place (see the README: unsafe with
            dropout or batch norm while another thread trains).
        is_lstm: the agent is recurrent: queries need ``lstm_state`` and take ``done``.
        deterministic: default for ``get_action``'s ``deterministic`` (greedy actions).
        observation_space: when given, observation batches are checked against it.
        auto_sync: refresh the copy from the training agent automatically (the default).
            ``False``: only :meth:`load_weights` changes the copy (for processes and actors
            that receive state dicts).
        sync_timeout: seconds an in-place query waits for a running optimizer step.
        compile: compile the queries on the private copy with ``torch.compile``: ``True``
            (torch's defaults) or a dict of its keyword arguments, e.g. ``{"mode":
            "max-autotune"}``, ``{"dynamic": True}``. What is compiled is the adapter's hooks
            (``_get_action``, ``_get_value``, ``_get_action_and_value``) on this evaluator,
            the agent's code they call included: adapters call the agent's methods
            (``agent.get_value``), which compiling the module alone would leave eager. Weight
            refreshes copy into the tensors the compiled code reads, and do not recompile.
            The first query of each kind compiles (seconds), a new batch size once more (then
            shapes are dynamic); on CPU it may be slower than eager (see the README).
            Needs ``copy_agent=True``: the training agent is never changed.

    Attributes:
        compile_options: the ``torch.compile`` keyword arguments the query hooks were compiled
            with (``{}`` for ``compile=True``); ``None``: they run eager.
        _preprocess_obs: the name Syllabus's template calls ``preprocess_obs`` by; always
            callable: without one, an identity that is false (``if self._preprocess_obs:``).
    """

    obs_dtype: torch.dtype | None = torch.float32
    lstm_batch_dim: int = 1  # the batch dimension of each recurrent-state tensor
    recurrent: bool = True  # whether the adapter takes recurrent agents (is_lstm=True)
    # The form each two-form hook is written in (see HOOK_FORMS), set per class.
    _lstm_gets_batch_size: bool = True
    _train_mode_gets_previous: bool = True
    _ported_prepare_state: bool = False  # a _prepare_state written outside the project

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Also through a mixin placed before Evaluator in the bases.
        overridden = [name for name in _TEMPLATES
                      if getattr(cls, name) is not getattr(Evaluator, name)]
        if overridden:
            raise TypeError(
                f"{cls.__name__} overrides {', '.join(overridden)}: these public templates keep "
                "queries consistent and thread-safe; override the hooks "
                f"{', '.join('_' + name for name in overridden)} instead"
            )
        forms = {name: hook_form(cls, name) for name in HOOK_FORMS}
        cls._lstm_gets_batch_size = forms["_prepare_lstm"] == 0
        cls._train_mode_gets_previous = forms["_set_train_mode"] == 0
        cls._ported_prepare_state = not getattr(cls._prepare_state, "__module__",
                                                "").startswith("syllabus_eval.")

    def __init__(
        self,
        agent: nn.Module | None,
        device: str | torch.device | None = None,
        preprocess_obs: Callable[[Any], Any] | None = None,
        copy_agent: bool = True,
        *,
        is_lstm: bool = False,
        deterministic: bool = False,
        observation_space: spaces.Space | None = None,
        auto_sync: bool = True,
        sync_timeout: float = 10.0,
        compile: bool | Mapping[str, Any] = False,
    ) -> None:
        if agent is not None and not isinstance(agent, nn.Module):
            raise bad_argument("agent", "a torch.nn.Module (or None)", agent)
        if agent is not None:
            # A compiled agent holds no weights of its own: the module it wraps trains.
            agent = unwrap_compiled(agent)
        if preprocess_obs is not None and not callable(preprocess_obs):
            raise bad_argument("preprocess_obs", "a callable or None", preprocess_obs)
        if observation_space is not None and not isinstance(observation_space, spaces.Space):
            raise bad_argument("observation_space", "a gymnasium.spaces.Space", observation_space)
        check_flag("deterministic", deterministic)
        if is_lstm and not self.recurrent:
            raise TypeError(f"is_lstm: {type(self).__name__} queries feedforward policies only")
        self.training_agent = agent
        self.device = as_device(device) if device is not None else device_of(agent)
        self.preprocess_obs = preprocess_obs
        self.copy_agent = copy_agent
        self.is_lstm = is_lstm
        self.deterministic = deterministic
        self.observation_space = observation_space
        self.sync_timeout = check_number("sync_timeout", sync_timeout, 0, low_open=True)
        self.compile_options = compile_options(compile, agent is not None and copy_agent)
        self.weights_version = 0  # optimizer steps behind the weights queries use
        self._lock = threading.Lock()  # one query at a time on the query agent
        self._query_mode = QueryMode(self.device)
        self._source: WeightSource | None = None  # auto-sync source of the private copy
        self._live_source: WeightSource | None = None  # copy_agent=False: guards the live agent
        self._synced_version = -1
        self._warned_inplace = False
        self._lstm_layout_cache: list | None = None  # filled by the first recurrent query
        # What the running query hands Syllabus-style hooks' super() calls (see the class).
        self._batch_size: int | None = None
        self._previous_mode: Any = None
        self._steps = 1  # T of the running query (sequences: done has T * B flags)

        self.agent: nn.Module | None = None  # what queries run on
        self._copy_tensors: list[torch.Tensor] = []  # the private copy's, in source order
        if agent is None:
            pass
        elif copy_agent:
            self._adopt_copy(self._make_copy(agent))
            if auto_sync:
                self._source = weight_source(agent)
                self._refresh_blocking()
        else:
            if device is not None and self.device != device_of(agent):
                raise bad_argument("device", f"the agent's device {device_of(agent)} with "
                                   "copy_agent=False", device)
            self.agent = agent
            self._live_source = weight_source(agent)
            self._mode_dependent = any(isinstance(m, _MODE_DEPENDENT) for m in agent.modules())

    # --- the templates -----------------------------------------------------------------------

    def get_action(self, state: Any, lstm_state: Any = None, done: Any = None,
                   *, deterministic: bool | None = None) -> tuple[torch.Tensor, dict]:
        """Actions for a batch of observations: ``(action [B, ...], extras)``."""
        (action, lstm_state, extras), version = self._query(
            self._get_action, state, lstm_state, done, deterministic)
        extras["lstm_state"] = lstm_state
        extras["weights_version"] = version
        return action, extras

    def get_value(self, state: Any, lstm_state: Any = None, done: Any = None
                  ) -> tuple[torch.Tensor, dict]:
        """Value estimates for a batch of observations: ``(value [B, 1], extras)``."""
        (value, lstm_state, extras), version = self._query(
            self._get_value, state, lstm_state, done, None)
        extras["lstm_state"] = lstm_state
        extras["weights_version"] = version
        return value, extras

    def get_action_and_value(self, state: Any, lstm_state: Any = None, done: Any = None,
                             *, deterministic: bool | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Actions and values in one pass: ``(action, value [B, 1], extras)``."""
        (action, value, lstm_state, extras), version = self._query(
            self._get_action_and_value, state, lstm_state, done, deterministic)
        extras["lstm_state"] = lstm_state
        extras["weights_version"] = version
        return action, value, extras

    def get_value_sequence(self, states: Any, lstm_state: Any = None, done: Any = None, *,
                           lengths: Any = None, policy: bool = False
                           ) -> tuple[torch.Tensor, dict]:
        """Values along sequences, the recurrent state carried through them in one call.

        Args:
            states: ``[T, B, ...]`` observations, time-major (or a dict of them).
            lstm_state: the state before step 0 (recurrent agents).
            done: ``[T, B]`` booleans or 0/1: 1 where an episode starts at that step (its
                state restarts).
            lengths: ``[B]`` integers in ``[1, T]``: env ``b``'s sequence is its first
                ``lengths[b]`` steps (the rest is padding, whose values are meaningless);
                default: all ``T``.
            policy: also the policy's per-step extras (``policy_logits``, ``entropy``).

        Returns:
            ``(values [T, B], extras)``: ``extras["lstm_state"]`` is each env's state after its
            last step; policy extras are ``[T, B, ...]``. The same numbers as calls of
            :meth:`get_value` step by step, carrying the state, in one query (PLR scores whole
            segments so). ``T = 0`` is refused (a ``ValueError``), as a slicing mistake more
            likely than a request.
        """
        check_flag("policy", policy)
        steps = _steps_of(states)
        flat_done = None if done is None else _time_major(check_done_flags(done, "done"), steps,
                                                          "done")
        (values, lstm_state, extras), version = self._query(
            self._get_value_sequence, _time_major(states, steps, "states"), lstm_state,
            flat_done, None, steps=steps, lengths=lengths, arg="states", policy=policy)
        values = values.reshape(steps, -1)  # [T, B]
        extras = {key: value.reshape(steps, -1, *value.shape[1:])
                  if isinstance(value, torch.Tensor) and value.dim() else value
                  for key, value in extras.items()}
        extras["lstm_state"] = lstm_state
        extras["weights_version"] = version
        return values, extras

    def _query(self, hook: Callable[..., Any], state: Any, lstm_state: Any, done: Any,
               deterministic: bool | None, steps: int = 1, lengths: Any = None,
               arg: str = "state", **hook_options: Any) -> tuple[Any, int]:
        """The hook's answer and the version of the weights that gave it (read under the lock:
        another thread may refresh the copy as soon as it is released). ``arg``: the name
        of ``state`` in the public method, for errors."""
        # Grad mode and the CUDA device are set here for the calling thread (QueryMode); one
        # context object is enough: it is only entered under the lock.
        with self._lock, self._query_mode:
            source = self._source
            if source is not None and source.version() != self._synced_version:
                self._refresh()  # 1. weights of one optimizer step
            self._steps = steps  # a sequence: T * B rows (done too), the state of B envs
            obs = None
            try:
                obs = self._prepare_state(state)  # 2.
                rows = (obs.shape[0] if type(obs) is torch.Tensor and obs.dim()
                        else self._rows_of(obs))
                batch_size = rows // steps
                if self._lstm_gets_batch_size:
                    lstm_state, done = self._prepare_lstm(lstm_state, done, batch_size)  # 3.
                else:  # Syllabus's form, without the batch size (super() finds it here)
                    self._batch_size = batch_size
                    lstm_state, done = self._prepare_lstm(lstm_state, done)
            except ValueError:
                # States without their batch dimension are read with B = their observations'
                # first dimension, and the recurrent state's B then looks wrong: say so.
                wrong = None if steps == 1 else obs_shape_error(obs, self.agent, arg, steps)
                if wrong is not None:
                    raise wrong from None
                raise
            finally:
                self._steps = 1
            if deterministic is None:
                deterministic = self.deterministic
            else:
                check_flag("deterministic", deterministic)
            if lengths is not None:
                lengths = _lengths(lengths, steps, batch_size)
            inputs = AgentInputs(obs, lstm_state, done, batch_size, deterministic, steps,
                                 lengths)
            live = self._live_source  # copy_agent=False: optimizer steps wait for the query
            if live is not None:
                self._warn_inplace_once()
                live.begin_read(self.sync_timeout)
                self.weights_version = live.steps
            try:
                previous = self._set_eval_mode()  # 4.
                try:
                    answer = hook(inputs, **hook_options)  # 5.
                except RuntimeError as error:
                    # torch's "mat1 and mat2 shapes cannot be multiplied", frames deep: name
                    # the observations when they do not fit the agent (free until it fails).
                    wrong = (None if isinstance(error, NotImplementedError)  # a missing hook
                             else obs_shape_error(obs, self.agent, arg, steps, error))
                    if wrong is None:
                        raise
                    raise wrong from error
                finally:
                    if self._train_mode_gets_previous:
                        self._set_train_mode(previous)  # 6.
                    else:  # Syllabus's form: the override decides (super() restores these)
                        self._previous_mode = previous
                        self._set_train_mode()
            finally:
                if live is not None:
                    live.end_read()
            shape = getattr(answer[0], "shape", None)  # a tensor (or array) of [B, ...]
            if shape is not None and (not shape or shape[0] != rows):
                raise ValueError(
                    f"{arg}: read as a batch of {rows} observations, but the agent "
                    f"answered with {describe(answer[0])}; a single observation needs a batch "
                    "dimension (obs[None])")
            return answer, self.weights_version

    def _rows_of(self, obs: Any) -> int:
        """The rows of what ``_prepare_state`` gave. A ported one (Syllabus's template body is
        ``return state``) may give the observations unconverted, arrays, lists or dicts of
        them, for its own hooks to take as they are: their first dimension is the batch."""
        if not self._ported_prepare_state:
            return batch_size_of(obs, "state")  # ours: the errors are about the user's input
        hook = f"{type(self).__name__}._prepare_state"
        try:
            return batch_size_of(obs, hook)
        except ValueError as error:
            raise ValueError(f"{error}; {hook} must return the batch of observations [B, ...] "
                             "(a tensor, an array, a list of per-env items or a dict of them), "
                             "e.g. the state it was given") from None

    # --- hooks for adapters ------------------------------------------------------------------

    def _get_action(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        raise NotImplementedError(f"{type(self).__name__} does not implement _get_action")

    def _get_value(self, inputs: AgentInputs) -> tuple[torch.Tensor, LSTMState | None, dict]:
        raise NotImplementedError(f"{type(self).__name__} does not implement _get_value")

    def _get_action_and_value(self, inputs: AgentInputs
                              ) -> tuple[torch.Tensor, torch.Tensor, LSTMState | None, dict]:
        """Default: the two hooks above on the same inputs (adapters with one pass override)."""
        action, next_state, extras = self._get_action(inputs)
        value, _, value_extras = self._get_value(inputs)
        return action, value, next_state, {**value_extras, **extras}

    def _get_value_sequence(self, inputs: AgentInputs, policy: bool = False
                            ) -> tuple[torch.Tensor, LSTMState | None, dict]:
        """Values ``[T * B, 1]`` of sequences (and with ``policy`` the per-step policy extras,
        ``[T * B, ...]``), the recurrent state carried from step to step.

        Default: :meth:`_get_value` (or :meth:`_get_action_and_value`) once per step, an env's
        state kept as it is past its length; adapters whose agents take whole sequences
        (CleanRL's LSTM, moolib's ``[T, B]`` inputs) override it with one pass.
        """
        batch, state, values, extras = inputs.batch_size, inputs.lstm_state, [], []
        lengths = None  # [B] where each env's state may move on, shaped like a state tensor
        if inputs.lengths is not None and state:  # () : no recurrent state
            dim = self.lstm_batch_dim
            lengths = inputs.lengths.to(state[0].device).view(
                *[-1 if d == dim else 1 for d in range(state[0].dim())])
        for t in range(inputs.steps):
            rows = slice(t * batch, (t + 1) * batch)
            step = AgentInputs(take_rows(inputs.obs, rows),
                               state, None if inputs.done is None else inputs.done[rows],
                               batch, inputs.deterministic)
            if policy:
                _, value, next_state, step_extras = self._get_action_and_value(step)
            else:
                value, next_state, step_extras = self._get_value(step)
            if lengths is not None and next_state:
                next_state = tuple(torch.where(lengths > t, new, old)
                                   for new, old in zip(next_state, state))
            state = next_state
            values.append(value)
            extras.append(step_extras)
        joined = {key: torch.cat([e[key] for e in extras]) for key in extras[0]
                  if isinstance(extras[0][key], torch.Tensor) and extras[0][key].dim()}
        return torch.cat(values), state, joined

    @property
    def _preprocess_obs(self) -> Callable[[Any], Any]:
        # Syllabus's name for preprocess_obs (its template's _prepare_state calls it): one
        # attribute behind both names, so that setting either changes what queries use.
        return NO_PREPROCESSING if self.preprocess_obs is None else self.preprocess_obs

    @_preprocess_obs.setter
    def _preprocess_obs(self, function: Callable[[Any], Any] | None) -> None:
        if function is not None and not callable(function):
            raise bad_argument("_preprocess_obs", "a callable or None", function)
        self.preprocess_obs = None if function is NO_PREPROCESSING else function

    def _prepare_state(self, state: Any) -> TensorTree:
        """Observations to tensors on ``device`` (after the user's ``preprocess_obs``)."""
        return self._batched_observations(state, self.device, self.obs_dtype)

    def _batched_observations(self, state: Any, device: torch.device,
                              dtype: torch.dtype | None) -> TensorTree:
        """``state`` after ``preprocess_obs``, as a batch of tensors on ``device`` checked
        against ``observation_space``: for adapters whose preparation starts elsewhere."""
        if self.preprocess_obs is not None:
            state = self.preprocess_obs(state)
        obs = as_batch(state, device, dtype, "state")
        if self.observation_space is not None:
            check_against_space(obs, self.observation_space, "state")
        return obs

    def _prepare_lstm(self, lstm_state: Any, done: Any, batch_size: int | None = None
                      ) -> tuple[LSTMState | None, torch.Tensor | None]:
        """Validate and place the recurrent state and done flags (``[B]`` float32).

        ``batch_size``: the observations'; omitted in Syllabus's two-argument call from an
        override (``super()._prepare_lstm(lstm_state, done)``): the running query's.
        """
        if batch_size is None:
            batch_size = self._batch_size
        if not self.is_lstm:
            if lstm_state is not None:
                raise bad_argument("lstm_state", "None for a feedforward agent (is_lstm=False)",
                                   lstm_state)
            return None, None
        if lstm_state is None:
            raise ValueError(
                "lstm_state: a recurrent agent (is_lstm=True) needs its recurrent state; "
                f"start from evaluator.initial_lstm_state({batch_size})"
            )
        return self._check_lstm(lstm_state, batch_size), self._check_done(done, batch_size)

    def _check_lstm(self, lstm_state: Any, batch_size: int) -> LSTMState:
        """The recurrent state on ``device``, checked against ``initial_lstm_state``'s layout:
        as many tensors, their shapes with B = ``batch_size``, cast to their dtypes."""
        layout = self._lstm_layout()
        if not isinstance(lstm_state, (tuple, list)) or (layout and len(lstm_state) != len(layout)):
            count = f"{len(layout)} tensors" if layout else "tensors"
            raise bad_argument("lstm_state", f"a tuple of {count} as initial_lstm_state(B) "
                               "gives, such as (h, c)", lstm_state)
        dim = self.lstm_batch_dim
        prepared = []
        for i, tensor in enumerate(lstm_state):
            shape, dtype = layout[i] if layout else (None, None)
            tensor = as_batch(tensor, self.device, dtype, f"lstm_state[{i}]")
            if shape is not None:
                expected = (*shape[:dim], batch_size, *shape[dim:])
                ok = tuple(tensor.shape) == expected
            else:
                expected = f"batch size {batch_size} in dimension {dim}"
                ok = tensor.dim() > dim and tensor.shape[dim] == batch_size
            if not ok:
                raise ValueError(f"lstm_state[{i}]: expected shape {expected} (batch dimension "
                                 f"{dim}), got {describe(tensor)}")
            prepared.append(tensor)
        return tuple(prepared)

    def _lstm_layout(self) -> list[tuple[tuple[int, ...], torch.dtype]] | None:
        """Shape without the batch dimension and dtype of each recurrent-state tensor, from
        ``initial_lstm_state`` (``None`` when the adapter does not give it)."""
        if self._lstm_layout_cache is None:
            try:
                initial = self.initial_lstm_state(1)
            except NotImplementedError:
                initial = None
            dim = self.lstm_batch_dim
            self._lstm_layout_cache = [] if initial is None else [
                ((*t.shape[:dim], *t.shape[dim + 1:]), t.dtype) for t in initial]
        return self._lstm_layout_cache or None

    def _check_done(self, done: Any, batch_size: int) -> torch.Tensor:
        rows = self._steps * batch_size  # a flag per env and step (T * B for sequences)
        if done is None:
            return torch.zeros(rows, device=self.device)
        if self._steps == 1:  # get_value_sequence checked its flags as they came, [T, B]
            check_done_flags(done, "done")  # 0/1 only, as there (issue #19)
        done = as_batch(done, self.device, torch.float32, "done")
        if tuple(done.shape) != (rows,):
            raise bad_argument("done", f"a flag per env of shape [{rows}]", done)
        return done

    def _set_eval_mode(self) -> Any:
        """Put the query agent in eval mode; return what :meth:`_set_train_mode` restores."""
        agent = self.agent
        if agent is None:
            return None
        if self._live_source is None:
            # The private copy is made in eval mode; only re-enter it if someone changed that.
            if agent.training:
                agent.eval()
            return None
        modes = [m.training for m in agent.modules()]
        agent.eval()
        return modes

    def _set_train_mode(self, previous: Any = FROM_QUERY) -> None:
        """Restore the modes saved by :meth:`_set_eval_mode`: never force train mode.

        Without ``previous`` (Syllabus's ``super()._set_train_mode()`` from an override), the
        modes the running query saved.
        """
        if previous is FROM_QUERY:
            previous = self._previous_mode
        if previous is not None:
            for module, mode in zip(self.agent.modules(), previous):
                module.training = mode

    # --- weights -----------------------------------------------------------------------------

    def load_weights(self, weights: nn.Module | Mapping[str, torch.Tensor],
                     version: int | None = None) -> None:
        """Hand the evaluator new weights explicitly (a module or a state dict).

        Args:
            weights: a module of the agent's class or its ``state_dict()`` (compiled or not:
                the ``_orig_mod.`` that ``torch.compile`` adds to keys is taken out).
            version: reported as ``extras["weights_version"]``, an integer >= 0; default:
                previous + 1.
        """
        if not self.copy_agent or self.agent is None:
            raise RuntimeError("load_weights needs copy_agent=True and an agent with weights")
        if version is not None:  # checked before the copy: a bad version loads nothing
            version = check_count("version", version, 0)
        if isinstance(weights, nn.Module):
            # Read with optimizer steps held off: it may be a module another thread trains.
            weights = snapshot_state_dict(weights, self.device, self.sync_timeout)
        elif isinstance(weights, Mapping):
            weights = without_compile_prefix(weights)  # saved from a compiled module
        else:
            raise bad_argument("weights", "an nn.Module or a state dict", weights)
        with self._lock:
            try:
                self.agent.load_state_dict(weights)
            except RuntimeError as error:
                raise ValueError(f"weights: do not fit {type(self.agent).__name__}: {error}"
                                 ) from None
            if self._source is not None:
                self._synced_version = self._source.version()
            self.weights_version = self.weights_version + 1 if version is None else version

    def state_dict(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """A consistent snapshot of the training agent's weights (one optimizer step)."""
        if self.training_agent is None:
            return {}
        return snapshot_state_dict(self.training_agent, device, self.sync_timeout)

    def detached(self, device: str | torch.device | None = None) -> Evaluator:
        """An independent evaluator on its own copy of the weights, never synced automatically.

        Evaluation runs use it: only :meth:`load_weights` changes its weights, so a rollout
        sees the weights it was started with while training goes on. The clone is built by
        this class's constructor (its own lock, no weight source, a copy of the weights that
        queries use now, with their version); attributes an adapter set in its own constructor
        are carried over as they are, and :meth:`_detach_into` lets an adapter give the clone
        its own copy of one that must not be shared (a random generator).
        """
        clone = object.__new__(type(self))
        Evaluator.__init__(
            clone, None, device if device is not None else self.device, self.preprocess_obs,
            is_lstm=self.is_lstm, deterministic=self.deterministic,
            observation_space=self.observation_space, sync_timeout=self.sync_timeout)
        clone.training_agent = self.training_agent  # what the clone's weights come from
        clone.compile_options = self.compile_options  # its own hooks compile on its own copy
        if self.agent is not None:
            # The weights a query would use now, copied with the version that names them.
            if self._live_source is not None:
                with self._live_source.reading(self.sync_timeout):
                    clone._adopt_copy(clone._make_copy(self.agent))
                    clone.weights_version = self._live_source.steps
            else:
                with self._lock:
                    if self._source is not None:
                        self._refresh_blocking()
                    clone._adopt_copy(clone._make_copy(self.agent))
                    clone.weights_version = self.weights_version
        for name, value in vars(self).items():  # the adapter's own settings
            clone.__dict__.setdefault(name, value)
        self._detach_into(clone)
        return clone

    def _detach_into(self, clone: Evaluator) -> None:
        """Hook: finish a :meth:`detached` clone (the adapter's attributes are shared)."""

    def _copy_memo(self, agent: nn.Module) -> dict[int, Any]:
        """Hook: a ``copy.deepcopy`` memo, ``{id(obj): its copy}``, for objects inside the agent
        that the adapter copies itself (state that deepcopy refuses, such as tensors of an
        autograd graph kept from the last forward pass). Called before the adapter's own
        attributes are set (by :meth:`detached` too): use only what the base class sets."""
        return {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickling, as the process and Ray backends send an evaluator to their workers: a
        :meth:`detached` evaluator travels with its copy of the weights and its settings; the
        training agent, the lock and compiled hooks stay behind (the copy compiles its own).

        Raises:
            TypeError: the evaluator reads a training agent in this process (``auto_sync`` or
                ``copy_agent=False``), which cannot travel: pickle ``evaluator.detached()``.
        """
        if self._source is not None or self._live_source is not None:
            raise TypeError(f"{type(self).__name__}: an evaluator that reads its training agent "
                            "does not pickle; pickle evaluator.detached(), whose own copy of "
                            "the weights travels")
        state = {name: value for name, value in vars(self).items()
                 if name != "_lock" and name not in _QUERY_HOOKS}
        state["training_agent"] = None  # stays in the training process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if self.compile_options is not None and self.agent is not None:
            self._compile_hooks()

    def initial_lstm_state(self, batch_size: int) -> LSTMState | None:
        """The recurrent state at the start of an episode (``None`` for feedforward agents)."""
        if not self.is_lstm:
            return None
        raise NotImplementedError(f"{type(self).__name__} does not implement initial_lstm_state")

    def _refresh(self) -> bool:
        """Copy the training weights into the private copy (called when they changed)."""
        copied = self._source.try_copy_into(self._copy_tensors)
        if copied is None:  # a step is running: keep the last consistent copy
            return False
        self._synced_version, self.weights_version = copied
        return True

    def _refresh_blocking(self) -> None:
        """Copy the training weights if they changed, waiting for a running step to end."""
        while self._source.version() != self._synced_version:
            with self._source.reading(self.sync_timeout):
                pass  # wait for a running step (if any) to end, then try to copy
            if self._refresh():
                return  # a copy of one step; steps after it are the next query's business

    def _adopt_copy(self, agent: nn.Module) -> None:
        """Query ``agent``, a private copy that only this evaluator writes."""
        self.agent = agent
        self._copy_tensors = [*agent.parameters(), *agent.buffers()]
        if self.compile_options is not None:
            self._compile_hooks()

    def _compile_hooks(self) -> None:
        """``compile=True``: this evaluator's query hooks, compiled, as instance attributes.

        The templates look hooks up on the instance at every query anyway, so evaluators that
        do not compile pay nothing. The compiled code reads the copy's tensors as inputs (torch
        guards on their shapes and dtypes, not their values): refreshes copy into them in
        place and need no recompilation.
        """
        for name in _QUERY_HOOKS:
            hook = getattr(type(self), name).__get__(self)  # the method, never a compiled one
            setattr(self, name, torch.compile(hook, **self.compile_options))

    def _make_copy(self, agent: nn.Module) -> nn.Module:
        try:
            duplicate = copy.deepcopy(agent, self._copy_memo(agent))
        except Exception as error:
            raise TypeError(
                f"copy_agent=True deep-copies the agent, which failed for "
                f"{type(agent).__name__}: {error!r}; make it deep-copyable or pass "
                "copy_agent=False"
            ) from error
        # Compiled submodules become the modules they wrap: the copy's keys and tensors are
        # then those of the plain agent, as weight snapshots give them.
        duplicate = without_compiled_submodules(duplicate)
        duplicate.to(self.device).eval()
        for parameter in duplicate.parameters():
            parameter.grad = None
            parameter.requires_grad_(False)
        return duplicate

    def _warn_inplace_once(self) -> None:
        if (self._warned_inplace or not self._mode_dependent
                or threading.current_thread() is threading.main_thread()):
            return
        self._warned_inplace = True
        warnings.warn(
            "copy_agent=False: queries from another thread switch the training agent to eval "
            "mode for their duration; if it has dropout or batch norm, training steps that run "
            "meanwhile see eval behaviour. Use copy_agent=True for queries from worker threads.",
            RuntimeWarning, stacklevel=4,
        )


def _steps_of(states: Any) -> int:
    """``T`` of a ``[T, B, ...]`` batch of sequences (a dict: its first entry's)."""
    first = next(iter(states.values())) if isinstance(states, Mapping) else states
    shape = getattr(first, "shape", None)
    if shape is None or len(shape) < 2:
        raise bad_argument("states", "sequences of shape [T, B, ...] (an array or tensor, or a "
                           "dict of them)", first)
    if shape[0] == 0:
        raise bad_argument("states", "sequences of at least one step, shape [T, B, ...] with "
                           "T >= 1", first)
    return int(shape[0])


def _time_major(value: Any, steps: int, name: str) -> Any:
    """``[T, B, ...]`` as ``[T * B, ...]`` (rows of step 0 first), dicts per entry."""
    if isinstance(value, Mapping):
        return {key: _time_major(item, steps, f"{name}[{key!r}]") for key, item in value.items()}
    shape = getattr(value, "shape", None)
    if shape is None:
        value = np.asarray(value)
        shape = value.shape
    if len(shape) < 2 or shape[0] != steps:
        raise bad_argument(name, f"sequences of {steps} steps, shape [{steps}, B, ...]", value)
    return value.reshape(steps * shape[1], *shape[2:])


def _lengths(lengths: Any, steps: int, batch_size: int) -> torch.Tensor:
    """``lengths`` as ``[B]`` int64, each in ``[1, T]`` (CPU: adapters index with it)."""
    expected = f"a length per env, integers in [1, {steps}], shape [{batch_size}]"
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu()
        integral = not (lengths.is_floating_point() or lengths.is_complex()
                        or lengths.dtype == torch.bool)
    else:
        lengths = np.asarray(lengths)
        integral = np.issubdtype(lengths.dtype, np.integer)
    if not integral:  # 2.5 steps would be truncated to 2 without a word
        raise bad_argument("lengths", expected, lengths)
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    if tuple(lengths.shape) != (batch_size,) or not bool(
            ((lengths >= 1) & (lengths <= steps)).all()):
        raise bad_argument("lengths", expected, lengths)
    return lengths


