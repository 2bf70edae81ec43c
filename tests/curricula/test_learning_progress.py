"""Learning progress on scripted success rates, given directly, as metrics, or in the background."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from syllabus_eval import CurriculumError, EvaluationError
from syllabus_eval.curricula import LearningProgressCurriculum

RISING, FALLING, FLAT = [0.0, 0.4, 0.8], [0.8, 0.4, 0.0], [0.5, 0.5, 0.5]


def fed(rounds, tasks=("a", "b", "c"), **kwargs):
    """A curriculum (fast 0.5, slow 0.25, no reweighting unless given) fed ``rounds``."""
    kwargs = {"fast_rate": 0.5, "slow_rate": 0.25, "p_theta": 0.5, **kwargs}
    curriculum = LearningProgressCurriculum(list(tasks), seed=0, **kwargs)
    for rates in rounds:
        curriculum.update_success_rates(rates)
    return curriculum


def metrics(rates):
    return {f"eval/task/{task}/success": rate for task, rate in rates.items()}


SCRIPT = [{"a": a, "b": b, "c": c} for a, b, c in zip(RISING, FALLING, FLAT)]


class TestMovingAverages:
    def test_fast_and_slow_by_hand(self):
        # a: fast 0 -> 0.2 -> 0.5, slow 0 -> 0.1 -> 0.275
        # b: fast 0.8 -> 0.6 -> 0.3, slow 0.8 -> 0.7 -> 0.525
        rates = fed(SCRIPT).success_rates()
        assert rates == {"a": pytest.approx((0.5, 0.275)), "b": pytest.approx((0.3, 0.525)),
                         "c": pytest.approx((0.5, 0.5))}

    def test_first_measurement_sets_both(self):
        curriculum = fed([{"a": 0.7}])
        assert curriculum.success_rates() == {"a": (0.7, 0.7)}
        assert curriculum.num_updates == 1


class TestLearningProgress:
    def test_progress_is_bidirectional(self):
        progress = fed(SCRIPT).learning_progress()
        np.testing.assert_allclose(progress, [0.225, 0.225, 0.0])  # learning, forgetting, flat

    def test_reweighting_favours_low_success(self):
        # r(p) = 0.9 p / (p + 0.1 (1 - 2p)): r(0.5) = 0.9, r(0.275) = 0.2475 / 0.32
        progress = fed(SCRIPT, p_theta=0.1).learning_progress()
        assert progress[0] == pytest.approx(0.9 - 0.2475 / 0.32)

    def test_unmeasured_tasks_have_no_progress_yet(self):
        assert np.isnan(fed([{"a": 0.2}]).learning_progress()[1:]).all()


class TestSampling:
    def test_sigmoid_of_z_scored_progress(self):
        curriculum = fed(SCRIPT)
        progress = np.array([0.225, 0.225, 0.0])
        weights = 1 / (1 + np.exp(-(progress - progress.mean()) / progress.std()))
        np.testing.assert_allclose(curriculum.distribution(), weights / weights.sum())

    def test_progressing_tasks_are_sampled_most(self):
        tasks = fed(SCRIPT).sample(3000)
        assert tasks.count("c") < min(tasks.count("a"), tasks.count("b")) / 2

    def test_never_measured_tasks_get_the_highest_weight(self):
        distribution = fed(SCRIPT, tasks=("a", "b", "c", "d")).distribution()
        assert distribution[3] == distribution.max() > distribution[0]

    def test_uniform_before_any_measurement_or_without_differences(self):
        np.testing.assert_allclose(fed([]).distribution(), [1 / 3] * 3)
        np.testing.assert_allclose(fed([{"a": 0.5, "b": 0.1, "c": 1.0}]).distribution(),
                                   [1 / 3] * 3)


class TestMetricsInterface:
    def test_reads_per_task_success_keys_only(self):
        curriculum = fed([])
        curriculum.on_result({**metrics({"a": 0.3}), "eval/reward": 5.0,
                              "eval/task/b/reward": 1.0, "eval/step": 100})
        assert curriculum.success_rates() == {"a": (0.3, 0.3)}

    def test_names_of_non_string_tasks(self):
        curriculum = LearningProgressCurriculum([0.25, 1.0, (2, 3)])
        curriculum.on_result({"eval/task/1.0/success": 0.5, "eval/task/(2, 3)/success": 1.0})
        assert curriculum.success_rates() == {1.0: (0.5, 0.5), (2, 3): (1.0, 1.0)}

    def test_same_as_the_direct_interface(self):
        via_metrics = fed([])
        for rates in SCRIPT:
            via_metrics.on_result(metrics(rates))
        assert via_metrics.success_rates() == fed(SCRIPT).success_rates()

    @pytest.mark.parametrize("bad, message", [
        ({"eval/reward": 1.0}, "metrics: expected per-task success rates under keys "
                               "'eval/task/<task>/success'"),
        ({"eval/task/z/success": 0.5}, "task name: expected one of"),
        ([("eval/task/a/success", 0.5)], "metrics: expected a metrics dict"),
    ])
    def test_bad_metrics(self, bad, message):
        with pytest.raises(ValueError, match=message):
            fed([]).on_result(bad)


class TestBackgroundEvaluation:
    def test_periodic_measurements_feed_the_curriculum(self, no_leaked_threads):
        returned, enough = [], threading.Event()

        def evaluate():
            rates = SCRIPT[min(len(returned), len(SCRIPT) - 1)]
            returned.append(rates)
            if len(returned) >= len(SCRIPT):
                enough.set()
            return metrics(rates)

        curriculum = LearningProgressCurriculum(
            ["a", "b", "c"], fast_rate=0.5, slow_rate=0.25, evaluate_fn=evaluate,
            eval_interval=0.01)
        assert enough.wait(30)
        curriculum.close()
        assert curriculum.num_updates == len(returned) >= len(SCRIPT)
        assert curriculum.success_rates() == fed(returned, p_theta=0.1).success_rates()

    def test_close_does_not_wait_for_the_interval(self, no_leaked_threads):
        started = threading.Event()

        def evaluate():
            started.set()
            return metrics({"a": 0.5})

        with LearningProgressCurriculum(["a"], evaluate_fn=evaluate, eval_interval=3600.0):
            assert started.wait(30)

    def test_failures_surface(self, no_leaked_threads):
        def evaluate():
            raise RuntimeError("evaluation crashed")

        curriculum = LearningProgressCurriculum(["a"], evaluate_fn=evaluate)
        with pytest.raises(EvaluationError, match="evaluation crashed") as info:
            curriculum.close()
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(EvaluationError):
            curriculum.sample()
        curriculum.close()  # reported already


NON_FINITE = [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"),
              (np.float32(np.nan), "nan"), (np.float64(np.inf), "inf")]


class TestNonFiniteRates:
    """A NaN or inf success rate never enters the moving averages (issue #19)."""

    @pytest.mark.parametrize("rate, shown", NON_FINITE)
    @pytest.mark.parametrize("interface", ["update_success_rates", "on_result"])
    def test_refused_whole_and_named(self, rate, shown, interface):
        curriculum = fed(SCRIPT[:2])
        rates, distribution = curriculum.success_rates(), curriculum.distribution()
        bad = {"a": 0.9, "b": rate}
        with pytest.raises(ValueError, match=rf"rates\['b'\]: expected a finite number in "
                                             rf"\[0.0, 1.0\], got float {shown}$"):
            if interface == "on_result":
                curriculum.on_result(metrics(bad))
            else:
                curriculum.update_success_rates(bad)
        assert curriculum.success_rates() == rates  # "a" is not applied either
        assert curriculum.num_updates == 2
        np.testing.assert_array_equal(curriculum.distribution(), distribution)
        assert np.isfinite(curriculum.learning_progress()).all()

    def test_from_evaluate_fn_fails_the_background_thread(self, no_leaked_threads):
        returned = []

        def evaluate():
            returned.append(len(returned))
            return metrics(SCRIPT[0] if len(returned) == 1 else {"a": math.nan})

        curriculum = LearningProgressCurriculum(["a", "b", "c"], evaluate_fn=evaluate,
                                                eval_interval=0.0)
        with pytest.raises(CurriculumError, match="LearningProgressCurriculum evaluation "
                                                  "failed") as info:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the second evaluation fails the thread
                curriculum.sample()
        assert "rates['a']: expected a finite number" in str(info.value.__cause__)
        assert curriculum.success_rates() == fed(SCRIPT[:1]).success_rates()
        assert np.isfinite(curriculum.distribution()).all()
        curriculum.close()  # reported already


class TestBadInputs:
    def test_a_bad_rate_changes_nothing(self):
        curriculum = fed([])
        with pytest.raises(ValueError, match=r"rates\['b'\]: expected a number in \[0.0, 1.0\]"):
            curriculum.update_success_rates({"a": 0.5, "b": 1.5})
        assert curriculum.success_rates() == {}

    @pytest.mark.parametrize("rates, message", [
        ({"z": 0.5}, "rates: expected one of"),
        ({}, "rates: expected a non-empty dict"),
        ([0.5], "rates: expected a non-empty dict"),
        ({"a": "high"}, r"rates\['a'\]: expected a finite number"),
    ])
    def test_bad_rates(self, rates, message):
        with pytest.raises(ValueError, match=message):
            fed([]).update_success_rates(rates)

    @pytest.mark.parametrize("kwargs, message", [
        ({"slow_rate": 0.5, "fast_rate": 0.5}, "slow_rate: expected a step size below"),
        ({"fast_rate": 0.0}, r"fast_rate: expected a number in \(0.0, 1.0\]"),
        ({"p_theta": 1.0}, r"p_theta: expected a number in \(0.0, 1.0\)"),
        ({"evaluate_fn": 3}, "evaluate_fn: expected a callable"),
        ({"eval_interval": -1}, "eval_interval: expected a number >"),
    ])
    def test_bad_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            LearningProgressCurriculum(2, **kwargs)
