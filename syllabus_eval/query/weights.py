"""Tear-free weight sync between a training agent and the copies that answer queries.

Usage::

    source = weight_source(agent)        # one per training module, shared by all evaluators
    version = source.try_copy_into(copy_tensors)   # None while an optimizer step is running

The guarantee: a copy taken through a :class:`WeightSource` never mixes tensors from before and
after an optimizer step. Every ``torch.optim.Optimizer`` step on the module's parameters is
bracketed by global step hooks (``register_optimizer_step_pre_hook``): the step waits for copies
already under way (they take microseconds to milliseconds), and copies do not start while a step
runs. Readers never block the training loop for longer than one copy.

Preconditions (documented in the README):

* Parameters change only inside ``optimizer.step()`` or inside ``with source.writing():``
  (``load_state_dict``, Polyak updates, manual ``copy_``, writes through ``.data``). Leaving
  either always makes the next query refresh, however the tensors were written. Other
  in-place writes are still *detected* (tensor version counters) but not made atomic, except
  writes through ``.data``, which leave no trace outside ``writing()``.
* Parameter objects are not replaced after the source is created (``module.weight = Parameter``);
  build a new evaluator if they are.
* If ``optimizer.step()`` raises, that optimizer counts as stepping until its next successful
  step; readers keep serving the last consistent copy meanwhile.

Compiled modules (``torch.compile(module)``, an ``OptimizedModule``) are accepted wherever a
module is: their weights are the wrapped module's (``_orig_mod``), which is what a source
watches, and their state-dict keys lose the ``_orig_mod.`` that the wrapper adds
(:mod:`syllabus_eval.query.compiled`).
"""

from __future__ import annotations

import contextlib
import operator
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from syllabus_eval.query.compiled import unwrap_compiled, without_compile_prefix

_version_of = operator.attrgetter("_version")


class WeightSource:
    """The parameters and buffers of one training module, with a readers-writer protocol."""

    def __init__(self, module: nn.Module) -> None:
        self.tensors: list[torch.Tensor] = [*module.parameters(), *module.buffers()]
        self.parameter_ids = frozenset(id(p) for p in module.parameters())
        # The CUDA device training runs on (None: not CUDA): copies wait for its step kernels.
        self.cuda_device = next((t.device for t in self.tensors if t.is_cuda), None)
        # Optimizer steps and writing() blocks completed on this module since the source was
        # created: part of version(), since writes through .data bump no version counter.
        self.steps = 0
        self._cond = threading.Condition()
        self._writers: set[int] = set()  # ids of optimizers (or writing() tokens) inside a step
        self._readers = 0

    def version(self) -> int:
        """A number that grows with every change of the weights (cheap: one small sum).

        The tensors' version counters grow with in-place writes through them, but not with
        writes through ``.data`` (CleanRL's Polyak update ``p.data.copy_(q.data)``: ``.data``
        is a tensor with a counter of its own; issue #19). ``steps`` grows when a step or a
        ``writing()`` block ends, so such writes are seen once they are bracketed. Every term
        only grows, so the sum changes whenever any of them does.
        """
        return self.steps + sum(map(_version_of, self.tensors))

    # --- readers -----------------------------------------------------------------------------

    def try_copy_into(self, targets: Sequence[torch.Tensor]) -> tuple[int, int] | None:
        """Copy every tensor into ``targets`` (same order) unless a step is running.

        Returns ``(version, steps)`` of what was copied, or ``None`` (nothing copied) while an
        optimizer step is in progress: the caller keeps its previous, consistent copy.
        """
        with self._cond:
            if self._writers:
                return None
            self._readers += 1
            copied = self.version(), self.steps
        try:
            with torch.no_grad():
                if self.cuda_device is not None:
                    # Step kernels are enqueued, not finished, when the post-hook runs.
                    torch.cuda.synchronize(self.cuda_device)
                for target, tensor in zip(targets, self.tensors):
                    target.copy_(tensor)
                target_device = targets[0].device if targets and targets[0].is_cuda else None
                for device in {self.cuda_device, target_device} - {None}:
                    torch.cuda.synchronize(device)  # the copies are done before the lock goes
        finally:
            self.end_read()
        return copied

    @contextlib.contextmanager
    def reading(self, timeout: float) -> Iterator[None]:
        """Hold off optimizer steps while the caller reads the live tensors (in-place queries)."""
        self.begin_read(timeout)
        try:
            yield
        finally:
            self.end_read()

    def begin_read(self, timeout: float) -> None:
        """:meth:`reading` in two calls: optimizer steps wait until :meth:`end_read`."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._writers, timeout):
                raise TimeoutError(
                    f"an optimizer step on the training agent did not finish within {timeout}s; "
                    "if optimizer.step() raised, the agent stays locked until its next step"
                )
            self._readers += 1

    def end_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    # --- writers -----------------------------------------------------------------------------

    def begin_write(self, token: int) -> None:
        with self._cond:
            # Announce first so that no new copy starts, then let running copies finish.
            self._writers.add(token)
            self._cond.wait_for(lambda: not self._readers)

    def end_write(self, token: int) -> None:
        with self._cond:
            self._writers.discard(token)
            self.steps += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Make writes outside ``optimizer.step()`` atomic for readers (``load_state_dict``).

        Leaving the block counts as a step: ``steps`` (and so :meth:`version`) grows, and the
        next query of every evaluator of the module refreshes, even when the block wrote only
        through ``.data``, which version counters miss.
        """
        token = id(object())
        self.begin_write(token)
        try:
            yield
        finally:
            self.end_write(token)


