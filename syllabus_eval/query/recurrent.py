"""Checks of what recurrent queries pass besides observations: the recurrent state and the done
flags, against the layout the adapter's ``initial_lstm_state`` gives.

Usage (what :meth:`~syllabus_eval.Evaluator._prepare_lstm` does, through :class:`RecurrentInputs`,
the part of the evaluator that holds it)::

    layout = lstm_layout(evaluator.initial_lstm_state(1), batch_dim=1)  # [(shape, dtype), ...]
    state = check_lstm_state((h, c), layout, batch_size=8, batch_dim=1, device=device)
    done = check_done(done, batch_size=8, steps=1, device=device)       # [8] float32
"""

from __future__ import annotations

from typing import Any

import torch

from syllabus_eval.errors import bad_argument, describe
from syllabus_eval.query.inputs import as_batch, check_done_flags
from syllabus_eval.query.protocols import LSTMState

Layout = list[tuple[tuple[int, ...], torch.dtype]]


def lstm_layout(initial: LSTMState | None, batch_dim: int) -> Layout:
    """Shape without the batch dimension and dtype of each tensor of ``initial`` (an initial
    recurrent state; ``None``: ``[]``, nothing known)."""
    if initial is None:
        return []
    return [((*t.shape[:batch_dim], *t.shape[batch_dim + 1:]), t.dtype) for t in initial]


def missing_state_error(batch_size: int) -> ValueError:
    return ValueError("lstm_state: a recurrent agent (is_lstm=True) needs its recurrent state; "
                      f"start from evaluator.initial_lstm_state({batch_size})")


def check_lstm_state(lstm_state: Any, layout: Layout | None, batch_size: int, batch_dim: int,
                     device: torch.device) -> LSTMState:
    """The recurrent state on ``device``, checked against ``layout`` (``None``: unknown): as
    many tensors, their shapes with B = ``batch_size`` in ``batch_dim``, cast to their dtypes."""
    if lstm_state is None:
        raise missing_state_error(batch_size)
    if not isinstance(lstm_state, (tuple, list)) or (layout and len(lstm_state) != len(layout)):
        count = f"{len(layout)} tensors" if layout else "tensors"
        raise bad_argument("lstm_state", f"a tuple of {count} as initial_lstm_state(B) "
                           "gives, such as (h, c)", lstm_state)
    prepared = []
    for i, tensor in enumerate(lstm_state):
        shape, dtype = layout[i] if layout else (None, None)
        tensor = as_batch(tensor, device, dtype, f"lstm_state[{i}]")
        if shape is not None:
            expected = (*shape[:batch_dim], batch_size, *shape[batch_dim:])
            ok = tuple(tensor.shape) == expected
        else:
            expected = f"batch size {batch_size} in dimension {batch_dim}"
            ok = tensor.dim() > batch_dim and tensor.shape[batch_dim] == batch_size
        if not ok:
            raise ValueError(f"lstm_state[{i}]: expected shape {expected} (batch dimension "
                             f"{batch_dim}), got {describe(tensor)}")
        prepared.append(tensor)
    return tuple(prepared)


def check_done(done: Any, batch_size: int, steps: int, device: torch.device) -> torch.Tensor:
    """``done`` as a flag per env and step, ``[T * B]`` float32 on ``device`` (zeros when
    ``None``)."""
    rows = steps * batch_size
    if done is None:
        return torch.zeros(rows, device=device)
    if steps == 1:  # get_value_sequence checked its flags as they came, [T, B]
        check_done_flags(done, "done")  # 0/1 only, as there (issue #19)
    done = as_batch(done, device, torch.float32, "done")
    if tuple(done.shape) != (rows,):
        raise bad_argument("done", f"a flag per env of shape [{rows}]", done)
    return done


class RecurrentInputs:
    """The recurrent-state step of the query template (step 3), a part of
    :class:`~syllabus_eval.Evaluator`: ``_prepare_lstm`` and the helpers adapters may call from
    their own (``_prepare_recurrent_state``, ``_prepare_done``). It reads the evaluator's
    ``is_lstm``, ``lstm_batch_dim``, ``device`` and the running query's ``_steps`` and
    ``_batch_size``."""

    def initial_lstm_state(self, batch_size: int) -> LSTMState | None:
        """The recurrent state at the start of an episode (``None`` for feedforward agents)."""
        if not self.is_lstm:
            return None
        raise NotImplementedError(f"{type(self).__name__} does not implement initial_lstm_state")

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
        return (self._prepare_recurrent_state(lstm_state, batch_size),
                self._prepare_done(done, batch_size))

    def _prepare_recurrent_state(self, lstm_state: Any, batch_size: int) -> LSTMState:
        """The recurrent state on ``device``, checked against ``initial_lstm_state``'s layout:
        as many tensors, their shapes with B = ``batch_size``, cast to their dtypes."""
        return check_lstm_state(lstm_state, self._lstm_layout(), batch_size,
                                self.lstm_batch_dim, self.device)

    def _prepare_done(self, done: Any, batch_size: int) -> torch.Tensor:
        """Done flags, one per env and step: ``[T * B]`` float32 on ``device`` (zeros for
        ``None``)."""
        return check_done(done, batch_size, self._steps, self.device)

    def _lstm_layout(self) -> Layout | None:
        """Shape without the batch dimension and dtype of each recurrent-state tensor, from
        ``initial_lstm_state`` (``None`` when the adapter does not give it)."""
        if self._lstm_layout_cache is None:
            try:
                initial = self.initial_lstm_state(1)
            except NotImplementedError:
                initial = None
            self._lstm_layout_cache = lstm_layout(initial, self.lstm_batch_dim)
        return self._lstm_layout_cache or None
