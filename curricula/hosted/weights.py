"""Weights on their way from the learner to a hosted curriculum's scorer: never torn, latest wins.

Usage::

    locks = [ctx.Lock() for _ in range(SLOTS)]            # made before the scorer is spawned
    writer = SharedWeightsWriter(layout_of(state_dict), locks)    # the learner's process
    writer.write(state_dict.values(), version=12)
    reader = SharedWeightsReader(writer.name, writer.layout, locks)  # the scorer's process
    reader.pull()      # (state_dict, 12) the first time, then None until the next write

    inbox = WeightsInbox()                                # scorer and pushes in one process
    inbox.put(state_dict, version=12); inbox.pull()

    follower = StepFollower(agent, push)                  # push() after each optimizer step

**Shared memory, three slots.** The writer copies a state dict into a slot that is neither the
one published last nor one a reader holds, then publishes it; the reader copies the published
slot out while holding that slot's lock. Each slot has a process-shared lock, so a reader never
copies a slot while it is written (on any CPU: the locks order the memory accesses), and with
three slots and one reader the writer always finds a free one: it never waits for the scorer,
which may run at a low priority. A reader that finds the slot it picked being written waits for
that write and reads it: a newer, complete state dict.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from syllabus_eval.errors import bad_argument
from syllabus_eval.query.compiled import unwrap_compiled
from syllabus_eval.query.weights import weight_source

SLOTS = 3  # the one published, the one a reader may hold, the one written
_ALIGN = 64  # bytes: each tensor starts on a cache line
_HEADER = 2 + SLOTS  # int64 words: published count, current slot, each slot's version

Layout = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype name) per tensor


def layout_of(state_dict: Mapping[str, torch.Tensor]) -> Layout:
    """The names, shapes and dtypes of a state dict, in its order: what both sides agree on."""
    return [(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
            for name, tensor in state_dict.items()]


def _offsets(layout: Layout) -> tuple[list[int], int]:
    """Each tensor's byte offset in a slot, and the slot's size."""
    offsets, size = [], 0
    for _, shape, dtype in layout:
        offsets.append(size)
        nbytes = int(np.prod(shape, dtype=np.int64)) * getattr(torch, dtype).itemsize
        size += -(-nbytes // _ALIGN) * _ALIGN
    return offsets, max(size, _ALIGN)


class _SharedSlots:
    """The shared block: a header of int64 words, then ``SLOTS`` copies of the layout."""

    def __init__(self, layout: Layout, locks: Sequence[Any], name: str | None) -> None:
        if len(locks) != SLOTS:
            raise bad_argument("locks", f"{SLOTS} process-shared locks", locks)
        self.layout, self.locks = layout, list(locks)
        offsets, slot_size = _offsets(layout)
        header = _HEADER * 8
        total = header + SLOTS * slot_size
        self.memory = shared_memory.SharedMemory(name=name, create=name is None, size=total)
        self.name = self.memory.name
        self.header = np.ndarray((_HEADER,), np.int64, buffer=self.memory.buf)
        self.views = [[self._view(header + slot * slot_size + offset, shape, dtype)
                       for (_, shape, dtype), offset in zip(layout, offsets)]
                      for slot in range(SLOTS)]

    def _view(self, offset: int, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        kind = getattr(torch, dtype)
        count = int(np.prod(shape, dtype=np.int64)) * kind.itemsize
        if count == 0:  # nothing to share (torch.frombuffer refuses empty views)
            return torch.empty(shape, dtype=kind)
        raw = torch.frombuffer(self.memory.buf, dtype=torch.uint8, count=count, offset=offset)
        return raw.view(kind).view(shape)

    def close(self) -> None:
        """Let go of the block (the tensors on it first: they pin its memory)."""
        self.views, self.header = [], None
        with suppress(BufferError):  # a view someone still holds: the OS frees it at exit
            self.memory.close()


class SharedWeightsWriter(_SharedSlots):
    """The learner's side: creates the block; :meth:`write` never waits for the reader."""

    def __init__(self, layout: Layout, locks: Sequence[Any]) -> None:
        super().__init__(layout, locks, None)
        self.header[:] = 0
        self.header[1] = -1  # nothing published yet
        self._lock = threading.Lock()  # one writing thread at a time in this process

    def write(self, tensors: Iterable[torch.Tensor], version: int | None) -> None:
        """Copy ``tensors`` (in layout order) into a free slot and publish it."""
        with self._lock:
            current = int(self.header[1])
            slot = next((s for s in range(SLOTS)
                         if s != current and self.locks[s].acquire(block=False)), None)
            if slot is None:  # only with more than one reader, which nothing here makes
                raise RuntimeError("every shared weight slot is busy: one reader at a time")
            try:
                with torch.no_grad():
                    for target, tensor in zip(self.views[slot], tensors, strict=True):
                        target.copy_(tensor)
                self.header[2 + slot] = -1 if version is None else version
            finally:
                self.locks[slot].release()
            self.header[1] = slot
            self.header[0] += 1

    def unlink(self) -> None:
        self.close()
        with suppress(FileNotFoundError):
            self.memory.unlink()


