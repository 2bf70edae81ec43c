"""Evaluation suites: one snapshot on several task sets, each with its own quota, reported per
suite with the generalization gap; the same numbers in every backend for one seed."""

from __future__ import annotations

import pytest

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, SaveBest
from syllabus_eval.demo.envs import CartPoleTasks
from syllabus_eval.evaluation.backends import as_backend
from tests.fake_envs import TaskEnv
from tests.workers import cartpole, cartpole_evaluator, task_evaluator

SUITES = {"train": [1, 2], "test": [3]}  # TaskEnv: task t returns t * (t + 1)


class TestSuites:
    def test_each_suite_is_reported_apart_with_the_gap(self):
        with EvalRunner(EnvSpec(TaskEnv, num_envs=2), task_evaluator(), num_episodes=4,
                        suites=SUITES) as runner:
            result = runner.evaluate(step=5)
        assert result["eval/train/reward"] == pytest.approx((2 + 6) / 2)
        assert result["eval/test/reward"] == 12.0
        assert result["eval/generalization_gap"] == pytest.approx(4.0 - 12.0)
        assert result["eval/train/num_episodes"] == result["eval/test/num_episodes"] == 4
        assert result["eval/num_episodes"] == 8
        assert result["eval/train/task/1/reward"] == 2.0
        assert result["eval/train/task/2/num_episodes"] == 2
        assert result["eval/test/task/3/success"] == 0.0  # odd tasks fail
        assert "eval/reward" not in result  # a mean over train and test would mean nothing
        assert [r.suite for r in result.episodes] == ["test"] * 4 + ["train"] * 4

    def test_without_train_and_test_no_gap(self):
        with EvalRunner(EnvSpec(TaskEnv, num_envs=2), task_evaluator(), num_episodes=2,
                        suites={"easy": [0], "hard": [4]}) as runner:
            result = runner.evaluate()
        assert "eval/generalization_gap" not in result
        assert (result["eval/easy/reward"], result["eval/hard/reward"]) == (0.0, 20.0)

    def test_best_by_a_suites_metric(self, tmp_path):
        with EvalRunner(EnvSpec(TaskEnv, num_envs=2), task_evaluator(), num_episodes=2,
                        suites=SUITES,
                        callbacks=[SaveBest(tmp_path / "best.pt", metric="eval/test/reward")]) as r:
            assert r.evaluate().is_best

    @pytest.mark.parametrize("kwargs, message", [
        ({"suites": SUITES, "tasks": [1]}, "tasks: expected None with suites"),
        ({"suites": {}}, "suites: expected a non-empty dict"),
        ({"suites": {"a/b": [1]}}, "suite: expected a suite name without '/'"),
        ({"suites": {"train": []}}, r"suites\['train'\]: expected a non-empty list"),
        ({"suites": {"train": "abc"}}, r"suites\['train'\]: expected a non-empty list"),
    ])
    def test_bad_suites(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            EvalRunner(EnvSpec(TaskEnv, num_envs=2), task_evaluator(), **kwargs)


SUITED = {"suites": {"train": ["standard", "long-pole"], "test": ["heavy-cart"]},
          "info_keys": {"success": "last"}}  # the info_keys go to EpisodeSettings


@pytest.mark.parametrize("backend", ["process", "ray"])
@pytest.mark.parametrize("make_env, options, keys", [
    (cartpole, {}, ["eval/reward_ci_low"]),
    (CartPoleTasks, SUITED, ["eval/test/task/heavy-cart/reward_ci_low", "eval/train/info/success",
                             "eval/train/task/long-pole/reward_iqm", "eval/generalization_gap"])],
    ids=["plain", "suites-tasks-info"])
def test_identical_numbers_in_every_backend(backend, make_env, options, keys, request):
    """One seed: the same episodes, so the same means, intervals, IQM, and per-suite,
    per-task and info keys."""
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    options = dict(options)
    episodes = EpisodeSettings(seed=3, max_steps=200, info_keys=options.pop("info_keys", None))
    kwargs = {"num_episodes": 12, "episodes": episodes, **options}
    envs = EnvSpec(make_env, num_envs=4)
    with EvalRunner(envs, cartpole_evaluator(seed=1), **kwargs) as runner:
        expected = runner.evaluate(step=1)
    workers = as_backend(backend, evaluator_fn=cartpole_evaluator, num_workers=2)
    with EvalRunner(envs, cartpole_evaluator(seed=1), backend=workers, **kwargs) as runner:
        got = runner.evaluate(step=1)
    del expected["eval/fps"], got["eval/fps"]
    assert all(key in got for key in keys), sorted(got)
    assert got == expected
