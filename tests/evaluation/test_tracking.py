"""Best model, early stopping and callbacks: the saved file is the evaluated snapshot, it loads
back through the command line, the stopping rules fire when they should."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import pytest
import torch

from syllabus_eval import EpisodeRecord, EvalResult, EvalRunner, EvaluationError, cli
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from syllabus_eval.evaluation.checkpoints import FORMAT, load_checkpoint
from syllabus_eval.evaluation.tracking import ResultTracker
from tests.gates import set_action
from tests.workers import cartpole_agent, normalized_cartpole, trained_envs


def result(reward: float, step: int = 0) -> EvalResult:
    return EvalResult({"eval/reward": reward, "eval/episode_length": 5.0},
                      [EpisodeRecord(0, 0, reward, 5, True, False)], step)


class TestBestModel:
    def test_the_file_holds_the_evaluated_snapshot(self, agent, gate, tmp_path):
        best = tmp_path / "best.pt"
        news = []
        with gate.runner(agent, save_best=best, on_new_best=news.append,
                         busy_policy="queue") as runner:
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
        with EvalRunner(normalized_cartpole, CleanRLEvaluator(agent), num_envs=3,
                        num_episodes=6, max_steps=None, seed=4, save_best=best) as runner:
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
        tracker = ResultTracker(best_metric="eval/episode_length", best_mode="min")
        for length, best in ((5.0, True), (float("nan"), False), (7.0, False), (3.0, True)):
            r = result(1.0)
            r["eval/episode_length"] = length
            tracker.take(r, None)
            assert r.is_best is best
        assert tracker.best == 3.0

    def test_a_missing_metric_fails_the_evaluation(self, agent, gate, tmp_path):
        gate.open.set()
        with gate.runner(agent, save_best=tmp_path / "b.pt", best_metric="eval/success") as r, \
                pytest.raises(EvaluationError) as caught:
            r.evaluate()
        assert "best_metric: expected one of the result's metrics" in str(
            caught.value.__cause__)


class TestStopping:
    def test_stop_reward_needs_k_in_a_row(self):
        tracker = ResultTracker(stop_reward=(10.0, 2))
        for reward, stop in ((12.0, False), (9.0, False), (10.0, False), (11.0, True)):
            tracker.take(result(reward), None)
            assert tracker.should_stop is stop

    def test_stop_patience(self):
        tracker = ResultTracker(stop_patience=2)
        for reward, stop in ((1.0, False), (2.0, False), (2.0, False), (1.5, True)):
            tracker.take(result(reward), None)
            assert tracker.should_stop is stop

    @pytest.mark.parametrize("kwargs, rewards", [
        ({"stop_reward": (5.0, 2)}, (1.0, 6.0, 5.0, 5.0, 1.0)),
        ({"stop_patience": 2}, (1.0, 2.0, 2.0, 1.0, 3.0))])
    def test_once_fired_it_stays_fired(self, kwargs, rewards):
        # a loop that looks only after several results have landed must still stop
        tracker = ResultTracker(**kwargs)
        for reward in rewards:
            tracker.take(result(reward), None)
        assert tracker.should_stop

    def test_through_the_runner(self, agent, gate):
        gate.open.set()
        with gate.runner(agent, stop_reward=(5.0, 2)) as runner:
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
        with gate.runner(agent, on_result=[calls.append, failing, calls.append]) as runner:
            got = runner.evaluate(step=3)
        assert calls == [got, "failing", got]
        assert isinstance(got.on_result_error, KeyError)
        assert "on_result raised for the evaluation at step 3" in caplog.text


@pytest.mark.parametrize("kwargs, message", [
    ({"save_best": 3}, "save_best: expected a file path or None"),
    ({"best_mode": "best"}, r"best_mode: expected one of \['max', 'min'\]"),
    ({"best_metric": None}, "best_metric: expected a metric name"),
    ({"stop_reward": 475.0}, r"stop_reward: expected \(threshold, k\)"),
    ({"stop_reward": (475.0, 0)}, r"stop_reward\[1\]: expected an integer >= 1"),
    ({"stop_reward": (math.nan, 2)}, r"stop_reward\[0\]: expected a finite number"),
    ({"stop_patience": 0}, "stop_patience: expected an integer >= 1"),
    ({"on_new_best": "print"}, "on_new_best: expected a callable or None"),
    ({"on_result": [print, "log"]}, "on_result: expected a callable or None, or a list"),
    ({"eval_every": 0}, "eval_every: expected an integer >= 1"),
])
def test_bad_arguments(agent, gate, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gate.runner(agent, **kwargs)


@pytest.mark.parametrize("kwargs", [{"save_best": "best.pt"}, {"stop_patience": 3},
                                    {"save_best": "best.pt", "best_metric": "eval/task/1/reward"}])
def test_suites_need_a_suites_metric_before_anything_runs(agent, kwargs):
    with pytest.raises(ValueError, match="best_metric: with suites, expected a suite's metric "
                       "such as 'eval/train/reward'"):
        EvalRunner(lambda: gym.make("CartPole-v1"), CleanRLEvaluator(agent),
                   suites={"train": [1], "test": [2]}, **kwargs)


def test_save_best_needs_weights_before_anything_runs():
    with pytest.raises(ValueError, match="save_best: expected an evaluator whose agent has "
                       "weights to save, got DummyEvaluator"):
        EvalRunner(lambda: gym.make("CartPole-v1"), DummyEvaluator(gym.spaces.Discrete(2)),
                   save_best="best.pt")
