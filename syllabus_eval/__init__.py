"""syllabus-eval: query a training RL agent from other threads, and evaluate it periodically.

Usage::

    from syllabus_eval import EvalRunner
    from syllabus_eval.adapters import CleanRLEvaluator
    evaluator = CleanRLEvaluator(agent)
    value, extras = evaluator.get_value(obs)
    metrics = EvalRunner(make_env, evaluator).evaluate(agent, step=step)
    # the parts: EnvSpec, EpisodeSettings, EvalSchedule, SaveBest, ProcessBackend, ...
"""

from syllabus_eval import moved
from syllabus_eval.errors import (
    CurriculumError,
    EvaluationCancelled,
    EvaluationError,
    RemoteTraceback,
)
from syllabus_eval.evaluation.backend_settings import (
    AutoBackend,
    BackendKind,
    ProcessBackend,
    RayBackend,
    ThreadBackend,
)
from syllabus_eval.evaluation.runner import EvalRunner
from syllabus_eval.evaluation.schedule import BusyPolicy, EvalSchedule
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.evaluation.tracking import (
    BestMode,
    ResultCallback,
    SaveBest,
    StopOnNoImprovement,
    StopOnReward,
)
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
    EnvSpec,
    EpisodeRecord,
    EpisodeSettings,
    RolloutSettings,
    VectorizationMode,
    VideoSelect,
    VideoSettings,
    check_fit,
    episode_quota,
    make_envs,
    run_episodes,
)

__all__ = ["AgentInputs", "AgentQueries", "AutoBackend", "BackendKind", "BestMode",
           "BusyPolicy", "CurriculumError", "EnvPool", "EnvSpec", "EpisodeRecord",
           "EpisodeSettings", "EvalResult", "EvalRunner", "EvalSchedule",
           "EvaluationCancelled", "EvaluationError", "Evaluator", "ProcessBackend",
           "RayBackend", "ResultCallback", "SaveBest", "StopOnNoImprovement", "StopOnReward",
           "ThreadBackend", "VectorizationMode", "VideoSelect", "VideoSettings",
           "PreviousStepQueries", "RecurrentAgentQueries", "RemoteTraceback", "RolloutSettings",
           "SequenceQueries", "Snapshot",
           "WeightSource", "WeightedAgentQueries", "check_fit", "episode_quota",
           "is_recurrent", "make_envs", "run_episodes", "snapshot_state_dict", "summarize",
           "weight_source"]
moved.install()
__version__ = "0.1.0"
