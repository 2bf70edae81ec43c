"""syllabus-eval: query a training RL agent from other threads, and evaluate it periodically.

Usage::

    from syllabus_eval.adapters import CleanRLEvaluator
    evaluator = CleanRLEvaluator(agent)
    value, extras = evaluator.get_value(obs)
"""

from .errors import EvaluationError
from .evaluator import AgentInputs, AgentQueries, Evaluator
from .weights import WeightSource, snapshot_state_dict, weight_source

__all__ = ["AgentInputs", "AgentQueries", "EvaluationError", "Evaluator", "WeightSource",
           "snapshot_state_dict", "weight_source"]
__version__ = "0.1.0"