class SharedWeightsReader(_SharedSlots):
    """The scorer's side: attaches to the writer's block by name."""

    def __init__(self, name: str, layout: Layout, locks: Sequence[Any]) -> None:
        super().__init__(layout, locks, name)
        self._seen = 0  # the published count of the last pull
        # Private tensors the pulled weights are copied into (reused: load_weights copies).
        self._private = {layout_name: torch.empty(shape, dtype=getattr(torch, dtype))
                         for layout_name, shape, dtype in layout}

    def pull(self) -> tuple[dict[str, torch.Tensor], int | None] | None:
        """The weights published since the last pull, with their version; ``None``: none."""
        published = int(self.header[0])
        if published == self._seen:
            return None  # the common case: one read of shared memory
        slot = int(self.header[1])
        with self.locks[slot]:
            with torch.no_grad():
                for target, view in zip(self._private.values(), self.views[slot]):
                    target.copy_(view)
            version = int(self.header[2 + slot])
        self._seen = published
        return self._private, None if version < 0 else version


class WeightsInbox:
    """Pushed weights in the scorer's own process: the latest wins, ``pull`` takes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: tuple[Mapping[str, torch.Tensor], int | None] | None = None

    def put(self, state_dict: Mapping[str, torch.Tensor], version: int | None) -> None:
        with self._lock:
            self._latest = state_dict, version

    def pull(self) -> tuple[Mapping[str, torch.Tensor], int | None] | None:
        with self._lock:
            latest, self._latest = self._latest, None
        return latest


class StepFollower:
    """Calls ``push(state, version)`` after every optimizer step on ``agent``'s parameters.

    ``state`` is the agent's live parameters and buffers by state-dict name (the same dict
    each time), read with optimizer steps held off (:class:`~syllabus_eval.WeightSource`);
    ``version`` counts the steps as an evaluator's ``weights_version`` does. It runs on the
    training thread, right after the step: a copy of the weights per step, which the training
    loop pays (small for small agents).
    """

    def __init__(self, agent: nn.Module,
                 push: Callable[[dict[str, torch.Tensor], int], None],
                 timeout: float = 10.0) -> None:
        # The core's step hooks are installed by weight_source, before ours: they run first,
        # so the step has ended (for readers) when ours runs.
        self.source = weight_source(agent)
        self.state = live_state(agent)
        self._push, self._timeout = push, timeout
        # optimizer -> (number of param groups, whether it steps the agent)
        self._optimizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._handle = register_optimizer_step_post_hook(self._after_step)

    def push_now(self) -> None:
        """Push the weights as they are (consistent: optimizer steps wait meanwhile)."""
        with self.source.reading(self._timeout):
            self._push(self.state, self.source.steps)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: object, kwargs: object
                    ) -> None:
        groups = len(optimizer.param_groups)
        known = self._optimizers.get(optimizer)
        if known is None or known[0] != groups:
            stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
            known = self._optimizers[optimizer] = (
                groups, not stepped.isdisjoint(self.source.parameter_ids))
        if known[1]:
            self.push_now()

    def close(self) -> None:
        self._handle.remove()


def live_state(agent: nn.Module) -> dict[str, torch.Tensor]:
    """The agent's parameters and buffers by state-dict name, the live tensors themselves."""
    return {name: tensor.detach() for name, tensor in
            unwrap_compiled(agent).state_dict(keep_vars=True).items()}
