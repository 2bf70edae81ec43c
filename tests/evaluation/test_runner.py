"""EvalRunner: blocking and background evaluations, busy policies, weights, failures, lifecycle."""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import threading
import traceback
import warnings

import gymnasium as gym
import pytest
import torch

from syllabus_eval import (
    EnvSpec,
    EpisodeSettings,
    EvalResult,
    EvalRunner,
    EvalSchedule,
    EvaluationCancelled,
    EvaluationError,
    RolloutSettings,
)
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.errors import ArgumentError, MovedArgumentError
from tests.fake_envs import EndlessEnv, FixedLengthEnv, LengthEnv, TaskEnv
from tests.gates import SPACES, set_action

CARTPOLE = lambda: gym.make("CartPole-v1")  # noqa: E731

@pytest.fixture(autouse=True)
def no_runner_thread_left():
    yield
    assert not [t for t in threading.enumerate() if t.name == "syllabus-eval-runner"]


class TestEvaluate:
    def test_cartpole_metrics(self):
        with EvalRunner(EnvSpec(CARTPOLE, num_envs=8),
                        CleanRLEvaluator(MLPAgent(gym.make_vec("CartPole-v1"))),
                        num_episodes=20) as runner:
            result = runner.evaluate(step=3)
        assert isinstance(result, EvalResult)
        assert {"eval/reward", "eval/reward_std", "eval/episode_length", "eval/num_episodes",
                "eval/fps", "eval/step"} <= set(result)
        assert result["eval/num_episodes"] == len(result.episodes) == 20
        assert result["eval/step"] == result.step == 3
        assert result["eval/reward"] == pytest.approx(
            sum(r.reward for r in result.episodes) / 20)

    @pytest.mark.parametrize("vectorization_mode", ["sync", "async"])
    def test_same_seed_same_metrics(self, vectorization_mode):
        with EvalRunner(EnvSpec(LengthEnv, num_envs=3, vectorization_mode=vectorization_mode),
                        DummyEvaluator(LengthEnv.action_space), num_episodes=7,
                        episodes=EpisodeSettings(seed=4)) as runner:
            first, second = runner.evaluate(), runner.evaluate()
        assert first.episodes == second.episodes
        assert {k: v for k, v in first.items() if k != "eval/fps"} == {
            k: v for k, v in second.items() if k != "eval/fps"}

    def test_per_task_metrics(self):
        with EvalRunner(EnvSpec(TaskEnv, num_envs=2), DummyEvaluator(TaskEnv.action_space),
                        num_episodes=6, tasks=[1, 2]) as runner:
            result = runner.evaluate()
        assert result["eval/task/1/reward"] == 2.0 and result["eval/task/2/reward"] == 6.0
        assert result["eval/task/1/success"] == 0.0 and result["eval/task/2/success"] == 1.0
        assert result["eval/task/1/num_episodes"] == result["eval/task/2/num_episodes"] == 3

    def test_progress_bar_on_request(self, capsys):
        with EvalRunner(EnvSpec(LengthEnv, num_envs=2), DummyEvaluator(LengthEnv.action_space),
                        num_episodes=3, progress=True) as runner:
            runner.evaluate()
        assert "evaluation" in capsys.readouterr().err


class TestBackground:
    def test_poll_is_none_until_done_then_wait_returns(self, agent, gate):
        with gate.runner(agent) as runner:
            assert runner.poll() is None and runner.wait() is None  # nothing triggered
            assert runner.trigger_eval(step=7) is True
            assert gate.stepping.wait(10)
            assert runner.pending and runner.poll() is None
            with pytest.raises(TimeoutError, match="step 7 is still running"):
                runner.wait(timeout=0.01)
            gate.open.set()
            result = runner.wait(timeout=30)
            assert result["eval/step"] == 7 and result["eval/reward"] == 5.0
            assert not runner.pending
            assert runner.poll() is None and runner.wait() is None  # returned once

    def test_poll_returns_a_finished_result(self, agent, gate):
        gate.open.set()
        with gate.runner(agent) as runner:
            runner.trigger_eval(step=1)
            while runner.pending:
                threading.Event().wait(0.01)
            assert runner.poll()["eval/step"] == 1


