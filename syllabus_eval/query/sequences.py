"""Sequences of steps in one query: ``[T, B, ...]`` inputs as ``[T * B, ...]`` rows, and the
default way to answer them, one step at a time, carrying the recurrent state.

Usage (what :meth:`~syllabus_eval.Evaluator.get_value_sequence` does)::

    steps = steps_of(states)                                # T
    rows = time_major(states, steps, "states")              # [T * B, ...], step 0's rows first
    lengths = check_lengths(lengths, steps, batch_size)     # [B] int64 in [1, T]
    values, state, extras = step_by_step(evaluator, inputs, policy=False)   # [T * B, 1]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from syllabus_eval.errors import bad_argument
from syllabus_eval.query.inputs import AgentInputs, take_rows
from syllabus_eval.query.protocols import LSTMState

if TYPE_CHECKING:  # the evaluator imports this module
    from syllabus_eval.query.evaluator import Evaluator


def steps_of(states: Any) -> int:
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


def time_major(value: Any, steps: int, name: str) -> Any:
    """``[T, B, ...]`` as ``[T * B, ...]`` (rows of step 0 first), dicts per entry."""
    if isinstance(value, Mapping):
        return {key: time_major(item, steps, f"{name}[{key!r}]") for key, item in value.items()}
    shape = getattr(value, "shape", None)
    if shape is None:
        value = np.asarray(value)
        shape = value.shape
    if len(shape) < 2 or shape[0] != steps:
        raise bad_argument(name, f"sequences of {steps} steps, shape [{steps}, B, ...]", value)
    return value.reshape(steps * shape[1], *shape[2:])


def check_lengths(lengths: Any, steps: int, batch_size: int) -> torch.Tensor:
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


def per_step(values: torch.Tensor, extras: dict, steps: int) -> tuple[torch.Tensor, dict]:
    """A sequence hook's ``[T * B, ...]`` answers as ``[T, B, ...]`` (values ``[T, B]``)."""
    extras = {key: value.reshape(steps, -1, *value.shape[1:])
              if isinstance(value, torch.Tensor) and value.dim() else value
              for key, value in extras.items()}
    return values.reshape(steps, -1), extras


def step_by_step(evaluator: Evaluator, inputs: AgentInputs, policy: bool = False
                 ) -> tuple[torch.Tensor, LSTMState | None, dict]:
    """Values ``[T * B, 1]`` of sequences from the evaluator's one-step hooks
    (``_get_value``, or ``_get_action_and_value`` with ``policy``), called once per step; an
    env's state is kept as it is past its length."""
    batch, state, values, extras = inputs.batch_size, inputs.lstm_state, [], []
    lengths = None  # [B] where each env's state may move on, shaped like a state tensor
    if inputs.lengths is not None and state:  # () : no recurrent state
        dim = evaluator.lstm_batch_dim
        lengths = inputs.lengths.to(state[0].device).view(
            *[-1 if d == dim else 1 for d in range(state[0].dim())])
    for t in range(inputs.steps):
        rows = slice(t * batch, (t + 1) * batch)
        step = AgentInputs(take_rows(inputs.obs, rows),
                           state, None if inputs.done is None else inputs.done[rows],
                           batch, inputs.deterministic)
        if policy:
            _, value, next_state, step_extras = evaluator._get_action_and_value(step)
        else:
            value, next_state, step_extras = evaluator._get_value(step)
        if lengths is not None and next_state:
            next_state = tuple(torch.where(lengths > t, new, old)
                               for new, old in zip(next_state, state))
        state = next_state
        values.append(value)
        extras.append(step_extras)
    joined = {key: torch.cat([e[key] for e in extras]) for key in extras[0]
              if isinstance(extras[0][key], torch.Tensor) and extras[0][key].dim()}
    return torch.cat(values), state, joined
