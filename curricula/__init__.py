"""Curricula that query the training agent (imported as ``syllabus_eval.curricula``).

Usage::

    from syllabus_eval.adapters import CleanRLEvaluator
    from syllabus_eval.curricula import CurriculumWrapper, PrioritizedLevelReplay

    with PrioritizedLevelReplay(200, CleanRLEvaluator(agent)) as plr:
        envs = gym.vector.SyncVectorEnv(
            [lambda: CurriculumWrapper(make_env(), plr) for _ in range(8)])
        ...   # each reset plays a task drawn by PLR; a worker thread scores what is played

Off the training process, the same curriculum is built from a factory in a worker process
(:class:`LocalCurriculumServer`, weights through shared memory) or a Ray actor
(:class:`RayCurriculumServer`, env actors on any node); wrappers take ``server.client``::

    with LocalCurriculumServer(make_plr, agent=agent) as server:
        envs = gym.vector.SyncVectorEnv(
            [lambda: CurriculumWrapper(make_env(), server.client) for _ in range(8)])

Curricula take any object with the Evaluator's query methods
(:class:`~syllabus_eval.AgentQueries`), never a specific adapter.
"""

from syllabus_eval.query.advantages import gae  # the core's GAE, which PLR scores its segments with

from .curriculum import Curriculum, Experience, TaskSource
from .domain_randomization import DomainRandomization
from .hosted import LocalCurriculumServer, RayCurriculumServer
from .learnability import Learnability
from .learning_progress import LearningProgressCurriculum
from .plr import PrioritizedLevelReplay
from .task_space import DiscreteTaskSpace
from .wrappers import CurriculumClient, CurriculumServer, CurriculumWrapper

__all__ = ["Curriculum", "CurriculumClient", "CurriculumServer", "CurriculumWrapper",
           "DiscreteTaskSpace", "DomainRandomization", "Experience", "Learnability",
           "LearningProgressCurriculum", "LocalCurriculumServer", "PrioritizedLevelReplay",
           "RayCurriculumServer", "TaskSource", "gae"]
