"""What the episode engine and the curricula need from an evaluator, as protocols.

Usage::

    from syllabus_eval import AgentQueries, RecurrentAgentQueries, is_recurrent

    class ConstantPolicy:                       # no base class needed: a test double
        def get_action(self, state, lstm_state=None, done=None, *, deterministic=None):
            return torch.zeros(len(state), dtype=torch.int64), {}
        def get_value(self, state, lstm_state=None, done=None):
            return torch.zeros(len(state), 1), {}
        def get_action_and_value(self, state, lstm_state=None, done=None, *,
                                 deterministic=None):
            return torch.zeros(len(state), dtype=torch.int64), torch.zeros(len(state), 1), {}

    isinstance(ConstantPolicy(), AgentQueries)   # True
    is_recurrent(ConstantPolicy())               # False: it has no is_lstm

Every :class:`~syllabus_eval.Evaluator` meets the first three protocols; adapters of agents
that read the previous action and reward (moolib) also meet :class:`PreviousStepQueries`.
Code that takes an evaluator is typed with the narrowest one it uses: curricula with
:class:`AgentQueries` (and :class:`RecurrentAgentQueries` for recurrent agents), the episode
loop the same (and :class:`PreviousStepQueries` where an agent reads its previous step), the
runner and its backends with :class:`WeightedAgentQueries` where they copy or load weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

LSTMState = tuple[torch.Tensor, ...]


@runtime_checkable
class AgentQueries(Protocol):
    """Actions and values of a batch of observations (what every curriculum needs)."""

    def get_action(self, state: Any, lstm_state: Any = None, done: Any = None,
                   *, deterministic: bool | None = None) -> tuple[torch.Tensor, dict]: ...

    def get_value(self, state: Any, lstm_state: Any = None, done: Any = None
                  ) -> tuple[torch.Tensor, dict]: ...

    def get_action_and_value(self, state: Any, lstm_state: Any = None, done: Any = None,
                             *, deterministic: bool | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor, dict]: ...


@runtime_checkable
class RecurrentAgentQueries(AgentQueries, Protocol):
    """Queries of an agent that may carry a recurrent state between calls.

    Attributes:
        is_lstm: queries need ``lstm_state`` (and take ``done``); ``extras["lstm_state"]`` is
            the next state.
        lstm_batch_dim: the batch dimension of each recurrent-state tensor (1 for
            ``[num_layers, B, hidden]``).
    """

    is_lstm: bool
    lstm_batch_dim: int

    def initial_lstm_state(self, batch_size: int) -> tuple[torch.Tensor, ...] | None:
        """The state at the start of an episode of ``batch_size`` envs."""
        ...


@runtime_checkable
class SequenceQueries(RecurrentAgentQueries, Protocol):
    """Recurrent queries that take whole sequences at once (every Evaluator does)."""

    def get_value_sequence(self, states: Any, lstm_state: Any = None, done: Any = None, *,
                           policy: bool = False) -> tuple[torch.Tensor, dict]:
        """Values ``[T, B]`` of ``[T, B, ...]`` sequences, the recurrent state carried
        through (``extras["lstm_state"]``: after the last step)."""
        ...


@runtime_checkable
class WeightedAgentQueries(AgentQueries, Protocol):
    """Queries of an agent with weights that evaluations snapshot, copy and load.

    Attributes:
        agent: the module queries run on (a private copy, or the training agent in place).
        training_agent: the module whose weights are evaluated when none are given.
        device: where queries run.
        weights_version: which weights answer queries now (optimizer steps, or the version
            given to :meth:`load_weights`).
    """

    agent: nn.Module | None
    training_agent: nn.Module | None
    device: torch.device
    weights_version: int

    def detached(self, device: str | torch.device | None = None) -> WeightedAgentQueries:
        """An independent copy whose weights change only through :meth:`load_weights`."""
        ...

    def load_weights(self, weights: nn.Module | Mapping[str, torch.Tensor],
                     version: int | None = None) -> None:
        """Use ``weights`` (a module or a state dict) for the next queries."""
        ...


@runtime_checkable
class PreviousStepQueries(AgentQueries, Protocol):
    """Queries of an agent that also reads each env's previous action and reward (moolib's
    ``Net``, TorchBeast's models): the episode loop hands them over at every step."""

    def with_previous_step(self, obs: Any, prev_action: Any, prev_reward: Any) -> Any:
        """The ``state`` to query with: ``obs`` ``[B, ...]`` with the action ``[B, ...]`` and
        reward ``[B]`` each env got at its previous step (zeros at an episode's start)."""
        ...


def is_recurrent(queries: AgentQueries, name: str = "evaluator") -> bool:
    """Whether ``queries`` carries a recurrent state: ``is_lstm`` is true (absent means
    feedforward). One that says ``is_lstm`` without the rest of
    :class:`RecurrentAgentQueries` gets a ``ValueError`` naming what it lacks."""
    if not getattr(queries, "is_lstm", False):
        return False
    if not isinstance(queries, RecurrentAgentQueries):
        missing = [member for member in ("lstm_batch_dim", "initial_lstm_state")
                   if not hasattr(queries, member)]
        raise ValueError(f"{name}: expected a recurrent evaluator (is_lstm=True) with "
                         "lstm_batch_dim and initial_lstm_state(batch_size) "
                         f"(RecurrentAgentQueries), got a {type(queries).__name__} without "
                         f"{' and '.join(missing)}")
    return True
