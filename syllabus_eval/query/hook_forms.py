"""The two forms a hook may be written in: ours, and that of Syllabus's custom-evaluator template.

Usage (what :class:`~syllabus_eval.Evaluator` does when a subclass is created)::

    hook_form(MyEvaluator, "_prepare_lstm")   # HookForm.OURS: (lstm_state, done, batch_size),
                                              # HookForm.SYLLABUS: (lstm_state, done)

A user porting an evaluator written from Syllabus's documentation keeps its hooks as written:
``_prepare_lstm(self, lstm_state, done)`` returning ``(lstm_state, done)``,
``_set_eval_mode(self)`` returning nothing, ``_set_train_mode(self)``, and a ``_prepare_state``
that starts with ``self._preprocess_obs``. Which form a class uses is read once, from its
signatures, when the class is created; queries then only look at a flag.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from syllabus_eval.errors import Choice, bad_argument


class HookForm(Choice):
    """The form a hook is written in."""

    OURS = "ours"
    SYLLABUS = "syllabus"  # Syllabus's custom-evaluator template


# The hooks a subclass may write in either of two forms: ours, and that of Syllabus's
# custom-evaluator template (positional arguments after self, and how each is written; in the
# order of HookForm). The form is read once, at class creation; queries then look at a flag.
HOOK_FORMS = {
    "_prepare_state": ((1, "_prepare_state(self, state)"),),
    "_prepare_lstm": ((3, "_prepare_lstm(self, lstm_state, done, batch_size)"),
                      (2, "_prepare_lstm(self, lstm_state, done) -> (lstm_state, done)")),
    "_set_eval_mode": ((0, "_set_eval_mode(self) -> previous modes"),
                       (0, "_set_eval_mode(self), returning nothing")),
    "_set_train_mode": ((1, "_set_train_mode(self, previous)"),
                        (0, "_set_train_mode(self)")),
}
FROM_QUERY = object()  # _set_train_mode() without an argument: what the running query saved


class NoPreprocessing:
    """``_preprocess_obs`` when none was given: callable (the identity) and false, so that
    Syllabus-style code that tests it (``if self._preprocess_obs:``) skips it, and code that
    tests ``is not None`` or just calls it gets the observations back unchanged."""

    __slots__ = ()

    def __call__(self, state: Any) -> Any:
        return state

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<no preprocess_obs>"


NO_PREPROCESSING = NoPreprocessing()


def hook_form(cls: type, name: str) -> HookForm:
    """Which of the forms in ``HOOK_FORMS`` ``cls`` writes hook ``name`` in; a ``TypeError``
    naming both when it is neither."""
    raw = inspect.getattr_static(cls, name)
    function = getattr(raw, "__func__", raw)  # a staticmethod or classmethod's function
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # not introspectable (a builtin): taken as ours
        return HookForm.OURS
    forms = HOOK_FORMS[name]
    receivers = 0 if isinstance(raw, staticmethod) else 1  # self (or cls)
    for form, (arguments, _) in zip(HookForm, forms):
        try:
            signature.bind(*[None] * (receivers + arguments))
        except TypeError:
            continue
        return form
    accepted = " (ours) or ".join(text for _, text in forms)
    if len(forms) > 1:
        accepted += " (Syllabus's custom-evaluator template)"
    raise TypeError(f"{cls.__name__}.{name}{signature}: expected the hook's signature "
                    f"{accepted}")


class PreprocessAlias:
    """``_preprocess_obs``, Syllabus's name for ``preprocess_obs`` (its template's
    ``_prepare_state`` calls it): one attribute behind both names, so that setting either
    changes what queries use. Reading it always gives a callable: without a
    ``preprocess_obs``, :data:`NO_PREPROCESSING`."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        function = instance.preprocess_obs
        return NO_PREPROCESSING if function is None else function

    def __set__(self, instance: Any, function: Callable[[Any], Any] | None) -> None:
        if function is not None and not callable(function):
            raise bad_argument("_preprocess_obs", "a callable or None", function)
        instance.preprocess_obs = None if function is NO_PREPROCESSING else function
