"""syllabus-eval: query a training RL agent from other threads, and evaluate it periodically.

Usage::

    from syllabus_eval import EvalRunner
    from syllabus_eval.adapters import CleanRLEvaluator
    evaluator = CleanRLEvaluator(agent)
    value, extras = evaluator.get_value(obs)
    metrics = EvalRunner(make_env, evaluator).evaluate(agent, step=step)
"""

from .errors import CurriculumError, EvaluationCancelled, EvaluationError, RemoteTraceback
from .evaluator import AgentInputs, Evaluator
from .protocols import (
    AgentQueries,
    PreviousStepQueries,
    RecurrentAgentQueries,
    SequenceQueries,
    WeightedAgentQueries,
    is_recurrent,
)
from .results import EvalResult, summarize
from .rollout import (
    EnvPool,
    EpisodeRecord,
    RolloutSettings,
    check_fit,
    episode_quota,
    make_envs,
    run_episodes,
)
from .runner import EvalRunner
from .snapshot import Snapshot
from .weights import WeightSource, snapshot_state_dict, weight_source

__all__ = ["AgentInputs", "AgentQueries", "CurriculumError", "EnvPool", "EpisodeRecord",
           "EvalResult", "EvalRunner", "EvaluationCancelled", "EvaluationError", "Evaluator",
           "PreviousStepQueries", "RecurrentAgentQueries", "RemoteTraceback", "RolloutSettings",
           "SequenceQueries", "Snapshot",
           "WeightSource", "WeightedAgentQueries", "check_fit", "episode_quota",
           "is_recurrent", "make_envs", "run_episodes", "snapshot_state_dict", "summarize",
           "weight_source"]
__version__ = "0.1.0"
