"""Discrete task spaces: ids, named tasks, and clear errors for tasks not in the space."""

import numpy as np
import pytest

from syllabus_eval.curricula import DiscreteTaskSpace
from syllabus_eval.curricula.task_space import as_task_space


class TestTaskIds:
    def test_a_count_gives_ids_from_zero(self):
        space = DiscreteTaskSpace(3)
        assert space.tasks == (0, 1, 2)
        assert len(space) == 3 and list(space) == [0, 1, 2]

    def test_numpy_integers_are_the_same_tasks(self):
        space = DiscreteTaskSpace(np.int64(4))
        assert np.int64(2) in space
        assert space.index(np.int64(3)) == 3


class TestNamedTasks:
    def test_index_and_membership(self):
        space = DiscreteTaskSpace(["easy", "medium", "hard"])
        assert space.index("hard") == 2
        assert "medium" in space and "expert" not in space and [1] not in space

    def test_from_name_reads_metric_key_names(self):
        space = DiscreteTaskSpace([0.5, 1.0, (2, "b")])
        assert space.from_name("1.0") == 1.0
        assert space.from_name("(2, 'b')") == (2, "b")

    def test_as_task_space_keeps_a_space(self):
        space = DiscreteTaskSpace(2)
        assert as_task_space(space) is space
        assert as_task_space(["a"]).tasks == ("a",)


class TestErrors:
    def test_task_not_in_space_names_argument_and_tasks(self):
        space = DiscreteTaskSpace(["easy", "hard"])
        with pytest.raises(ValueError, match=r"task: expected one of \['easy', 'hard'\], "
                                             r"got str 'expert'"):
            space.index("expert")

    def test_long_spaces_are_abbreviated(self):
        with pytest.raises(ValueError, match=r"\.\.\. \(100 tasks\)"):
            DiscreteTaskSpace(100).index(100)

    def test_unknown_name(self):
        with pytest.raises(ValueError, match="task name: expected one of"):
            DiscreteTaskSpace(["a"]).from_name("b")

    @pytest.mark.parametrize("tasks, expected", [
        (0, "a positive number of tasks"),
        ([], "at least one task"),
        ("abc", "a number of tasks or a sequence"),
        (True, "a number of tasks or a sequence"),
        ([1, 1], "distinct task values"),
        ([1, "1"], "task values with distinct str"),
        ([[1], [2]], "hashable task values"),
    ])
    def test_bad_task_sets(self, tasks, expected):
        with pytest.raises(ValueError, match=f"tasks: expected {expected}"):
            DiscreteTaskSpace(tasks)