class TestDefaultBackend:
    """The default (``"auto"``): blocking evaluations in the runner's thread, never a worker;
    background ones in a worker (tests/evaluation/backends/test_auto.py), else here, said once."""

    def test_blocking_evaluations_start_no_worker_and_say_nothing(self, agent, gate):
        gate.open.set()
        with warnings.catch_warnings():
            warnings.filterwarnings("error", "EvalRunner: background")
            with gate.runner(agent) as runner:  # envs that cannot travel: no matter here
                assert runner.evaluate(step=1)["eval/reward"] == 5.0
                assert runner.final_eval(agent, step=2)["eval/reward"] == 5.0
                assert runner._backend.background is None  # nothing was decided
        assert multiprocessing.active_children() == []

    def test_background_evaluations_that_cannot_leave_stay_with_one_warning(self, agent, gate):
        gate.open.set()
        with gate.runner(agent, schedule=EvalSchedule(busy_policy="queue")) as runner, \
                pytest.warns(RuntimeWarning, match="env_fn: expected a serializable env "
                                                   "factory") as caught:
            for step in (1, 2, 3):
                assert runner.trigger_eval(step=step)
            assert [runner.wait(30)["eval/reward"] for _ in range(3)] == [5.0] * 3
        assert len([w for w in caught if "runner's thread" in str(w.message)]) == 1


class TestBusyPolicies:
    def test_error(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(busy_policy="error")) as runner:
            runner.trigger_eval(step=1)
            with pytest.raises(RuntimeError, match="an evaluation is still pending"):
                runner.trigger_eval(step=2)
            with pytest.raises(RuntimeError, match="an evaluation is still pending"):
                runner.evaluate(step=2)
            gate.open.set()
            assert runner.wait(30).step == 1
            assert runner.trigger_eval(step=3)  # free again
            assert runner.wait(30).step == 3

    def test_skip(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(busy_policy="skip")) as runner:
            assert runner.trigger_eval(step=1) is True
            assert runner.trigger_eval(step=2) is False
            gate.open.set()
            assert runner.wait(30).step == 1
            assert runner.wait(30) is None

    def test_queue_runs_in_order(self, agent, gate):
        calls = []
        with gate.runner(agent, schedule=EvalSchedule(busy_policy="queue"),
                         callbacks=lambda r: calls.append(
                             (r.step, threading.current_thread().name))) as runner:
            assert runner.trigger_eval(step=1) and runner.trigger_eval(step=2)
            gate.open.set()
            blocking = runner.evaluate(step=3)  # runs after the queued ones
            assert [runner.wait(30).step, runner.wait(30).step, blocking.step] == [1, 2, 3]
        assert calls == [(step, "syllabus-eval-runner") for step in (1, 2, 3)]


class TestOnResult:
    def test_called_once_per_evaluation_before_wait_returns(self, agent, gate):
        gate.open.set()
        seen = []
        with gate.runner(agent, callbacks=seen.append) as runner:
            runner.trigger_eval(step=1)
            result = runner.wait(30)
            assert seen == [result]
            runner.evaluate(step=2)
        assert [r.step for r in seen] == [1, 2]

    def test_an_exception_is_reported_and_the_runner_goes_on(self, agent, gate, caplog):
        gate.open.set()

        def broken(result):
            raise KeyError("logger unavailable")

        with gate.runner(agent, callbacks=broken) as runner, \
                caplog.at_level(logging.ERROR, logger="syllabus_eval"):
            runner.trigger_eval(step=1)
            result = runner.wait(30)
            assert isinstance(result.on_result_error, KeyError)
            assert "a callback raised for the evaluation at step 1" in caplog.text
            assert "logger unavailable" in caplog.text  # with its traceback
            assert runner.evaluate(step=2)["eval/reward"] == 5.0


