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


def batch_size_of(value: TensorTree, name: str) -> int:
    """The leading dimension shared by every tensor in ``value``."""
    if isinstance(value, dict):
        sizes = {k: batch_size_of(v, f"{name}[{k!r}]") for k, v in value.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{name}: expected one batch size for every key, got {sizes}")
        return next(iter(sizes.values()))
    if value.dim() == 0:
        raise bad_argument(name, "a batch with a leading batch dimension [B, ...]", value)
    return value.shape[0]


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
