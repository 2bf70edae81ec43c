"""Adapters: one module per RL library, each overriding only the Evaluator's hooks.

Usage::

    from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator, MoolibEvaluator
"""

from .cleanrl import CleanRLEvaluator
from .dummy import DummyEvaluator
from .moolib import MoolibEvaluator

__all__ = ["CleanRLEvaluator", "DummyEvaluator", "MoolibEvaluator"]
