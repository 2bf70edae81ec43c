"""Weights handed to worker processes through shared memory: one copy per trigger, no pickling.

Usage (the process backend does this; users see only ``backend="process"``)::

    shared = SharedWeights.for_agent(evaluator.agent)     # None: weights that cannot share
    process = context.Process(target=main, args=(..., shared))   # the buffer travels as a handle
    ticket = shared.write(agent)          # at trigger time: one copy, the training thread's cost
    ...                                   # the worker, given the ticket in its job order:
    shared.load(ticket, evaluator_load)   # its own agent copies the weights out, then checks
    shared.release(ticket)                # once the evaluation is over

**The buffer.** One flat ``uint8`` tensor in shared memory (``share_memory_()``: with PyTorch's
default ``file_descriptor`` strategy on Linux the segment has no name in ``/dev/shm`` and goes
when the last process holding it lets go), laid out as the agent's state dict, each tensor at a
64-byte aligned offset behind a 64-byte header. It is passed to each worker when the worker is
spawned, as a file descriptor: a trigger sends only a :class:`Ticket` (two integers).

**No torn reads.** Two rules, the second checking the first:

* *Ownership.* A trigger writes only into a buffer no evaluation holds, and the evaluation holds
  it until it ends (results, checkpoint and callbacks included), so no worker reads while it is
  written. A trigger that finds it held (``busy_policy="queue"`` behind a running evaluation)
  gets ``None`` and takes a private copy instead, which travels pickled as before.
* *A sequence number* (a seqlock) in the header: odd while a copy is being written, even once
  it is whole. The ticket carries the even number of its copy; a worker compares the header
  with it before and after copying the weights into its own agent, and a mismatch raises
  instead of evaluating a mix of two copies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from syllabus_eval.query.compiled import without_compile_prefix
from syllabus_eval.query.weights import weight_source

ALIGN = 64  # bytes: every tensor starts on a cache line, which also suits every dtype's view
HEADER = ALIGN  # the sequence number (int64), alone on its cache line


@dataclass(frozen=True)
class Ticket:
    """Which copy in shared memory an evaluation runs on: the sequence number it was written
    with (even), checked by the worker that reads it."""

    sequence: int


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # bytes from the buffer's start
    nbytes: int


class SharedWeights:
    """A state dict's worth of shared memory, written at trigger time and read by workers.

    Build it with :meth:`for_agent`; it pickles (for ``multiprocessing`` with PyTorch's
    reductions, as process arguments are) as a handle on the same memory, never a copy.
    """

    def __init__(self, layout: tuple[_Entry, ...], buffer: torch.Tensor | None = None) -> None:
        self.layout = layout
        size = HEADER + (layout[-1].offset + layout[-1].nbytes - HEADER if layout else 0)
        self.buffer = torch.zeros(size, dtype=torch.uint8).share_memory_() if buffer is None \
            else buffer
        self._sequence = self.buffer[:8].view(torch.int64)  # [1]
        self._views = {entry.name: self.buffer[entry.offset:entry.offset + entry.nbytes]
                       .view(entry.dtype).view(entry.shape) for entry in layout}
        self._lock = threading.Lock()
        self._held: Ticket | None = None
        self._holders: list[SharedView] = []  # what handed views out, closed by close()

    @classmethod
    def for_agent(cls, agent: nn.Module | None) -> SharedWeights | None:
        """Shared memory shaped as ``agent``'s state dict; ``None`` when it holds something
        that is not a plain dense tensor (extra state, sparse or quantized tensors)."""
        if not isinstance(agent, nn.Module):
            return None
        state = without_compile_prefix(agent.state_dict())
        entries, offset = [], HEADER
        for name, tensor in state.items():
            if not _plain(tensor):
                return None
            nbytes = tensor.numel() * tensor.element_size()
            entries.append(_Entry(name, tensor.dtype, tuple(tensor.shape), offset, nbytes))
            offset += -(-nbytes // ALIGN) * ALIGN
        return cls(tuple(entries)) if entries else None

    def __reduce__(self) -> tuple:
        return SharedWeights, (self.layout, self.buffer)

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    # --- the training process ------------------------------------------------------------

    def write(self, weights: nn.Module | Mapping[str, Any], timeout: float = 10.0
              ) -> tuple[Ticket, SharedView, int | None] | None:
        """Copy ``weights`` in, unless an evaluation holds the buffer or they do not fit it.

        A module is read with its optimizer steps held off (one step's weights, as every
        snapshot). Returns the ticket (held until :meth:`release`), a view of the copy for the
        training process (checkpoints) and the weights' version, or ``None``.
        """
        # Under the lock: release and close wait for a copy under way (a copy may wait for an
        # optimizer step to end; no evaluation waits on the lock meanwhile).
        with self._lock:
            if self._held is not None or self.buffer is None:
                return None
            if isinstance(weights, nn.Module):
                source = weight_source(weights)
                with source.reading(timeout):
                    copied = self._copy(without_compile_prefix(weights.state_dict()))
                    version = source.steps
            else:
                copied, version = self._copy(without_compile_prefix(weights)), None
            if copied is None:
                return None
            ticket = self._held = Ticket(copied)
            view = SharedView(self._views)
            self._holders.append(view)
        return ticket, view, version

    def _copy(self, state: Mapping[str, Any]) -> int | None:
        """``state`` into the buffer between two increments of the sequence number; the even
        number after the copy, or ``None`` if ``state`` does not fit the layout."""
        if len(state) != len(self.layout) or not all(
                entry.name in state and _fits(state[entry.name], entry) for entry in self.layout):
            return None
        self._sequence.add_(1)  # odd: a reader that looks now sees a copy being written
        with torch.no_grad():
            for entry in self.layout:
                self._views[entry.name].copy_(state[entry.name])
        self._sequence.add_(1)  # even: whole
        return int(self._sequence.item())

    def release(self, ticket: Ticket) -> None:
        """The evaluation that held ``ticket`` is over: the next trigger may write."""
        with self._lock:
            if self._held == ticket:
                self._held = None
                for view in self._holders:
                    view.close()
                self._holders.clear()

    def close(self) -> None:
        """Let go of the memory here (workers let go of theirs when they exit)."""
        with self._lock:
            for view in self._holders:
                view.close()
            self._holders.clear()
            self._views = {}
            self.buffer = self._sequence = None  # nothing more is written

    # --- a worker --------------------------------------------------------------------------

    def load(self, ticket: Ticket, load: Callable[[Mapping[str, torch.Tensor]], None]) -> None:
        """Hand ``load`` (which copies them into the worker's own agent) the weights of
        ``ticket``; raises if they are not whole, or change while ``load`` reads them."""
        self._check(ticket, "before")
        load(self._views)
        self._check(ticket, "while")

    def _check(self, ticket: Ticket, when: str) -> None:
        found = int(self._sequence.item())
        if found != ticket.sequence:
            raise RuntimeError(
                f"the weights in shared memory changed {when} this worker read them (copy "
                f"{ticket.sequence} expected, sequence number {found} found): the evaluation "
                "stops rather than run on a mix of two copies")


class SharedView(Mapping):
    """The weights of one held copy as a read-only mapping (for ``save_best`` checkpoints),
    valid until the evaluation that holds them ends; empty after that."""

    def __init__(self, views: dict[str, torch.Tensor]) -> None:
        self._views: dict[str, torch.Tensor] | None = views

    def close(self) -> None:
        self._views = None  # no reference keeps the shared memory mapped in this process

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._views is None:
            raise KeyError(f"{key}: the evaluation that held these shared weights is over")
        return self._views[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._views or {})

    def __len__(self) -> int:
        return len(self._views or {})


def _plain(tensor: Any) -> bool:
    return (isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided
            and not tensor.is_quantized and tensor.device.type != "meta")


def _fits(tensor: Any, entry: _Entry) -> bool:
    return _plain(tensor) and tensor.dtype == entry.dtype and tuple(tensor.shape) == entry.shape