class TestWeights:
    def test_snapshot_at_trigger(self, agent, gate):
        with gate.runner(agent) as runner:
            runner.trigger_eval(agent, step=1)
            set_action(agent, 0)  # training moves on while the evaluation waits
            gate.open.set()
            assert runner.wait(30)["eval/reward"] == 5.0
            assert runner.evaluate(agent, step=2)["eval/reward"] == 0.0

    def test_default_weights_are_the_training_agents_at_trigger(self, agent, gate):
        with gate.runner(agent) as runner:
            runner.trigger_eval(step=1)
            set_action(agent, 0)
            gate.open.set()
            assert runner.wait(30)["eval/reward"] == 5.0
            assert runner.evaluate(step=2)["eval/reward"] == 0.0

    def test_the_step_travels_beside_the_weights_version(self, agent, gate):
        gate.open.set()
        with gate.runner(agent) as runner:  # the evaluator's weight source counts from here
            optimizer = torch.optim.SGD(agent.parameters(), lr=0.0)
            for _ in range(3):  # three optimizer steps, at training step 4096 (vector envs)
                optimizer.step()
            result = runner.evaluate(step=4096)
            assert (result.step, result["eval/step"], result.weights_version) == (4096, 4096, 3)
            assert runner._backend.episodes.evaluator.weights_version == 3  # what was loaded
            other = runner.evaluate(MLPAgent(SPACES).state_dict(), step=5000)
            assert (other.step, other.weights_version) == (5000, None)  # a state dict: unknown

    def test_state_dict_weights(self, agent, gate):
        gate.open.set()
        other = MLPAgent(SPACES)
        set_action(other, 0)
        with gate.runner(agent) as runner:
            assert runner.evaluate(other.state_dict())["eval/reward"] == 0.0
            assert runner.evaluate(agent)["eval/reward"] == 5.0

    def test_the_training_agent_is_left_alone(self, agent, gate):
        gate.open.set()
        before = {k: v.clone() for k, v in agent.state_dict().items()}
        agent.train()
        with gate.runner(agent) as runner:
            runner.evaluate(step=1)
        assert agent.training
        assert all(torch.equal(before[k], v) for k, v in agent.state_dict().items())

    @pytest.mark.parametrize(("weights", "message"), [
        ({"actor.0.weight": torch.zeros(1)}, "weights: expected the keys and shapes of "
                                             "MLPAgent's state dict"),
        ([1, 2], "weights: expected an nn.Module, a state dict or None"),
    ])
    def test_bad_weights(self, agent, gate, weights, message):
        with gate.runner(agent) as runner, pytest.raises(ValueError, match=message):
            runner.trigger_eval(weights)
        assert not runner.pending

    @pytest.mark.parametrize("step", ["100", 1.5, True])
    def test_bad_step(self, agent, gate, step):
        with gate.runner(agent) as runner, pytest.raises(
                ValueError, match=r"step: expected an int \(the training step\) or None, got"):
            runner.trigger_eval(step=step)
        assert not runner.pending

    def test_weights_for_an_evaluator_without_any(self):
        with EvalRunner(EnvSpec(LengthEnv, num_envs=2), DummyEvaluator(LengthEnv.action_space),
                        num_episodes=2) as runner, \
                pytest.raises(ValueError, match="weights: expected None: DummyEvaluator"):
            runner.evaluate(MLPAgent(SPACES))


class TestFailures:
    def test_env_error_surfaces_from_wait_and_the_next_evaluation_works(self, agent, gate,
                                                                         caplog):
        gate.open.set()
        gate.crash.set()
        with gate.runner(agent) as runner:
            runner.trigger_eval(step=1)
            with pytest.raises(EvaluationError, match="step 1 failed") as caught:
                runner.wait(30)
            # logged as it happened, for loops that only listen to on_result
            assert any(record.levelno == logging.ERROR and "at step 1 failed" in record.message
                       and "the env exploded" in record.message for record in caplog.records)
            cause = caught.value.__cause__
            assert isinstance(cause, RuntimeError) and str(cause) == "the env exploded"
            frames = [frame.name for frame in traceback.extract_tb(cause.__traceback__)]
            assert frames[-1] == "step" and "run_episodes" in frames  # the original traceback
            gate.crash.clear()
            runner.trigger_eval(step=2)
            assert runner.wait(30)["eval/reward"] == 5.0
            gate.crash.set()
            with pytest.raises(EvaluationError, match="step 3 failed"):
                runner.evaluate(step=3)  # blocking evaluations raise the same way

    def test_shutdown_mid_evaluation_is_bounded_and_leaves_no_thread(self):
        before = set(threading.enumerate())
        stepping = threading.Event()
        runner = EvalRunner(EnvSpec(lambda: EndlessEnv(stepping), num_envs=2),
                            CleanRLEvaluator(MLPAgent(SPACES)), num_episodes=2,
                            episodes=EpisodeSettings(max_steps=None),
                            schedule=EvalSchedule(busy_policy="queue"))
        runner.trigger_eval(step=1)
        runner.trigger_eval(step=2)  # queued behind an evaluation that never ends
        assert stepping.wait(10)
        assert runner.shutdown(timeout=10) is True
        assert set(threading.enumerate()) == before
        for step in (1, 2):
            with pytest.raises(EvaluationError, match=f"step {step} failed") as caught:
                runner.wait()
            assert isinstance(caught.value.__cause__, EvaluationCancelled)
        with pytest.raises(RuntimeError, match="shut down"):
            runner.trigger_eval()
        assert runner.shutdown() is True  # twice is fine

    def test_a_trigger_racing_shutdown_fails_instead_of_hanging(self, agent, gate):
        runner = gate.runner(agent)
        gate.open.set()
        runner.evaluate(step=0)  # the runner's thread is up
        snapshotting, release = threading.Event(), threading.Event()
        snapshot = runner._snapshot

        def slow_snapshot(*args):  # shutdown lands while the weights are being copied
            snapshotting.set()
            release.wait(10)
            return snapshot(*args)

        runner._snapshot = slow_snapshot
        outcome = []
        trigger = threading.Thread(target=lambda: outcome.append(_call(runner.trigger_eval)))
        trigger.start()
        assert snapshotting.wait(10)
        assert runner.shutdown(timeout=10) is True
        release.set()
        trigger.join(10)
        assert isinstance(outcome[0], RuntimeError) and "shut down" in str(outcome[0])
        assert not runner.pending

    def test_context_manager_shuts_down(self, agent, gate):
        before = set(threading.enumerate())
        gate.open.set()
        with gate.runner(agent) as runner:
            runner.evaluate()
            assert len(set(threading.enumerate()) - before) == 1
        assert set(threading.enumerate()) == before


