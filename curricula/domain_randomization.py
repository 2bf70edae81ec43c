"""Domain randomization: every task equally likely, the baseline curricula are compared with.

Usage::

    from syllabus_eval.curricula import DomainRandomization

    curriculum = DomainRandomization(["easy", "medium", "hard"], seed=0)
    curriculum.sample(3)        # three tasks drawn uniformly, with replacement
"""

from __future__ import annotations

import numpy as np

from .curriculum import Curriculum


class DomainRandomization(Curriculum):
    """Uniform sampling over the task space; it needs nothing from the agent or the envs.

    Args:
        task_space: a :class:`DiscreteTaskSpace`, a number of tasks or a sequence of tasks.
        seed: seeds the sampler.
    """

    def distribution(self) -> np.ndarray:
        count = len(self.task_space)
        return np.full(count, 1.0 / count)
