"""Best model, early stopping and callbacks: the saved file is the evaluated snapshot, it loads
back through the command line, the stopping rules fire when they should."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import pytest
import torch

from syllabus_eval import (
    EnvSpec,
    EpisodeRecord,
    EpisodeSettings,
    EvalResult,
    EvalRunner,
    EvalSchedule,
    EvaluationError,
    SaveBest,
    StopOnNoImprovement,
    StopOnReward,
    cli,
)
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from syllabus_eval.evaluation.checkpoints import FORMAT, load_checkpoint
from syllabus_eval.evaluation.tracking import ResultCallback, ResultTracker
from syllabus_eval.results.loggers import JSONLinesLogger
from tests.gates import set_action
from tests.workers import cartpole_agent, normalized_cartpole, trained_envs


def result(reward: float, step: int = 0) -> EvalResult:
    return EvalResult({"eval/reward": reward, "eval/episode_length": 5.0},
                      [EpisodeRecord(0, 0, reward, 5, True, False)], step)


class TestBestModel:
    def test_the_file_holds_the_evaluated_snapshot(self, agent, gate, tmp_path):
        best = tmp_path / "best.pt"
        news = []
        with gate.runner(agent, schedule=EvalSchedule(busy_policy="queue"),
                         callbacks=[SaveBest(best, on_new_best=news.append)]) as runner:
            evaluated = {k: v.clone() for k, v in agent.state_dict().items()}
            runner.trigger_eval(agent, step=100)
            set_action(agent, 0)  # training changes the weights while it is evaluated
            gate.open.set()
            first = runner.wait(30)
            second = runner.evaluate(agent, step=200)  # worse: return 0
        assert first.is_best and not second.is_best and news == [first]
        saved = load_checkpoint(best)
        assert saved.step == 100 and saved.metrics["eval/reward"] == 5.0
        assert saved.state_dict.keys() == evaluated.keys()
        assert all(torch.equal(saved.state_dict[k], evaluated[k]) for k in evaluated)
        assert not torch.equal(saved.state_dict["actor.4.bias"], agent.state_dict()[
            "actor.4.bias"])
        assert torch.load(best, weights_only=True)["format"] == FORMAT

    def test_with_observation_statistics_it_loads_back_through_the_cli(self, tmp_path):
        envs, agent = trained_envs(), cartpole_agent(seed=3)
        best = tmp_path / "best.pt"
        with EvalRunner(EnvSpec(normalized_cartpole, num_envs=3), CleanRLEvaluator(agent),
                        num_episodes=6, episodes=EpisodeSettings(max_steps=None, seed=4),
                        callbacks=[SaveBest(best)]) as runner:
            evaluated = runner.evaluate(agent, step=7, obs_norm=envs)
        assert load_checkpoint(best).obs_norm is not None
        out = tmp_path / "metrics.json"
        assert cli.main(["evaluate", "--env", "CartPole-v1", "--agent",
                         "syllabus_eval.demo.agents:MLPAgent", "--checkpoint", str(best),
                         "--episodes", "6", "--num-envs", "3", "--seed", "4",
                         "--json", str(out)]) == 0
        metrics = json.loads(out.read_text())
        for key in ("eval/reward", "eval/episode_length", "eval/num_episodes"):
            assert metrics[key] == evaluated[key]
        # without the statistics the same weights do otherwise: they were needed
        state = load_checkpoint(best).state_dict
        torch.save(state, tmp_path / "plain.pt")
        assert cli.main(["evaluate", "--env", "CartPole-v1", "--agent",
                         "syllabus_eval.demo.agents:MLPAgent", "--checkpoint",
                         str(tmp_path / "plain.pt"), "--episodes", "6", "--num-envs", "3",
                         "--seed", "4", "--json", str(out)]) == 0
        plain = json.loads(out.read_text())
        assert (plain["eval/reward"], plain["eval/reward_std"]) != (
            evaluated["eval/reward"], evaluated["eval/reward_std"])
        envs.close()

    def test_min_mode_and_nan(self, tmp_path):
        tracker = ResultTracker(SaveBest(None, metric="eval/episode_length", mode="min"))
        for length, best in ((5.0, True), (float("nan"), False), (7.0, False), (3.0, True)):
            r = result(1.0)
            r["eval/episode_length"] = length
            tracker.take(r, None)
            assert r.is_best is best
        assert tracker.best == 3.0

    def test_a_missing_metric_fails_the_evaluation(self, agent, gate, tmp_path):
        gate.open.set()
        with gate.runner(agent,
                         callbacks=[SaveBest(tmp_path / "b.pt", metric="eval/success")]) as r, \
                pytest.raises(EvaluationError) as caught:
            r.evaluate()
        assert "metric: expected one of the result's metrics" in str(
            caught.value.__cause__)


class TestStopping:
    def test_stop_reward_needs_k_in_a_row(self):
        tracker = ResultTracker(StopOnReward(10.0, times=2))
        for reward, stop in ((12.0, False), (9.0, False), (10.0, False), (11.0, True)):
            tracker.take(result(reward), None)
            assert tracker.should_stop is stop

    def test_stop_patience(self):
        tracker = ResultTracker(StopOnNoImprovement(2))
        for reward, stop in ((1.0, False), (2.0, False), (2.0, False), (1.5, True)):
            tracker.take(result(reward), None)
            assert tracker.should_stop is stop

    @pytest.mark.parametrize("rule, rewards", [
        (lambda: StopOnReward(5.0, times=2), (1.0, 6.0, 5.0, 5.0, 1.0)),
        (lambda: StopOnNoImprovement(2), (1.0, 2.0, 2.0, 1.0, 3.0))])
    def test_once_fired_it_stays_fired(self, rule, rewards):
        # a loop that looks only after several results have landed must still stop
        tracker = ResultTracker(rule())
        for reward in rewards:
            tracker.take(result(reward), None)
        assert tracker.should_stop

    def test_through_the_runner(self, agent, gate):
        gate.open.set()
        with gate.runner(agent, callbacks=[StopOnReward(5.0, times=2)]) as runner:
            runner.evaluate(step=1)
            assert not runner.should_stop
            runner.evaluate(step=2)
            assert runner.should_stop and runner.best == 5.0


class TestCallbacks:
    def test_a_list_runs_in_order_and_one_failing_stops_no_other(self, agent, gate, caplog):
        calls = []

        def failing(result):
            calls.append("failing")
            raise KeyError("boom")

        gate.open.set()
        with gate.runner(agent, callbacks=[calls.append, failing, calls.append]) as runner:
            got = runner.evaluate(step=3)
        assert calls == [got, "failing", got]
        assert isinstance(got.on_result_error, KeyError)
        assert "a callback raised for the evaluation at step 3" in caplog.text


@pytest.mark.parametrize("make, message", [
    (lambda: SaveBest(3), "path: expected a file path or None"),
    (lambda: SaveBest("b.pt", mode="best"), r"mode: expected one of \['max', 'min'\]"),
    (lambda: SaveBest("b.pt", metric=None), "metric: expected a metric name"),
    (lambda: StopOnReward(475.0, times=0), "times: expected an integer >= 1"),
    (lambda: StopOnReward(math.nan, times=2), "threshold: expected a finite number"),
    (lambda: StopOnNoImprovement(0), "patience: expected an integer >= 1"),
    (lambda: SaveBest("b.pt", on_new_best="print"), "on_new_best: expected a callable or None"),
    (lambda: EvalSchedule(every=0), "every: expected an integer >= 1"),
])
def test_each_part_checks_its_fields(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_callbacks_must_be_callable(agent, gate):
    with pytest.raises(ValueError, match="callbacks: expected a callable or None, or a list"):
        gate.runner(agent, callbacks=[print, "log"])


def test_ranking_callbacks_must_agree(agent, gate):
    with pytest.raises(ValueError, match="callbacks: expected callbacks that rank results by "
                                         "one metric and mode"):
        gate.runner(agent, callbacks=[SaveBest(None), StopOnNoImprovement(3, mode="min")])


@pytest.mark.parametrize("callbacks", [
    [SaveBest("best.pt")], [StopOnNoImprovement(3)],
    [SaveBest("best.pt", metric="eval/task/1/reward")]])
def test_suites_need_a_suites_metric_before_anything_runs(agent, callbacks):
    with pytest.raises(ValueError, match="metric: expected with suites, a suite's metric "
                       "such as 'eval/train/reward'"):
        EvalRunner(lambda: gym.make("CartPole-v1"), CleanRLEvaluator(agent),
                   suites={"train": [1], "test": [2]}, callbacks=callbacks)


def test_save_best_needs_weights_before_anything_runs():
    with pytest.raises(ValueError, match="evaluator: expected an evaluator whose agent has "
                       "weights to save"):
        EvalRunner(lambda: gym.make("CartPole-v1"), DummyEvaluator(gym.spaces.Discrete(2)),
                   callbacks=[SaveBest("best.pt")])


class TestSettingsOnRecord:
    def test_every_part_is_in_the_results_json(self, agent, gate, tmp_path):
        """The typed parts' fields, as ``dataclasses.asdict`` gives them, land beside the
        results: on each result and as the JSON-lines logger's settings line."""
        gate.open.set()
        path = tmp_path / "eval.jsonl"
        with JSONLinesLogger(path, settings=True) as log, gate.runner(
                agent, num_envs=3, episodes=EpisodeSettings(max_steps=50, seed=9, ci=None),
                schedule=EvalSchedule(every=100, busy_policy="queue"), backend="thread",
                callbacks=[log, StopOnReward(4.0, times=2)]) as runner:
            first, second = runner.evaluate(step=1), runner.evaluate(step=2)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines) == 3 and lines[1:] == [dict(first), dict(second)]  # written once
        recorded = lines[0]["settings"]
        assert first.settings == recorded == runner.settings
        episodes = {"type": "EpisodeSettings", "max_steps": 50, "deterministic": True,
                    "seed": 9, "interchangeable_slots": False, "success_key": "success",
                    "info_keys": None, "ci": None}
        assert recorded["episodes"] == episodes
        assert recorded["envs"]["num_envs"] == 3
        assert recorded["envs"]["vectorization_mode"] == "sync"
        assert recorded["envs"]["factory"].endswith("Gate.make_env")
        assert recorded["schedule"] == {"type": "EvalSchedule", "every": 100,
                                        "busy_policy": "queue"}
        assert recorded["backend"] == {"type": "ThreadBackend"}
        assert recorded["callbacks"][1] == {"type": "StopOnReward", "threshold": 4.0,
                                            "times": 2, "metric": "eval/reward", "mode": "max"}
        assert recorded["num_episodes"] == 4 and recorded["video"] is None


class TestUserCallbacks:
    def test_a_callback_of_ones_own_with_should_stop_stops_the_runner(self, agent, gate):
        class StopAfter:
            """Not a ResultCallback: any callable with ``should_stop`` counts."""

            def __init__(self, results: int) -> None:
                self.left, self.should_stop = results, False

            def __call__(self, result) -> None:
                self.left -= 1
                self.should_stop = self.left <= 0

        gate.open.set()
        with gate.runner(agent, callbacks=[print, StopAfter(2)]) as runner:
            runner.evaluate(step=1)
            assert not runner.should_stop
            runner.evaluate(step=2)
            assert runner.should_stop

    def test_a_result_callback_gets_the_evaluated_snapshot(self, agent, gate):
        seen = []

        class Snapshots(ResultCallback):
            def on_result(self, result, snapshot):
                seen.append((result.step, snapshot.step, snapshot.weights is not None))

        gate.open.set()
        with gate.runner(agent, callbacks=Snapshots()) as runner:
            runner.evaluate(step=7)
        assert seen == [(7, 7, True)]
