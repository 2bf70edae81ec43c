"""Adapters: one module per RL library, each overriding only the Evaluator's hooks.

Usage::

    from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator, MoolibEvaluator
    from syllabus_eval.adapters import SB3Evaluator, TorchRLEvaluator

``SB3Evaluator`` and ``TorchRLEvaluator`` import their libraries (optional extras) when they are
built, not here: this package imports without them.
"""

from .cleanrl import CleanRLEvaluator
from .dummy import DummyEvaluator
from .moolib import MoolibEvaluator
from .sb3 import SB3Evaluator
from .torchrl import TorchRLEvaluator

__all__ = ["CleanRLEvaluator", "DummyEvaluator", "MoolibEvaluator", "SB3Evaluator",
           "TorchRLEvaluator"]
