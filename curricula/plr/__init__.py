"""Prioritized Level Replay, in three rooms: the curriculum face
(:mod:`~syllabus_eval.curricula.plr.curriculum`), the score table and sampling equations
(:mod:`~syllabus_eval.curricula.plr.scores`) and the scoring worker
(:mod:`~syllabus_eval.curricula.plr.worker`).

Usage::

    from syllabus_eval.curricula import PrioritizedLevelReplay

    with PrioritizedLevelReplay(200, CleanRLEvaluator(agent), strategy="value_l1") as plr:
        ...
"""

from .curriculum import PrioritizedLevelReplay
from .scores import REPLAY_SCHEDULES, SCORE_TRANSFORMS, STRATEGIES

__all__ = ["REPLAY_SCHEDULES", "SCORE_TRANSFORMS", "STRATEGIES", "PrioritizedLevelReplay"]
