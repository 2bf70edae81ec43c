"""Turning what users pass (arrays, tensors, lists, dicts) into batched tensors on a device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from syllabus_eval.errors import bad_argument, describe
from syllabus_eval.query.protocols import LSTMState

TensorTree = torch.Tensor | dict[str, "TensorTree"]


@dataclass(slots=True)
class AgentInputs:
    """What a hook receives: prepared tensors on the evaluator's device."""

    # [B, ...] (or a dict of them); [T * B, ...], time-major, for sequences. Tensors from our
    # _prepare_state; a ported one's result as it returned it (numpy arrays, say).
    obs: TensorTree | Any
    lstm_state: LSTMState | None  # each [num_layers, B, hidden] for CleanRL / moolib
    done: torch.Tensor | None  # [B] ([T * B] for sequences) float32; None: feedforward agents
    batch_size: int  # B
    deterministic: bool
    steps: int = 1  # T: the steps of each env's sequence (get_value_sequence)
    lengths: torch.Tensor | None = None  # [B] int64: env b's steps are its first lengths[b]

# Layers that say what their input is: where observations enter an agent.
_INPUT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase)


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


# What a done flag may be. 0.0, 1.0, False and True are equal to these, and hash alike.
_FLAG_VALUES = frozenset((0, 1))
# Up to this many flags, Python's set is the cheaper check: inside a query (its caches cold
# from the agent's forward) array operations took 8 to 17 us on 8 flags, the set 4 to 7 us.
_FEW_FLAGS = 64


def check_done_flags(value: Any, name: str) -> Any:
    """``value`` as it came, once checked to hold booleans or 0/1 only: done flags, which a
    packed LSTM pass takes as resets where nonzero and a step by step one may scale by
    (CleanRL's ``(1.0 - done) * state``: a 2 would flip the state's sign). The one check of
    every query's ``done``.

    Booleans pass on their dtype alone; other flags are read (on a GPU, that waits for them).
    """
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool:
            return value
        flags = value.detach().reshape(-1)  # [T, B] too: a set takes no lists
        if (_FLAG_VALUES.issuperset(flags.tolist()) if len(flags) <= _FEW_FLAGS
                else torch.equal(flags, flags.bool().to(flags.dtype))):  # NaN fails both
            return value
    else:
        try:
            flags = np.asarray(value)
        except ValueError:  # ragged lists
            raise bad_argument(name, "booleans or 0/1 flags of one shape", value) from None
        kind = flags.dtype.kind
        if kind == "b":
            return value
        if kind not in "iufc":  # not numbers (np.issubdtype costs more than a query's check)
            raise bad_argument(name, "booleans or 0/1 flags (1 where an episode starts)", value)
        if (_FLAG_VALUES.issuperset(flags.ravel().tolist()) if flags.size <= _FEW_FLAGS
                else bool((flags == flags.astype(bool)).all())):
            return value
    others = flags[(flags != 0) & (flags != 1)]
    raise ValueError(f"{name}: expected booleans or 0/1 flags (1 where an episode starts), "
                     f"got {describe(value)} holding {sorted(set(others.tolist()))[:3]}")


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


def first_layer(agent: nn.Module) -> tuple[str, nn.Module] | None:
    """The first layer, in the agent's module order, that says what its input is (a
    ``Linear``, ``ConvNd``, or recurrent layer), with its name: where observations enter the
    agents this project knows (CleanRL's ``critic`` or ``network``, an SB3
    ``mlp_extractor``). ``None`` when there is none, or it is lazy (its sizes come with its
    first input)."""
    for name, module in agent.named_modules():
        if isinstance(module, _INPUT_LAYERS):
            lazy = isinstance(module, nn.modules.lazy.LazyModuleMixin)
            return None if lazy else (name, module)
    return None


def _fits_layer(row: tuple[int, ...], layer: nn.Module) -> bool:
    """Whether one observation of shape ``row`` (without the batch dimension) fits ``layer``:
    its channels for a convolution, its last dimension (or all of it flattened, as a
    ``Flatten`` before a ``Linear`` makes it) for the others."""
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        spatial = len(layer.kernel_size)
        return len(row) == spatial + 1 and row[0] == layer.in_channels
    size = layer.in_features if isinstance(layer, nn.Linear) else layer.input_size
    return bool(row) and (row[-1] == size or int(np.prod(row)) == size)


def _layer_pattern(layer: nn.Module, ndim: int) -> str:
    """The observation batch ``layer`` takes, ``[B, ...]``, for a batch of ``ndim``
    dimensions that did not fit."""
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        spatial = ("L", "H, W", "D, H, W")[len(layer.kernel_size) - 1]
        return f"[B, {layer.in_channels}, {spatial}]"
    size = layer.in_features if isinstance(layer, nn.Linear) else layer.input_size
    return f"[B, {size}]" if ndim <= 2 else f"[B, ..., {size}]"


def obs_shape_error(obs: Any, agent: nn.Module | None, name: str, steps: int = 1,
                    cause: BaseException | None = None) -> ValueError | None:
    """The error for observations that do not fit the agent's first layer, naming ``name``,
    the shape expected and the shape received; ``None`` when they fit or nothing is known (a
    dict of observations, no such layer), and the caller's own error then stands.

    ``obs`` is a prepared batch, ``[T * B, ...]`` time-major for sequences of ``steps`` > 1,
    reported as the ``[T, B, ...]`` the caller gave. Called only once something has failed,
    so that queries pay nothing for it; ``cause``, the agent's own error, is quoted.
    """
    if not isinstance(obs, torch.Tensor) or obs.dim() == 0 or agent is None:
        return None
    found = first_layer(agent)
    if found is None:
        return None
    path, layer = found
    row = tuple(obs.shape[1:])
    if _fits_layer(row, layer):
        return None
    received = tuple(obs.shape)
    pattern = _layer_pattern(layer, len(received))
    hint = " (a single observation? it needs a batch dimension: {}[None])"
    if steps > 1:  # [T * B, ...] as the caller gave it: [T, B, ...]
        received = (steps, received[0] // steps, *row)
        pattern = "[T, " + pattern[1:]
        hint = " (one env's sequence? it needs a batch dimension after T: {}[:, None])"
    # Without its batch dimension, what came is itself one observation (after T) that fits.
    hint = hint.format(name) if _fits_layer(received[1 if steps > 1 else 0:], layer) else ""
    quoted = f"; the agent raised {type(cause).__name__}: {cause}" if cause is not None else ""
    return ValueError(f"{name}: expected observations of shape {pattern} (the input of the "
                      f"agent's first layer, {path or 'the agent'}: {layer}), got observations "
                      f"of shape {received}{hint}{quoted}")