class TestMaxSteps:
    """``max_steps`` is off by default: episodes run to the env's own end; a cut that is asked
    for is counted and announced, never silent."""

    def test_by_default_episodes_run_to_their_end(self):
        # 2,500-step episodes, Atari-length: a default cut at 1000 would report 1000.
        make_env = lambda: FixedLengthEnv(2500)  # noqa: E731
        with EvalRunner(EnvSpec(make_env, num_envs=2), DummyEvaluator(FixedLengthEnv.action_space),
                        num_episodes=2) as runner, warnings.catch_warnings():
            warnings.simplefilter("error")
            result = runner.evaluate()
        assert result["eval/reward"] == 2500.0
        assert result["eval/truncated"] == result["eval/max_steps_cut"] == 0

    def test_a_cut_is_counted_per_task_and_warned_once(self):
        with EvalRunner(EnvSpec(TaskEnv, num_envs=2), DummyEvaluator(TaskEnv.action_space),
                        num_episodes=6, tasks=[1, 5],
                        episodes=EpisodeSettings(max_steps=3)) as runner:
            with pytest.warns(RuntimeWarning, match="max_steps=3 cut 3 of 6 episodes"):
                result = runner.evaluate()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                runner.evaluate()  # once per runner
        # Task 1 lasts 2 steps, task 5 six: each of its 3 episodes is cut at 3.
        assert result["eval/max_steps_cut"] == result["eval/truncated"] == 3
        assert result["eval/task/5/max_steps_cut"] == 3
        assert result["eval/task/1/max_steps_cut"] == 0
        assert result["eval/task/5/reward"] == 15.0  # 3 steps of reward 5

    def test_the_env_time_limit_is_truncation_but_no_cut(self):
        with EvalRunner(EnvSpec(CARTPOLE, num_envs=2), DummyEvaluator(gym.spaces.Discrete(2)),
                        num_episodes=2) as runner:
            result = runner.evaluate()
        truncated = sum(r.truncated for r in result.episodes)
        assert result["eval/truncated"] == truncated and result["eval/max_steps_cut"] == 0


