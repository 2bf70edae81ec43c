"""Errors raised by syllabus_eval, and the helper that words them consistently."""

from __future__ import annotations


class EvaluationError(RuntimeError):
    """An evaluation failed (in the background or in a worker); the cause is chained."""


class EvaluationCancelled(EvaluationError):
    """An evaluation was stopped before its episodes ended (``EvalRunner.shutdown``)."""


def describe(value: object) -> str:
    """A short description of ``value`` for error messages: type, shape and dtype where known."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    if isinstance(value, dict):
        return f"dict with keys {sorted(map(str, value))}"
    return f"{type(value).__name__} {value!r}"[:200]


def bad_argument(name: str, expected: str, got: object) -> ValueError:
    """``ValueError`` naming the argument, what was expected and what came."""
    return ValueError(f"{name}: expected {expected}, got {describe(got)}")
