"""Turning what users pass (arrays, tensors, lists, dicts) into batched tensors on a device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from .errors import bad_argument, describe

TensorTree = torch.Tensor | dict[str, "TensorTree"]


def as_batch(
    value: Any, device: torch.device, dtype: torch.dtype | None, name: str
) -> TensorTree:
    """Convert one batched observation (or a dict of them) to tensors on ``device``.

    Accepts a tensor, a numpy array, a list of per-env arrays (stacked), a dict of any of
    these (Gymnasium ``Dict`` spaces) or a list of dicts (stacked per key). ``dtype=None`` keeps
    the input's dtype. Nothing is copied when the input already fits (``torch.as_tensor``).
    """
    if type(value) is torch.Tensor:
        if value.device == device and (dtype is None or value.dtype == dtype):
            return value  # the hot path: already a batch on the right device
        return value.to(device=device, dtype=dtype)
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype == object:
            raise bad_argument(name, "a numeric array or tensor", value)
        try:
            return torch.as_tensor(value, dtype=dtype, device=device)
        except ValueError:  # negative strides (a flipped view): torch needs a copy
            return torch.as_tensor(np.ascontiguousarray(value), dtype=dtype, device=device)
    if isinstance(value, Mapping):
        return {k: as_batch(v, device, dtype, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if not value:
            raise bad_argument(name, "a non-empty batch", value)
        if isinstance(value[0], Mapping):
            keys = value[0].keys()
            for i, item in enumerate(value):
                if not isinstance(item, Mapping) or item.keys() != keys:
                    raise bad_argument(f"{name}[{i}]", f"a dict with keys {sorted(keys)}", item)
            return {k: as_batch([item[k] for item in value], device, dtype, f"{name}[{k!r}]")
                    for k in keys}
        try:
            if isinstance(value[0], torch.Tensor):
                return torch.stack([torch.as_tensor(v) for v in value]).to(device=device,
                                                                           dtype=dtype)
            array = np.stack([np.asarray(v) for v in value])
        except (ValueError, RuntimeError) as error:
            shapes = sorted({tuple(np.shape(v)) for v in value})
            raise ValueError(f"{name}: expected per-env items of one shape, got shapes {shapes}"
                             ) from error
        return as_batch(array, device, dtype, name)
    if isinstance(value, torch.Tensor):  # a Tensor subclass (e.g. Parameter)
        return value.to(device=device, dtype=dtype)
    raise bad_argument(name, "an array, tensor, list of arrays or dict of arrays", value)


def batch_size_of(value: Any, name: str) -> int:
    """The leading dimension shared by every entry of ``value``.

    Besides tensors (and dicts of them), what a ported ``_prepare_state`` may hand over as it
    is (Syllabus's template returns the observations unconverted): anything with a ``shape``
    (numpy arrays), a list or tuple of per-env items (B = its length), dicts of these.
    """
    if isinstance(value, Mapping):
        if not value:
            raise bad_argument(name, "a batch with a leading batch dimension [B, ...]", value)
        sizes = {k: batch_size_of(v, f"{name}[{k!r}]") for k, v in value.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{name}: expected one batch size for every key, got {sizes}")
        return next(iter(sizes.values()))
    if isinstance(value, (list, tuple)) and value:
        return len(value)  # per-env items, as as_batch stacks them
    shape = getattr(value, "shape", None)
    if not isinstance(shape, tuple) or not shape:  # torch.Size is a tuple
        raise bad_argument(name, "a batch with a leading batch dimension [B, ...]", value)
    return int(shape[0])


def take_rows(batch: Any, rows: Any) -> Any:
    """Rows ``rows`` (an index array or a slice) of a batch: arrays or tensors, dicts and
    tuples of them."""
    if isinstance(batch, dict):
        return {key: take_rows(sub, rows) for key, sub in batch.items()}
    if isinstance(batch, tuple):
        return tuple(take_rows(sub, rows) for sub in batch)
    return batch[rows]


def check_done_flags(value: Any, name: str) -> Any:
    """``value`` as it came, once checked to hold booleans or 0/1 only: done flags, which a
    packed LSTM pass takes as resets where nonzero and a step by step one may scale by."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            return value
        flags = value.detach()
    else:
        try:
            flags = np.asarray(value)
        except ValueError:  # ragged lists
            raise bad_argument(name, "booleans or 0/1 flags of one shape", value) from None
        if flags.dtype == np.bool_:
            return value
        if not np.issubdtype(flags.dtype, np.number):
            raise bad_argument(name, "booleans or 0/1 flags (1 where an episode starts)", value)
    others = flags[(flags != 0) & (flags != 1)]
    if others.numel() if isinstance(others, torch.Tensor) else others.size:
        raise ValueError(f"{name}: expected booleans or 0/1 flags (1 where an episode starts), "
                         f"got {describe(value)} holding {sorted(set(others.tolist()))[:3]}")
    return value


def check_against_space(value: TensorTree, space: spaces.Space, name: str) -> None:
    """Raise when a batch does not have ``[B, *space.shape]`` (recursively for ``Dict``)."""
    if isinstance(space, spaces.Dict):
        if not isinstance(value, dict) or value.keys() != space.spaces.keys():
            raise bad_argument(name, f"a dict with keys {sorted(space.spaces)}", value)
        for key, subspace in space.spaces.items():
            check_against_space(value[key], subspace, f"{name}[{key!r}]")
        return
    if isinstance(value, dict):
        raise bad_argument(name, f"a batch of {space} observations, not a dict", value)
    shape = space.shape
    if shape is None:
        return
    if tuple(value.shape[1:]) != tuple(shape):
        hint = ""
        if tuple(value.shape) == tuple(shape):
            hint = " (a single observation: add a batch dimension, e.g. obs[None])"
        raise ValueError(
            f"{name}: expected a batch of shape [B, {', '.join(map(str, shape))}], "
            f"got {describe(value)}{hint}"
        )