class TestBadArguments:
    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"num_episodes": 0}, "num_episodes: expected an integer >= 1, got int 0"),
        ({"envs": 3}, "factory: expected a callable returning a gymnasium Env"),
        ({"backend": "gpu"},
         r"backend: expected one of \['auto', 'thread', 'process', 'ray'\], got str 'gpu'"),
        ({"backend": 3}, "backend: expected one of .* or a backend object"),
        ({"episodes": {"seed": 1}}, "episodes: expected a EpisodeSettings or None"),
        ({"episodes": RolloutSettings(4)}, "episodes: expected an EpisodeSettings"),
        ({"schedule": 100}, "schedule: expected a EvalSchedule or None"),
        ({"video": "videos"}, "video: expected a VideoSettings or None"),
        ({"callbacks": "print"}, "callbacks: expected a callable or None"),
        ({"metrics_fn": 3}, "metrics_fn: expected a callable or None"),
        ({"progress": "yes"}, "progress: expected True or False"),
        ({"evaluator": object()}, "evaluator: expected an Evaluator"),
        ({"envs": EnvSpec(LengthEnv, num_envs=4)},
         "envs: the env's single_observation_space Box"),
        ({"envs": EnvSpec(lambda: gym.vector.SyncVectorEnv([CARTPOLE] * 2), num_envs=4)},
         "num_envs: expected 2, the size of the VectorEnv"),
    ])
    def test_clear_errors(self, kwargs, message):
        arguments = {"envs": EnvSpec(CARTPOLE, num_envs=4),
                     "evaluator": CleanRLEvaluator(MLPAgent(gym.make_vec("CartPole-v1"))),
                     **kwargs}
        with pytest.raises(ValueError, match=message):
            EvalRunner(**arguments)

    @pytest.mark.parametrize(("make", "message"), [
        (lambda: EnvSpec(CARTPOLE, num_envs=0), "num_envs: expected an integer >= 1"),
        (lambda: EnvSpec(CARTPOLE, num_envs=-1), "num_envs: expected an integer >= 1, got int -1"),
        (lambda: EnvSpec(CARTPOLE, num_envs=2.5),
         "num_envs: expected an integer >= 1, got float 2.5"),
        (lambda: EnvSpec(CARTPOLE, num_envs=True),
         "num_envs: expected an integer >= 1, got bool True"),
        (lambda: EnvSpec(CARTPOLE, vectorization_mode="fast"),
         r"vectorization_mode: expected one of \['sync', 'async'\]"),
        (lambda: EnvSpec(CARTPOLE, set_task=3), "set_task: expected a callable"),
        (lambda: EpisodeSettings(seed=-1), "seed: expected an integer >= 0, got int -1"),
        (lambda: EpisodeSettings(seed="0"), "seed: expected an integer >= 0, got str '0'"),
        (lambda: EpisodeSettings(interchangeable_slots="yes"),
         "interchangeable_slots: expected True or False"),
        (lambda: EpisodeSettings(max_steps=-1), "max_steps: expected an integer >= 1"),
        (lambda: EpisodeSettings(ci=1.0), r"ci: expected a number in \(0.0, 1.0\)"),
        (lambda: EpisodeSettings(info_keys={"x": "median"}), r"info_keys\['x'\]: expected one"),
        (lambda: EvalSchedule(busy_policy="wait"),
         r"busy_policy: expected one of \['skip', 'queue', 'error'\]"),
    ])
    def test_each_part_checks_its_fields(self, make, message):
        with pytest.raises(ValueError, match=message) as caught:
            make()
        assert isinstance(caught.value, ArgumentError)  # the field's name is a field too
        assert message.split(":")[0].replace("\\", "") == caught.value.argument

    @pytest.mark.parametrize(("old", "home"), [
        ({"eval_every": 100}, r"eval_every= moved: pass schedule=EvalSchedule\(every=...\)"),
        ({"busy_policy": "queue"}, r"schedule=EvalSchedule\(busy_policy=...\)"),
        ({"num_envs": 4}, r"num_envs= moved: pass envs=EnvSpec\(make_env, num_envs=...\)"),
        ({"save_best": "b.pt"}, r"callbacks=\[SaveBest\(path\)\]"),
        ({"stop_reward": (1.0, 2)}, r"StopOnReward\(threshold, times=k\)"),
        ({"stop_patience": 3}, r"StopOnNoImprovement\(patience\)"),
        ({"on_result": print}, r"callbacks=\[...\]"),
        ({"video_dir": "v"}, r"video=VideoSettings\(folder=...\)"),
        ({"max_steps": 9}, r"episodes=EpisodeSettings\(max_steps=...\)"),
        ({"num_workers": 2}, r"backend=ProcessBackend\(num_workers=...\) or RayBackend"),
        ({"num_gpus": 1}, r"backend=RayBackend\(num_gpus=...\)"),
    ])
    def test_old_keywords_name_their_new_home(self, old, home):
        with pytest.raises(TypeError, match=home) as caught:
            EvalRunner(CARTPOLE, None, **old)
        assert isinstance(caught.value, MovedArgumentError)
        assert caught.value.argument == next(iter(old))

    def test_at_most_fourteen_parameters(self):
        assert len(inspect.signature(EvalRunner).parameters) <= 14


def _call(function):
    try:
        return function()
    except Exception as error:  # noqa: BLE001 - the test looks at it
        return error
