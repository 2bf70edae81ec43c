"""Domain randomization (uniform sampling) and the curriculum base it is built on."""

from collections import Counter

import numpy as np
import pytest

from syllabus_eval.curricula import Curriculum, DomainRandomization, Experience


class TestUniformSampling:
    def test_distribution_is_uniform(self):
        np.testing.assert_allclose(DomainRandomization(4).distribution(), [0.25] * 4)

    def test_samples_cover_the_tasks_evenly(self):
        tasks = ["a", "b", "c", "d"]
        counts = Counter(DomainRandomization(tasks, seed=0).sample(8000))
        assert set(counts) == set(tasks)
        assert all(abs(n - 2000) < 200 for n in counts.values())  # ~5 standard deviations

    def test_seeded_sampling_repeats(self):
        assert DomainRandomization(10, seed=3).sample(20) == DomainRandomization(
            10, seed=3).sample(20)

    def test_it_needs_no_experience(self):
        curriculum = DomainRandomization(2)
        assert curriculum.wants_experience is False
        curriculum.observe(Experience("close", 0))  # ignored


class TestCurriculumBase:
    def test_a_subclass_only_gives_its_distribution(self):
        class OnlyLast(Curriculum):
            def distribution(self):
                return np.eye(len(self.task_space))[-1]

        with OnlyLast(["x", "y", "z"], seed=0) as curriculum:
            assert curriculum.sample(5) == ["z"] * 5

    def test_without_a_distribution(self):
        with pytest.raises(NotImplementedError, match="Curriculum does not implement"):
            Curriculum(2).sample()

    @pytest.mark.parametrize("k", [0, -1, 1.5, True])
    def test_bad_k(self, k):
        with pytest.raises(ValueError, match="k: expected an integer >= 1"):
            DomainRandomization(2).sample(k)
