"""Compiled modules (``torch.compile``) wherever a module is taken, and compiled queries.

Usage::

    agent = unwrap_compiled(torch.compile(agent))      # the module that trains
    state = without_compile_prefix(compiled.state_dict())   # keys without "_orig_mod."
    options = compile_options({"mode": "max-autotune"}, has_copy=True)

``torch.compile(module)`` returns an ``OptimizedModule`` that holds no weights of its own: its
parameters are the wrapped module's (``_orig_mod``), which optimizer steps change and weight
sources watch, and its state-dict keys carry ``_orig_mod.``. Evaluators unwrap it, and compare
and load state dicts without the prefix. ``Evaluator(..., compile=True)`` compiles the query
hooks of the private copy instead (see :class:`~syllabus_eval.Evaluator`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from syllabus_eval.errors import bad_argument, describe

_COMPILED = "_orig_mod"  # where torch.compile's OptimizedModule keeps the module it wraps
# What compile=True compiles: the evaluator's query hooks, one per public template.
QUERY_HOOKS = ("_get_action", "_get_value", "_get_action_and_value", "_get_value_sequence")


def unwrap_compiled(module: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) wraps; others as they are.

    The wrapper holds no weights of its own: its parameters are the wrapped module's, which
    optimizer steps change and weight sources watch.
    """
    while _is_compiled(module):
        module = module._modules[_COMPILED]
    return module


def _is_compiled(module: nn.Module) -> bool:
    # Only torch.compile makes an OptimizedModule, and it imports torch._dynamo first:
    # without that module loaded nothing is compiled, and importing it here would take seconds.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(module, eval_frame.OptimizedModule)


def without_compiled_submodules(module: nn.Module) -> nn.Module:
    """``module`` with every compiled submodule replaced by the module it wraps, in place (for
    private copies only): its state-dict keys then have no ``_orig_mod`` in them.

    The order of parameters and buffers stays the same (a wrapper lists those it wraps).
    """
    module = unwrap_compiled(module)
    for parent in list(module.modules()):
        for name, child in parent._modules.items():
            if child is not None and _is_compiled(child):
                parent._modules[name] = unwrap_compiled(child)
    return module


def without_compile_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the ``_orig_mod`` components taken out of its keys: the state dict of a
    compiled module (``_orig_mod.critic.0.weight``) or of one with compiled submodules
    (``critic._orig_mod.0.weight``) as that of the plain module (``critic.0.weight``)."""
    return {_plain_key(key): value for key, value in state.items()}


def _plain_key(key: str) -> str:
    if _COMPILED not in key:
        return key
    return ".".join(part for part in key.split(".") if part != _COMPILED)


def compile_options(compile: object, has_copy: bool) -> dict[str, Any] | None:
    """The ``torch.compile`` keyword arguments of ``compile`` (``None``: run eager)."""
    if compile is False:
        return None
    if compile is True:
        options: dict[str, Any] = {}
    elif isinstance(compile, Mapping):
        options = dict(compile)
        try:
            inspect.signature(torch.compile).bind(None, **options)
        except TypeError as error:
            raise ValueError(f"compile: expected torch.compile's keyword arguments, got "
                             f"{describe(compile)}: {error}") from None
    else:
        raise bad_argument("compile", "True, False or a dict of torch.compile's keyword "
                           "arguments", compile)
    if not has_copy:
        raise bad_argument("compile", "False without a private copy to compile (copy_agent="
                           "False or no agent): the training agent is never changed", compile)
    return options


def compile_hooks(owner: object, names: tuple[str, ...], options: Mapping[str, Any]) -> None:
    """``owner``'s methods ``names``, compiled with ``options``, as instance attributes.

    The templates look hooks up on the instance at every query anyway, so evaluators that do
    not compile pay nothing. The compiled code reads the copy's tensors as inputs (torch guards
    on their shapes and dtypes, not their values): refreshes copy into them in place and need
    no recompilation.
    """
    for name in names:
        hook = getattr(type(owner), name).__get__(owner)  # the method, never a compiled one
        setattr(owner, name, torch.compile(hook, **options))