_registry: weakref.WeakKeyDictionary[nn.Module, WeightSource] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()
_registry_generation = 0
# optimizer -> (generation, number of param groups, sources it steps)
_optimizer_sources: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_hooks_installed = False


def weight_source(module: nn.Module) -> WeightSource:
    """The :class:`WeightSource` of ``module``, created (and step hooks installed) on first use.

    A compiled module shares the source of the module it wraps (same tensors, same steps).
    """
    global _registry_generation, _hooks_installed
    module = unwrap_compiled(module)
    with _registry_lock:
        source = _registry.get(module)
        if source is None:
            source = _registry[module] = WeightSource(module)
            _registry_generation += 1
            if not _hooks_installed:
                register_optimizer_step_pre_hook(_before_step)
                register_optimizer_step_post_hook(_after_step)
                _hooks_installed = True
        return source


def snapshot_state_dict(weights: nn.Module | Mapping[str, torch.Tensor],
                        device: str | torch.device = "cpu",
                        timeout: float = 10.0) -> dict[str, torch.Tensor]:
    """A consistent, private copy of ``weights`` (a module or a state dict) on ``device``.

    A module is read with optimizer steps held off, so the snapshot is the weights of exactly
    one step; later training does not change it. Keys are those of the plain module, also for
    a compiled module or a state dict saved from one (see :func:`without_compile_prefix`).
    """
    return versioned_snapshot(weights, device, timeout)[0]


def versioned_snapshot(weights: nn.Module | Mapping[str, torch.Tensor],
                       device: str | torch.device = "cpu", timeout: float = 10.0
                       ) -> tuple[dict[str, torch.Tensor], int | None]:
    """:func:`snapshot_state_dict` and the version of what it copied: for a module, the
    optimizer steps its :class:`WeightSource` has seen (an evaluator's ``weights_version``);
    ``None`` for a state dict, which carries no version."""
    if isinstance(weights, nn.Module):
        source = weight_source(weights)
        with source.reading(timeout):
            return ({k: v.detach().to(device, copy=True) for k, v in
                     without_compile_prefix(weights.state_dict()).items()}, source.steps)
    if isinstance(weights, Mapping):
        return {k: torch.as_tensor(v).detach().to(device, copy=True)
                for k, v in without_compile_prefix(weights).items()}, None
    raise TypeError(f"weights: expected an nn.Module or a state dict, got {type(weights).__name__}")


def _sources_stepped_by(optimizer: torch.optim.Optimizer) -> list[WeightSource]:
    key = (_registry_generation, len(optimizer.param_groups))
    cached = _optimizer_sources.get(optimizer)
    if cached is not None and cached[0] == key:
        return cached[1]
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    with _registry_lock:
        sources = [s for s in _registry.values() if not stepped.isdisjoint(s.parameter_ids)]
    _optimizer_sources[optimizer] = (key, sources)
    return sources


def _before_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    for source in _sources_stepped_by(optimizer):
        source.begin_write(id(optimizer))


def _after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    for source in _sources_stepped_by(optimizer):
        source.end_write(id(optimizer))
