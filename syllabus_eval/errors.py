"""Errors raised by syllabus_eval, and the helper that words them consistently."""

from __future__ import annotations

import enum
import math
import pickle
import traceback
from contextlib import suppress
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TypeVar

import numpy as np


class EvaluationError(RuntimeError):
    """An evaluation failed (in the background or in a worker); the cause is chained."""


class EvaluationCancelled(EvaluationError):
    """An evaluation was stopped before its episodes ended (``EvalRunner.shutdown``)."""


class CurriculumError(EvaluationError):
    """A curriculum's background thread failed (PLR's scoring worker, learning progress's
    evaluations); the cause is chained. An :class:`EvaluationError`, as it was before it had a
    type of its own."""


class ArgumentError(ValueError):
    """A bad argument: a ``ValueError`` that carries the argument's name as a field, so that
    code reporting it under another name (a command-line option, a suite's entry) renames it
    with :meth:`renamed` instead of parsing the message.

    Attributes:
        argument: the argument's name (``"num_envs"``, ``"suites['test']"``, ``"--results"``).
        message: the rest: what was expected and what came.
    """

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument, self.message = argument, message

    def __reduce__(self) -> tuple:  # pickled as built (errors come back from workers)
        return type(self), (self.argument, self.message)

    def renamed(self, argument: str) -> ArgumentError:
        """The same error, naming ``argument`` instead."""
        return type(self)(argument, self.message)


class RemoteTraceback(Exception):
    """The traceback, as text, of an exception raised in a worker: its copy's ``__cause__``."""

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class RemoteFailure:
    """An exception raised in another process (an evaluation worker, a hosted curriculum), as
    it travels back: pickled where possible, and as text."""

    pickled: bytes | None
    summary: str  # "ValueError: message"
    traceback: str

    @classmethod
    def of(cls, error: BaseException) -> RemoteFailure:
        try:
            pickled = pickle.dumps(error)
        except Exception:  # an exception that holds something unpicklable
            pickled = None
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        return cls(pickled, f"{type(error).__name__}: {error}", text)

    def exception(self, fallback: type[Exception] = EvaluationError,
                  raiser: str = "a worker") -> BaseException:
        """The exception itself where it unpickles here (else a ``fallback`` naming it, as
        raised by ``raiser``), caused by its traceback in the other process."""
        error = None
        if self.pickled is not None:
            with suppress(Exception):  # e.g. its class cannot be imported here
                error = pickle.loads(self.pickled)
        if not isinstance(error, BaseException):
            error = fallback(f"{raiser} raised {self.summary}")
        error.__cause__ = RemoteTraceback(f'\n"""\n{self.traceback}"""')
        return error


def describe(value: object) -> str:
    """A short description of ``value`` for error messages: type, shape and dtype where known."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and len(shape) == 0 and hasattr(value, "item"):
        # a NumPy or torch scalar: its value says more than "of shape ()"
        kind = type(value).__name__
        return (f"{kind} {value.item()!r}" if isinstance(value, np.generic)
                else f"{kind} {value.item()!r} of dtype {dtype}")
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    if isinstance(value, dict):
        return f"dict with keys {sorted(map(str, value))}"
    return f"{type(value).__name__} {value!r}"[:200]


def bad_argument(name: str, expected: str, got: object) -> ArgumentError:
    """An :class:`ArgumentError` (a ``ValueError``) naming the argument, what was expected and
    what came."""
    return ArgumentError(name, f"expected {expected}, got {describe(got)}")


def check_number(name: str, value: object, low: float, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float between ``low`` and ``high`` (each included unless open)."""
    if high == math.inf:
        bounds = f"{'>' if low_open else '>='} {low}"
    else:
        bounds = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        raise bad_argument(name, f"a finite number {bounds}", value)
    if (value < low or value > high or (low_open and value == low)
            or (high_open and value == high)):
        raise bad_argument(name, f"a number {bounds}", value)
    return float(value)


def check_count(name: str, value: object, low: int = 1) -> int:
    """``value`` as an int (numpy's included) of at least ``low``."""
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
        raise bad_argument(name, f"an integer >= {low}", value)
    return int(value)


def check_flag(name: str, value: object, *, none_ok: bool = False) -> None:
    """``value`` is a bool (numpy's included), or ``None`` where ``none_ok``."""
    if value is None and none_ok:
        return
    if not isinstance(value, (bool, np.bool_)):
        raise bad_argument(name, "True, False or None" if none_ok else "True or False", value)


class Choice(str, enum.Enum):
    """A mode named by a string (Gymnasium's ``AutoresetMode``): each member *is* its string,
    so that plain strings keep working wherever a member goes, and prints as it."""

    def __str__(self) -> str:
        return str(self.value)

    def __hash__(self) -> int:  # as its string's: equal to it, so found where it is a key
        return str.__hash__(self)


ChoiceT = TypeVar("ChoiceT", bound=Choice)


def check_choice(name: str, value: object, choices: type[ChoiceT]) -> ChoiceT:
    """``value`` (a member or its string) as a member of ``choices``; an
    :class:`ArgumentError` naming ``name`` and listing the valid strings otherwise."""
    if isinstance(value, choices):
        return value
    if isinstance(value, str):
        with suppress(ValueError):
            return choices(value)
    raise bad_argument(name, f"one of {[member.value for member in choices]}", value)


class MovedArgumentError(TypeError):
    """A keyword argument that moved into a settings object: a ``TypeError`` (as for any
    unexpected keyword) that carries the old name and where it went as fields.

    Attributes:
        argument: the old keyword (``"eval_every"``).
        new_home: what to pass instead (``"schedule=EvalSchedule(every=...)"``).
    """

    def __init__(self, argument: str, new_home: str) -> None:
        super().__init__(f"{argument}= moved: pass {new_home}")
        self.argument, self.new_home = argument, new_home

    def __reduce__(self) -> tuple:
        return type(self), (self.argument, self.new_home)
