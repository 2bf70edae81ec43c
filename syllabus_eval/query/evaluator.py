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

The template's parts live beside it, one job to a module: :mod:`~syllabus_eval.query.hook_forms`
(Syllabus's hook forms), :mod:`~syllabus_eval.query.recurrent` (recurrent-state and done checks),
:mod:`~syllabus_eval.query.sequences` (sequence queries), :mod:`~syllabus_eval.query.private_copy`
(the agent copy), :mod:`~syllabus_eval.query.cloning` (what clones share),
:mod:`~syllabus_eval.query.compiled` (``torch.compile``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval.errors import bad_argument, check_flag, check_number, describe
from syllabus_eval.query.cloning import Clone, collect_rules
from syllabus_eval.query.compiled import QUERY_HOOKS, compile_options, unwrap_compiled
from syllabus_eval.query.devices import QueryMode, as_device, device_of
from syllabus_eval.query.hook_forms import (
    FROM_QUERY,
    HOOK_FORMS,
    HookForm,
    PreprocessAlias,
    hook_form,
)
from syllabus_eval.query.inputs import (
    AgentInputs,
    TensorTree,
    as_batch,
    batch_size_of,
    check_against_space,
    check_done_flags,
    obs_shape_error,
)
from syllabus_eval.query.private_copy import PrivateCopy, has_mode_dependent_layers, warn_in_place
from syllabus_eval.query.protocols import AgentQueries, LSTMState
from syllabus_eval.query.recurrent import RecurrentInputs
from syllabus_eval.query.sequences import (
    check_lengths,
    per_step,
    step_by_step,
    steps_of,
    time_major,
)
from syllabus_eval.query.weights import WeightSource, weight_source

__all__ = ["AgentInputs", "AgentQueries", "Clone", "Evaluator", "LSTMState"]

_TEMPLATES = tuple(hook[1:] for hook in QUERY_HOOKS)  # the public side of each query hook


class Evaluator(RecurrentInputs, PrivateCopy):
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

    Hooks for adapters:
        What an adapter overrides (and may call through ``super()``):

        - ``_get_action(inputs) -> (action, lstm_state, extras)``
        - ``_get_value(inputs) -> (value, lstm_state, extras)``
        - ``_get_action_and_value(inputs) -> (action, value, lstm_state, extras)``
          (default: the two above)
        - ``_get_value_sequence(inputs, policy=False) -> (values, lstm_state, extras)``
          (default: ``_get_value`` once per step)
        - ``_prepare_state(state)``, ``_prepare_lstm(lstm_state, done, batch_size)``,
          ``_set_eval_mode()``, ``_set_train_mode(previous)``: the template's steps 2 to 6
        - ``_copy_memo(agent)``: objects inside the agent that the adapter copies itself

        What an adapter may call or read besides, and nothing else of the base class's
        underscore names (a test reads the adapters for it):

        - ``_batched_observations(state, device, dtype)``: ``preprocess_obs``, then a batch of
          tensors checked against ``observation_space`` (for a ``_prepare_state`` of its own)
        - ``_prepare_recurrent_state(lstm_state, batch_size)``: the recurrent state checked
          against ``initial_lstm_state``'s layout, on ``device``
        - ``_prepare_done(done, batch_size)``: done flags, ``[T * B]`` float32 (zeros for
          ``None``)
        - ``_steps``: the running query's ``T`` while observations and recurrent state are
          prepared (1, except in ``get_value_sequence``)
        - ``_preprocess_obs``: Syllabus's name of ``preprocess_obs``

    Clones:
        :meth:`detached` clones and pickled evaluators take each instance attribute as its
        class declares in ``clone_rules``, ``{name: Clone rule}`` (merged along the bases;
        this class declares its own): ``"share"`` (the same object: read-only settings),
        ``"copy"`` (a deep copy: state a clone changes on its own), ``"fresh"`` (neither: the
        class attribute of that name, e.g. a cache's ``None``) or ``"local"`` (shared in this
        process, not pickled). An attribute declared nowhere is refused there, naming it,
        unless its value is immutable (see :mod:`~syllabus_eval.query.cloning`).
    """

    obs_dtype: torch.dtype | None = torch.float32
    lstm_batch_dim: int = 1  # the batch dimension of each recurrent-state tensor
    recurrent: bool = True  # whether the adapter takes recurrent agents (is_lstm=True)
    # What a clone takes of each attribute this class sets (see "Clones" above). The settings
    # are shared (a clone sets device and copy_agent anew); the copy of the agent and its
    # version are made for it under the lock; the rest is the clone's own, built afresh.
    clone_rules: ClassVar[Mapping[str, Clone | str]] = {
        **dict.fromkeys(("preprocess_obs", "is_lstm", "deterministic", "observation_space",
                         "sync_timeout", "compile_options", "device", "copy_agent"),
                        Clone.SHARE),
        "training_agent": Clone.LOCAL,  # what the weights come from: stays in its process
        "agent": Clone.COPY, "weights_version": Clone.COPY,
        **dict.fromkeys(("_lock", "_query_mode", "_source", "_live_source", "_synced_version",
                         "_warned_inplace", "_mode_dependent", "_lstm_layout_cache",
                         "_batch_size", "_previous_mode", "_steps", "_copy_tensors",
                         *QUERY_HOOKS), Clone.FRESH),
    }
    _clone_rules: ClassVar[dict[str, Clone]] = dict(clone_rules)  # merged, set per class
    # The form each two-form hook is written in (see HOOK_FORMS), set per class.
    _lstm_gets_batch_size: bool = True
    _train_mode_gets_previous: bool = True
    _ported_prepare_state: bool = False  # a _prepare_state written outside the project
    _preprocess_obs = PreprocessAlias()  # Syllabus's name of preprocess_obs

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
        if hasattr(cls, "_detach_into"):  # the fix-up hook clone_rules replaced: say so
            raise TypeError(f"{cls.__name__}._detach_into: clones no longer call it; declare "
                            "what a clone shares and copies in clone_rules (see Evaluator)")
        forms = {name: hook_form(cls, name) for name in HOOK_FORMS}
        cls._lstm_gets_batch_size = forms["_prepare_lstm"] is HookForm.OURS
        cls._train_mode_gets_previous = forms["_set_train_mode"] is HookForm.OURS
        cls._ported_prepare_state = not getattr(cls._prepare_state, "__module__",
                                                "").startswith("syllabus_eval.")
        cls._clone_rules = collect_rules(cls, Evaluator.clone_rules)

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
        self.agent: nn.Module | None = None  # what queries run on
        self._start_queries()
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
            self._mode_dependent = has_mode_dependent_layers(agent)

    def _start_queries(self) -> None:
        """The base class's own query state, as a new evaluator, a clone and an unpickled one
        start it: a lock of its own, no weight source, empty caches; with a private copy, the
        tensors refreshes write into (and with ``compile``, the compiled hooks)."""
        self._lock = threading.Lock()  # one query at a time on the query agent
        self._query_mode = QueryMode(self.device)
        self._source: WeightSource | None = None  # auto-sync source of the private copy
        self._live_source: WeightSource | None = None  # copy_agent=False: guards the live agent
        self._synced_version = -1
        self._warned_inplace = False
        self._mode_dependent = False  # in place: whether eval mode changes what it computes
        self._lstm_layout_cache: list | None = None  # filled by the first recurrent query
        # What the running query hands Syllabus-style hooks' super() calls (see the class).
        self._batch_size: int | None = None
        self._previous_mode: Any = None
        self._steps = 1  # T of the running query (sequences: done has T * B flags)
        self._copy_tensors: list[torch.Tensor] = []  # the private copy's, in source order
        if self.copy_agent and self.agent is not None:
            self._adopt_copy(self.agent)

    # --- the templates -----------------------------------------------------------------------

    def get_action(self, state: Any, lstm_state: Any = None, done: Any = None,
                   *, deterministic: bool | None = None) -> tuple[torch.Tensor, dict]:
        """Actions for a batch of observations: ``(action [B, ...], extras)``."""
        action, _, extras = self._query(self._get_action, state, lstm_state, done, deterministic)
        return action, extras

    def get_value(self, state: Any, lstm_state: Any = None, done: Any = None
                  ) -> tuple[torch.Tensor, dict]:
        """Value estimates for a batch of observations: ``(value [B, 1], extras)``."""
        value, _, extras = self._query(self._get_value, state, lstm_state, done, None)
        return value, extras

    def get_action_and_value(self, state: Any, lstm_state: Any = None, done: Any = None,
                             *, deterministic: bool | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Actions and values in one pass: ``(action, value [B, 1], extras)``."""
        action, value, _, extras = self._query(self._get_action_and_value, state, lstm_state,
                                               done, deterministic)
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
        steps = steps_of(states)
        flat_done = None if done is None else time_major(check_done_flags(done, "done"), steps,
                                                         "done")
        values, _, extras = self._query(
            self._get_value_sequence, time_major(states, steps, "states"), lstm_state,
            flat_done, None, steps=steps, lengths=lengths, arg="states", policy=policy)
        return per_step(values, extras, steps)  # [T, B], [T, B, ...]

    # --- one query ---------------------------------------------------------------------------

    def _query(self, hook: Callable[..., Any], state: Any, lstm_state: Any, done: Any,
               deterministic: bool | None, steps: int = 1, lengths: Any = None,
               arg: str = "state", **hook_options: Any) -> tuple:
        """The hook's answer, its extras (last) holding the next ``lstm_state`` and the
        ``weights_version`` that gave it (read under the lock: another thread may refresh the
        copy as soon as it is released). ``arg``: the name of ``state`` in the public method,
        for errors."""
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
                if self._lstm_gets_batch_size:  # 3., in the form the class writes it in
                    lstm_state, done = self._prepare_lstm(lstm_state, done, batch_size)
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
                lengths = check_lengths(lengths, steps, batch_size)
            answer = self._answer(hook, AgentInputs(obs, lstm_state, done, batch_size,
                                                    deterministic, steps, lengths), arg,
                                  hook_options)
            shape = getattr(answer[0], "shape", None)  # a tensor (or array) of [B, ...]
            if shape is not None and (not shape or shape[0] != rows):
                raise ValueError(
                    f"{arg}: read as a batch of {rows} observations, but the agent "
                    f"answered with {describe(answer[0])}; a single observation needs a batch "
                    "dimension (obs[None])")
            extras = answer[-1]
            extras["lstm_state"] = answer[-2]
            extras["weights_version"] = self.weights_version
            return answer

    def _answer(self, hook: Callable[..., Any], inputs: AgentInputs, arg: str,
                hook_options: dict[str, Any]) -> Any:
        """Steps 4 to 6 of a query: the hook's answer in eval mode, the modes restored after;
        in place, with optimizer steps of the training agent held off meanwhile."""
        live = self._live_source  # copy_agent=False: optimizer steps wait for the query
        if live is not None:
            self._warn_inplace_once()
            live.begin_read(self.sync_timeout)
            self.weights_version = live.steps
        try:
            previous = self._set_eval_mode()  # 4.
            try:
                return hook(inputs, **hook_options)  # 5.
            except RuntimeError as error:
                # torch's "mat1 and mat2 shapes cannot be multiplied", frames deep: name
                # the observations when they do not fit the agent (free until it fails).
                wrong = (None if isinstance(error, NotImplementedError)  # a missing hook
                         else obs_shape_error(inputs.obs, self.agent, arg, inputs.steps, error))
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
        return step_by_step(self, inputs, policy)

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

    def _warn_inplace_once(self) -> None:
        if (self._warned_inplace or not self._mode_dependent
                or threading.current_thread() is threading.main_thread()):
            return
        self._warned_inplace = True
        warn_in_place(stacklevel=5)  # the caller of the public template

