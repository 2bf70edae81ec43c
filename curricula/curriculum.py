"""The curriculum base: a task space, ``sample(k)``, and the experience stream some curricula read.

Usage::

    import numpy as np
    from syllabus_eval.curricula import Curriculum

    class FirstTaskOften(Curriculum):
        def distribution(self):
            weights = np.ones(len(self.task_space))
            weights[0] = 10.0
            return weights / weights.sum()

    with FirstTaskOften(["easy", "hard"], seed=0) as curriculum:
        tasks = curriculum.sample(4)          # e.g. ["easy", "easy", "hard", "easy"]

Curricula that learn from play (:class:`~syllabus_eval.curricula.PrioritizedLevelReplay`) set
``wants_experience`` and read :class:`Experience` records through :meth:`Curriculum.observe`;
:class:`~syllabus_eval.curricula.CurriculumWrapper` sends them from each environment.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from syllabus_eval.errors import check_count

from .task_space import DiscreteTaskSpace, as_task_space


class Experience(NamedTuple):
    """One record of one environment's stream, in the order the environment produced it.

    ``kind`` is ``"reset"`` (an episode of ``task`` starts at ``obs``), ``"step"`` (the env
    stepped to ``obs``, with ``reward``, ``terminated``, ``truncated``) or ``"close"`` (the
    env is gone). ``env_id`` tells the streams of different environments apart. A stream that
    only knows ``done`` passes it as ``terminated`` (PLR then never bootstraps at time limits).
    """

    kind: str
    env_id: Hashable
    task: Any = None
    obs: Any = None
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False


EXPERIENCE_KINDS = ("reset", "step", "close")


@runtime_checkable
class TaskSource(Protocol):
    """What :class:`~syllabus_eval.curricula.CurriculumWrapper` needs: a curriculum or a client.

    ``observe`` of a ``close`` record should not raise a failure the curriculum reports
    elsewhere: the wrapper's ``close`` would pass it on and stop a vector env's ``close`` at
    its first sub-env.
    """

    wants_experience: bool

    def sample(self, k: int = 1) -> list: ...

    def observe(self, experience: Experience) -> None: ...


class Curriculum:
    """Base class: draws tasks from ``distribution()``, one at a time, under a lock.

    Args:
        task_space: a :class:`DiscreteTaskSpace`, a number of tasks or a sequence of tasks.
        seed: seeds the sampler.

    Subclasses implement :meth:`distribution`; those that need the per-step stream set
    ``wants_experience = True`` and override :meth:`observe`. :meth:`sample` is thread-safe.
    """

    wants_experience: ClassVar[bool] = False

    def __init__(self, task_space: DiscreteTaskSpace | int | Sequence[Hashable], *,
                 seed: int | None = None) -> None:
        self.task_space = as_task_space(task_space)
        self._rng = np.random.default_rng(seed)
        # Reentrant: sample() holds it while distribution() (public, so locking too) runs.
        self._lock = threading.RLock()

    def sample(self, k: int = 1) -> list:
        """``k`` tasks to play, each drawn independently from the current distribution."""
        check_count("k", k)
        self._check()
        tasks = self.task_space.tasks
        with self._lock:
            drawn = []
            for _ in range(k):
                index = int(self._rng.choice(len(tasks), p=self.distribution()))
                self._sampled(index)
                drawn.append(tasks[index])
            return drawn

    def distribution(self) -> np.ndarray:
        """The probability of each task (in task-space order) for the next draw: ``[N]``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement distribution")

    def observe(self, experience: Experience) -> None:
        """Take one record of an environment's stream (ignored unless ``wants_experience``)."""

    def observe_batch(self, records: Sequence[Experience]) -> None:
        """Take records of environments' streams, in order (a hosted curriculum's client
        batch); :meth:`observe` of each unless a subclass takes them at once."""
        for experience in records:
            self.observe(experience)

    def close(self) -> None:
        """Stop background work, if any, and raise a failure nobody was told of yet."""

    def _sampled(self, index: int) -> None:
        """Hook: task ``index`` was just drawn (PLR's staleness counts draws)."""

    def _check(self) -> None:
        """Hook: raise a background failure before serving a caller."""

    def __enter__(self) -> Curriculum:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
