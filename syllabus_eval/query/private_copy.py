"""The private copy of the agent that queries run on, and its lifecycle: made, refreshed from
the training agent, loaded with other weights, cloned, pickled.

Usage (what :class:`~syllabus_eval.Evaluator` does with ``copy_agent=True``, through
:class:`PrivateCopy`, the part of the evaluator that holds it)::

    copy = make_copy(training_agent, device, memo={})   # eval mode, no grads, on device
    tensors = copy_tensors(copy)                          # what weight refreshes write into
    evaluator.load_weights(state_dict, version=7)         # explicit weights
    clone = evaluator.detached("cpu")                     # a copy of its own, never synced

The copy is refreshed in place from the training agent's weight source (tear-free: see
:mod:`syllabus_eval.query.weights`); evaluations take a :meth:`~PrivateCopy.detached` clone,
which makes a copy of its own from the weights queries use at that moment, and takes the
evaluator's other attributes as their classes declare (:mod:`syllabus_eval.query.cloning`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from syllabus_eval.errors import bad_argument, check_count
from syllabus_eval.query.cloning import cloned_state, pickled_state
from syllabus_eval.query.compiled import (
    QUERY_HOOKS,
    compile_hooks,
    without_compile_prefix,
    without_compiled_submodules,
)
from syllabus_eval.query.devices import as_device
from syllabus_eval.query.weights import snapshot_state_dict

# Layers whose behaviour depends on train/eval mode.
MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)


def make_copy(agent: nn.Module, device: torch.device, memo: dict[int, Any]) -> nn.Module:
    """A deep copy of ``agent`` on ``device``, in eval mode, its parameters without grads.

    Args:
        memo: a ``copy.deepcopy`` memo, ``{id(obj): its copy}``, for objects inside the agent
            that the adapter copies itself (its ``_copy_memo`` hook).
    """
    try:
        duplicate = copy.deepcopy(agent, memo)
    except Exception as error:
        raise TypeError(
            f"copy_agent=True deep-copies the agent, which failed for "
            f"{type(agent).__name__}: {error!r}; make it deep-copyable or pass "
            "copy_agent=False"
        ) from error
    # Compiled submodules become the modules they wrap: the copy's keys and tensors are
    # then those of the plain agent, as weight snapshots give them.
    duplicate = without_compiled_submodules(duplicate)
    duplicate.to(device).eval()
    for parameter in duplicate.parameters():
        parameter.grad = None
        parameter.requires_grad_(False)
    return duplicate


def copy_tensors(agent: nn.Module) -> list[torch.Tensor]:
    """The copy's tensors in the order weight sources list the training agent's."""
    return [*agent.parameters(), *agent.buffers()]


def has_mode_dependent_layers(agent: nn.Module) -> bool:
    """Whether eval mode changes what ``agent`` computes (dropout, batch norm)."""
    return any(isinstance(module, MODE_DEPENDENT) for module in agent.modules())


def warn_in_place(stacklevel: int) -> None:
    """The warning for queries of the training agent itself from another thread."""
    warnings.warn(
        "copy_agent=False: queries from another thread switch the training agent to eval "
        "mode for their duration; if it has dropout or batch norm, training steps that run "
        "meanwhile see eval behaviour. Use copy_agent=True for queries from worker threads.",
        RuntimeWarning, stacklevel=stacklevel + 1,
    )


class PrivateCopy:
    """The private copy's lifecycle, a part of :class:`~syllabus_eval.Evaluator`: refreshes
    from the training agent, explicit weights, :meth:`detached` clones and pickling. It reads
    and writes the evaluator's ``agent``, ``weights_version``, its lock and weight sources
    (set by ``Evaluator._start_queries``)."""

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

    def detached(self, device: str | torch.device | None = None) -> Any:
        """An independent evaluator on its own copy of the weights, never synced automatically.

        Evaluation runs use it: only :meth:`load_weights` changes its weights, so a rollout
        sees the weights it was started with while training goes on. The clone has its own
        lock, no weight source and a copy of the weights that queries use now, with their
        version (on ``device``, default this evaluator's); every other attribute is taken as
        the class's ``clone_rules`` say (see "Clones" in the Evaluator's docstring).

        Raises:
            TypeError: an instance attribute with mutable state that no ``clone_rules``
                declares, named.
        """
        clone = type(self).__new__(type(self))
        clone.__dict__.update(cloned_state(self, self._clone_rules, {"agent", "weights_version"}))
        clone.device = as_device(device) if device is not None else self.device
        clone.copy_agent = True  # reads no training agent: its weights are its own
        clone.agent, clone.weights_version = None, self.weights_version
        clone._start_queries()
        if self.agent is None:
            return clone
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
        return clone

    def _copy_memo(self, agent: nn.Module) -> dict[int, Any]:
        """Hook: a ``copy.deepcopy`` memo, ``{id(obj): its copy}``, for objects inside the agent
        that the adapter copies itself (state that deepcopy refuses, such as tensors of an
        autograd graph kept from the last forward pass). Called before the adapter's own
        constructor sets its attributes: use only what the base class sets."""
        return {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickling, as the process and Ray backends send an evaluator to their workers: a
        :meth:`detached` evaluator travels with its copy of the weights and the attributes
        its ``clone_rules`` share or copy; the training agent (``"local"``), the lock,
        compiled hooks and caches (``"fresh"``) stay behind (the copy compiles its own).

        Raises:
            TypeError: the evaluator reads a training agent in this process (``auto_sync`` or
                ``copy_agent=False``), which cannot travel: pickle ``evaluator.detached()``;
                or an undeclared attribute with mutable state (see :meth:`detached`).
        """
        if self._source is not None or self._live_source is not None:
            raise TypeError(f"{type(self).__name__}: an evaluator that reads its training agent "
                            "does not pickle; pickle evaluator.detached(), whose own copy of "
                            "the weights travels")
        return pickled_state(self, self._clone_rules)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_queries()

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
        self._copy_tensors = copy_tensors(agent)
        if self.compile_options is not None:
            # Compiled, as instance attributes: its own hooks on its own copy (see compile).
            compile_hooks(self, QUERY_HOOKS, self.compile_options)

    def _make_copy(self, agent: nn.Module) -> nn.Module:
        return make_copy(agent, self.device, self._copy_memo(agent))
