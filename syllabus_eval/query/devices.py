"""Devices, grad mode and intra-op threads of queries: per query, per thread, never inherited
from the caller.

Usage::

    device = as_device("cuda:0")          # a clear error naming ``device`` for bad input
    with QueryMode(device):               # no_grad, and that CUDA device as the current one
        ...
    share_torch_threads()                 # in a new thread: torch's thread count, not OpenMP's
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from syllabus_eval.errors import bad_argument


def as_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that this machine has, or a ``ValueError`` naming it.

    Checked here, once, because torch checks late and obscurely: ``"cuda"`` without CUDA fails
    at the first ``.to(device)`` with a bare ``AssertionError`` (issue #19).
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise bad_argument("device", "a torch device such as 'cpu' or 'cuda:0'", device) from None
    # torch.cuda, torch.xpu, torch.mps: backends that may be missing say so themselves.
    available = getattr(getattr(torch, parsed.type, None), "is_available", None)
    if callable(available) and not available():
        raise bad_argument("device", f"a device this machine has ('cpu' always is; "
                           f"{parsed.type} is not: torch.{parsed.type}.is_available() is "
                           "False)", device)
    if parsed.type == "cuda" and parsed.index is not None:
        count = torch.cuda.device_count()
        if parsed.index >= count:
            raise bad_argument("device", f"a CUDA device this machine has, 'cuda:0' to "
                               f"'cuda:{count - 1}'", device)
    return parsed


# torch.set_grad_enabled without the object it builds (its C function, where torch has it).
_set_grad_enabled = getattr(torch._C, "_set_grad_enabled", torch.set_grad_enabled)


_threads_shared = threading.local()


def share_torch_threads() -> None:
    """Give the calling thread torch's intra-op thread count (``torch.get_num_threads()``).

    OpenMP keeps the thread count per thread: ``torch.set_num_threads(1)`` in the main thread
    leaves a thread started later at OpenMP's default (the number of cores), whose idle
    workers spin after every parallel op. Measured here: an evaluation in a background thread
    burnt a second core the whole time (process CPU 2x its wall time), which training on two
    cores then lacks. Once per thread; queries do it themselves (:class:`QueryMode`).
    """
    if not getattr(_threads_shared, "done", False):
        torch.set_num_threads(torch.get_num_threads())
        _threads_shared.done = True


class QueryMode:
    """``no_grad`` and, on CUDA, the evaluator's device as the current one, for one query; and,
    once per thread, torch's intra-op thread count (:func:`share_torch_threads`).

    All are thread-local (pytorch #20528, #82145): a query sets them for its own thread and
    never inherits the caller's. One hand-made context rather than ``torch.no_grad()`` and
    ``torch.cuda.device``: entering those took about 1 us, 4% of a CartPole query at batch 1.
    """

    __slots__ = ("_cuda_device", "_previous")

    def __init__(self, device: torch.device) -> None:
        self._cuda_device = torch.cuda.device(device) if device.type == "cuda" else None
        self._previous = True

    def __enter__(self) -> None:
        if not getattr(_threads_shared, "done", False):
            share_torch_threads()
        self._previous = torch.is_grad_enabled()
        _set_grad_enabled(False)
        if self._cuda_device is not None:
            self._cuda_device.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        if self._cuda_device is not None:
            self._cuda_device.__exit__(*exc_info)
        _set_grad_enabled(self._previous)


def device_of(agent: nn.Module | None) -> torch.device:
    if agent is not None:
        for tensor in agent.parameters():
            return tensor.device
    return torch.device("cpu")
