"""syllabus-eval: query a training RL agent from other threads, and evaluate it periodically.

Usage::

    from syllabus_eval import EvalRunner
    from syllabus_eval.adapters import CleanRLEvaluator
    evaluator = CleanRLEvaluator(agent)
    value, extras = evaluator.get_value(obs)
    metrics = EvalRunner(make_env, evaluator).evaluate(agent, step=step)
"""

from syllabus_eval import moved
from syllabus_eval.errors import (
    CurriculumError,
    EvaluationCancelled,
    EvaluationError,
    RemoteTraceback,
)
from syllabus_eval.evaluation.runner import EvalRunner
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.query.evaluator import AgentInputs, Evaluator
from syllabus_eval.query.protocols import (
    AgentQueries,
    PreviousStepQueries,
    RecurrentAgentQueries,
    SequenceQueries,
    WeightedAgentQueries,
    is_recurrent,
)
from syllabus_eval.query.weights import WeightSource, snapshot_state_dict, weight_source
from syllabus_eval.results.metrics import EvalResult, summarize
from syllabus_eval.rollout import (
    EnvPool,
    EpisodeRecord,
    RolloutSettings,
    check_fit,
    episode_quota,
    make_envs,
    run_episodes,
)

__all__ = ["AgentInputs", "AgentQueries", "CurriculumError", "EnvPool", "EpisodeRecord",
           "EvalResult", "EvalRunner", "EvaluationCancelled", "EvaluationError", "Evaluator",
           "PreviousStepQueries", "RecurrentAgentQueries", "RemoteTraceback", "RolloutSettings",
           "SequenceQueries", "Snapshot",
           "WeightSource", "WeightedAgentQueries", "check_fit", "episode_quota",
           "is_recurrent", "make_envs", "run_episodes", "snapshot_state_dict", "summarize",
           "weight_source"]
moved.install()
__version__ = "0.1.0"
