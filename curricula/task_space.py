"""Task spaces: the set of tasks a curriculum chooses from.

Usage::

    from syllabus_eval.curricula import DiscreteTaskSpace

    levels = DiscreteTaskSpace(200)                         # task ids 0, 1, ..., 199
    modes = DiscreteTaskSpace(["easy", "medium", "hard"])   # named tasks
    modes.index("hard")          # 2
    modes.from_name("medium")    # "medium": metric keys name tasks with str(task)
    modes.index("expert")        # ValueError: task: expected one of ['easy', 'medium', 'hard'] ...
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from syllabus_eval.errors import bad_argument

_SHOWN = 8  # tasks listed in an error message before "..."


class DiscreteTaskSpace:
    """A finite, ordered set of distinct tasks: ids or any hashable task values.

    Args:
        tasks: a number of tasks ``n`` (the ids ``0 .. n - 1``) or a sequence of distinct
            hashable task values (ints, strings, tuples, ...). ``str(task)`` names a task in
            metric keys such as ``eval/task/<task>/success``, so names must be distinct too.
    """

    def __init__(self, tasks: int | Sequence[Hashable]) -> None:
        if isinstance(tasks, (int, np.integer)) and not isinstance(tasks, bool):
            if tasks < 1:
                raise bad_argument("tasks", "a positive number of tasks", tasks)
            values: tuple = tuple(range(int(tasks)))
        elif isinstance(tasks, Iterable) and not isinstance(tasks, (str, bytes, dict)):
            values = tuple(tasks)
        else:
            raise bad_argument("tasks", "a number of tasks or a sequence of task values", tasks)
        if not values:
            raise bad_argument("tasks", "at least one task", tasks)
        for task in values:
            if not isinstance(task, Hashable):
                raise bad_argument("tasks", "hashable task values", task)
        self.tasks = values
        self._index = {task: i for i, task in enumerate(values)}
        self._by_name = {str(task): task for task in values}
        if len(self._index) != len(values):
            raise bad_argument("tasks", "distinct task values", tasks)
        if len(self._by_name) != len(values):
            raise bad_argument("tasks", "task values with distinct str() names", tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.tasks)

    def __contains__(self, task: Any) -> bool:
        return isinstance(task, Hashable) and task in self._index

    def __repr__(self) -> str:
        return f"DiscreteTaskSpace({self._listing()})"

    def index(self, task: Any, name: str = "task") -> int:
        """The position of ``task`` in the space; a clear ``ValueError`` if it is not there."""
        if task not in self:
            raise bad_argument(name, f"one of {self._listing()}", task)
        return self._index[task]

    def from_name(self, task_name: str) -> Hashable:
        """The task whose ``str()`` is ``task_name`` (how metric keys name tasks)."""
        try:
            return self._by_name[task_name]
        except (KeyError, TypeError):
            raise bad_argument("task name", f"one of {sorted(self._by_name)[:_SHOWN]}"
                               f"{' ...' if len(self) > _SHOWN else ''}", task_name) from None

    def _listing(self) -> str:
        shown = list(self.tasks[:_SHOWN])
        return f"{shown}{' ... (' + str(len(self)) + ' tasks)' if len(self) > _SHOWN else ''}"


def as_task_space(tasks: DiscreteTaskSpace | int | Sequence[Hashable]) -> DiscreteTaskSpace:
    """``tasks`` as a :class:`DiscreteTaskSpace` (a space is returned as it is)."""
    return tasks if isinstance(tasks, DiscreteTaskSpace) else DiscreteTaskSpace(tasks)
