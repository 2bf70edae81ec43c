"""What one evaluation runs on, taken when it is triggered: weights, version, step, normalisation.

Usage::

    from syllabus_eval.evaluation.snapshot import take_snapshot

    snapshot = take_snapshot(evaluator, agent, device="cpu", step=40_000, obs_norm=envs)
    snapshot.weights        # a private state dict: later training does not change it
    snapshot.version        # the weights' version (optimizer steps), None for a state dict
    snapshot.step           # the training step it was triggered at (result.step)
    snapshot.obs_norm       # the training envs' observation statistics, read with them

The runner has its backend take one per trigger and hands it back to it, which loads it into the
evaluation agent (``load_weights(snapshot.weights, snapshot.version)``) and its statistics into
the evaluation envs (:mod:`syllabus_eval.evaluation.normalization`). Given ``shared=`` (the process
backend's :class:`~syllabus_eval.evaluation.backends.shared.SharedWeights`), the weights are copied
straight into shared memory instead, when it is free: ``snapshot.shared`` is then the ticket
workers read them by, and ``snapshot.weights`` a view of them until the evaluation ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from syllabus_eval.errors import bad_argument
from syllabus_eval.evaluation.normalization import ObsNormStats, read_obs_norm
from syllabus_eval.query.compiled import unwrap_compiled, without_compile_prefix
from syllabus_eval.query.protocols import AgentQueries, WeightedAgentQueries
from syllabus_eval.query.weights import versioned_snapshot


class WeightBuffer(Protocol):
    """Where a backend wants weights copied at trigger time (the process backend's
    :class:`~syllabus_eval.evaluation.backends.shared.SharedWeights`)."""

    def write(self, weights: nn.Module | Mapping[str, Any]
              ) -> tuple[Any, Mapping[str, torch.Tensor], int | None] | None:
        """Copy ``weights`` in: ``(ticket, a view of them, version)``, or ``None`` when it
        cannot (held by an evaluation, or weights that do not fit it)."""


@dataclass(frozen=True)
class Snapshot:
    """The weights one evaluation runs on, read once, at trigger time.

    Attributes:
        weights: a private state dict on the evaluation device; ``None``: the evaluation
            agent's own weights (an evaluator without weights, or a factory's in a worker).
        version: the version of those weights (the training agent's optimizer steps, as
            ``weights_version`` counts them); ``None`` when unknown (a state dict).
        step: the training step the evaluation was triggered at (``None`` if not given).
        obs_norm: the observation statistics to evaluate with, frozen (``None``: none).
        shared: where worker processes read the weights in shared memory (a
            :class:`~syllabus_eval.evaluation.backends.shared.Ticket`); ``None``: they travel as
            ``weights``. With it, ``weights`` is a view of that memory, for this process.
    """

    weights: Mapping[str, torch.Tensor] | None = None
    version: int | None = None
    step: int | None = None
    obs_norm: ObsNormStats | None = None
    shared: Any = None


def take_snapshot(evaluator: AgentQueries | None,
                  weights: nn.Module | Mapping[str, torch.Tensor] | None,
                  device: str | torch.device, step: int | None = None,
                  obs_norm: Any = None, *, shared: WeightBuffer | None = None) -> Snapshot:
    """The :class:`Snapshot` of ``weights`` (``None``: the evaluator's training agent, now)
    and of ``obs_norm`` (any source :func:`.normalization.read_obs_norm` takes).

    ``weights`` may be a compiled module (``torch.compile``) or a state dict saved from one:
    keys are compared, and sent, without the ``_orig_mod.`` that compiling adds. Without an
    ``evaluator`` (workers build theirs), ``None`` means the workers' own weights, and given
    weights are checked where they are loaded. With ``shared``, the weights are copied into
    it when it is free and they fit it (one copy, no private state dict); else on ``device``.

    Raises:
        ValueError: ``weights`` do not have the keys and shapes of the evaluator's agent, or
            the evaluator has no weights to load; ``obs_norm`` holds no statistics.
    """
    stats = None if obs_norm is None else read_obs_norm(obs_norm)
    weighted = isinstance(evaluator, WeightedAgentQueries)
    if weights is None:
        weights = evaluator.training_agent if weighted else None
        if weights is None:
            return Snapshot(step=step, obs_norm=stats)
    elif not isinstance(weights, (nn.Module, Mapping)):
        raise bad_argument("weights", "an nn.Module, a state dict or None", weights)
    elif evaluator is not None:
        _check_shapes(evaluator, weights)
    written = None if shared is None else shared.write(weights)
    if written is not None:
        ticket, view, version = written
        return Snapshot(view, version, step, stats, shared=ticket)
    return Snapshot(*versioned_snapshot(weights, device), step, stats)


def _check_shapes(evaluator: AgentQueries,
                  weights: nn.Module | Mapping[str, torch.Tensor]) -> None:
    """Given weights must have the keys and shapes of the evaluator's agent (read without a
    copy: shapes do not change during an optimizer step)."""
    agent = evaluator.agent if isinstance(evaluator, WeightedAgentQueries) else None
    if not isinstance(agent, nn.Module):
        raise bad_argument("weights", f"None: {type(evaluator).__name__} has no weights to "
                           "load", weights)
    if isinstance(weights, nn.Module) and unwrap_compiled(weights) is evaluator.training_agent:
        return  # the agent the evaluator copied (the common trigger): it fits by construction
    state = without_compile_prefix(weights.state_dict() if isinstance(weights, nn.Module)
                                   else weights)
    expected = {k: tuple(v.shape) for k, v in without_compile_prefix(agent.state_dict()).items()}
    got = {k: tuple(torch.as_tensor(v).shape) for k, v in state.items()}
    if got != expected:
        raise ValueError(f"weights: expected the keys and shapes of {type(agent).__name__}'s "
                         f"state dict, got weights that differ: {_differences(expected, got)}")


def _differences(expected: dict[str, tuple], got: dict[str, tuple]) -> str:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    parts = [f"missing {missing}"] * bool(missing) + [f"unexpected {unexpected}"] * bool(
        unexpected) + [f"{k}: {expected[k]} vs {got[k]}" for k in shapes]
    return "; ".join(parts)
