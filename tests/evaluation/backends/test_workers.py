"""Process and Ray backends: the thread backend's numbers, shares over workers, restarts,
timeouts, errors from workers, init_fn and shutdown, lambdas and closures as factories, with
real spawned processes and a real local Ray (started once for the module)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from functools import partial
from pathlib import Path

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
    ProcessBackend,
    RayBackend,
    RemoteTraceback,
    cli,
)
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.evaluation.backends import as_backend
from tests.fake_envs import LengthEnv
from tests.gates import start_ray
from tests.workers import (
    INIT_VARIABLE,
    cartpole,
    cartpole_agent,
    cartpole_evaluator,
    cartpole_vector_env,
    evaluator_after_init,
    hang_when_started_again,
    length_evaluator,
    mark_init,
    remote_controlled_env,
)

WAIT = 60  # seconds any wait may take in these tests: a hang fails, it never blocks the suite


@pytest.fixture(params=["process", "ray"])
def backend(request) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return request.param


def our_actors() -> list[str]:
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return []
    return [name for name in ray.util.list_named_actors() if name.startswith("syllabus-eval-")]


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert multiprocessing.active_children() == []
    assert our_actors() == []
    assert not [t for t in threading.enumerate() if t.name == "syllabus-eval-runner"]


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def stepping_pids(folder: Path) -> set[int]:
    """The worker processes whose remote-controlled envs have stepped."""
    pids = {int(path.name.split("-")[1]) for path in folder.glob("stepping-*")}
    return pids - {os.getpid()}  # the thread backend's reference runs here


def without_fps(result: EvalResult) -> dict:
    return {key: value for key, value in result.items() if key != "eval/fps"}


def reference(envs, evaluator, **kwargs) -> EvalResult:
    """What the thread backend gives."""
    with EvalRunner(envs, evaluator, **kwargs) as runner:
        return runner.evaluate()


def background(runner: EvalRunner, step: int | None = None, weights=None) -> EvalResult:
    """A background evaluation's result (``EvaluationError`` if it failed), never a hang."""
    assert runner.trigger_eval(weights, step=step)
    return runner.wait(WAIT)


class TestSameNumbersAsTheThreadBackend:
    def test_cartpole_mlp_agent(self, backend, capsys):
        kwargs = {"num_episodes": 10, "episodes": EpisodeSettings(max_steps=200, seed=7)}
        evaluator = cartpole_evaluator(seed=1)  # of the training agent
        other = cartpole_agent(seed=2)
        cartpoles = EnvSpec(cartpole, num_envs=4)
        with EvalRunner(cartpoles, evaluator, **kwargs) as runner:
            expected = runner.evaluate(step=1), runner.evaluate(other, step=2)
            # What workers would give on the weights of their own evaluator_fn
            unsent = runner.evaluate(cartpole_evaluator().agent)
        workers = as_backend(backend, evaluator_fn=cartpole_evaluator)
        with EvalRunner(cartpoles, evaluator, progress=True, backend=workers,
                        **kwargs) as runner:
            # weights=None: the training agent's, snapshotted and sent like any others
            got = runner.evaluate(step=1), background(runner, step=2, weights=other)
        for want, have in zip(expected, got):
            assert have.episodes == want.episodes
            assert without_fps(have) == without_fps(want)
        # The weights made a difference: only those sent can give the expected episodes.
        assert len({tuple(r.episodes) for r in (*expected, unsent)}) == 3
        assert "evaluation" in capsys.readouterr().err  # the progress bar

    def test_episodes_of_varying_lengths_split_over_workers(self, backend):
        kwargs = {"num_episodes": 13, "tasks": [0, 1, 2], "episodes": EpisodeSettings(seed=3)}
        envs = EnvSpec(LengthEnv, num_envs=5)
        expected = reference(envs, length_evaluator(), **kwargs)
        workers = as_backend(backend, evaluator_fn=length_evaluator, num_workers=2)
        with EvalRunner(envs, length_evaluator(), backend=workers, **kwargs) as runner:
            result = runner.evaluate()
        assert result.episodes == expected.episodes
        assert without_fps(result) == without_fps(expected)
        # Exact per-slot quotas (N + i) // k, and the tasks round robin over all of them.
        assert Counter(r.env_index for r in result.episodes) == {
            i: (13 + i) // 5 for i in range(5)}
        assert Counter(r.task for r in result.episodes) == {0: 5, 1: 4, 2: 4}
        assert len({r.length for r in result.episodes}) > 5  # short and long episodes


def controlled(folder: Path, backend: str, **kwargs) -> EvalRunner:
    options = {key: kwargs.pop(key) for key in list(kwargs) if key not in ("schedule", "callbacks")}
    return EvalRunner(EnvSpec(partial(remote_controlled_env, str(folder)), num_envs=4),
                      length_evaluator(), num_episodes=8, episodes=EpisodeSettings(seed=1),
                      backend=as_backend(backend, evaluator_fn=length_evaluator, **options),
                      **kwargs)


def controlled_reference(folder: Path) -> EvalResult:
    return reference(EnvSpec(partial(remote_controlled_env, str(folder)), num_envs=4),
                     length_evaluator(), num_episodes=8, episodes=EpisodeSettings(seed=1))


class TestWorkersThatDie:
    # Two process workers: one dies, the other's share stands; one actor shows Ray's side.
    @pytest.mark.parametrize(("backend", "num_workers"), [("process", 2), ("ray", 1)],
                             indirect=["backend"])
    def test_a_killed_worker_is_restarted_and_its_share_run_again(self, backend, num_workers,
                                                                  tmp_path, caplog):
        expected = controlled_reference(tmp_path)
        (tmp_path / "hold").touch()
        with controlled(tmp_path, backend, num_workers=num_workers) as runner:
            assert runner.trigger_eval(step=5)
            # Killed while its env is held mid-episode.
            wait_until(lambda: len(stepping_pids(tmp_path)) == num_workers, "workers to step")
            if backend == "process":
                os.kill(min(stepping_pids(tmp_path)), signal.SIGKILL)
            else:
                import ray

                ray.kill(ray.get_actor(our_actors()[0]))
            (tmp_path / "hold").unlink()
            result = runner.wait(WAIT)
        assert result.episodes == expected.episodes and result.step == 5
        assert "died during the evaluation" in caplog.text

    def test_when_restarts_run_out_the_evaluation_fails_then_the_next_one_works(
            self, tmp_path):
        expected = controlled_reference(tmp_path)
        (tmp_path / "hold").touch()
        with controlled(tmp_path, "process", max_restarts=1) as runner:
            assert runner.trigger_eval(step=1)
            killed: set[int] = set()
            for _ in range(2):  # the worker, then the one restarted in its place
                wait_until(lambda: stepping_pids(tmp_path) - killed, "a worker to step")
                pid = (stepping_pids(tmp_path) - killed).pop()
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            with pytest.raises(EvaluationError, match=r"killed by SIGKILL\) after 1 restart\(s"
                               r"\) of its workers, and max_restarts=1 allows no more"):
                runner.wait(WAIT)
            (tmp_path / "hold").unlink()
            assert background(runner, step=2).episodes == expected.episodes


    def test_a_restarted_worker_that_does_not_start_fails_in_bounded_time(
            self, tmp_path, monkeypatch):
        (tmp_path / "hold").touch()
        with controlled(tmp_path, "process",
                        init_fn=partial(hang_when_started_again, str(tmp_path))) as runner:
            monkeypatch.setattr("syllabus_eval.evaluation.backends.pool.START_TIMEOUT", 2.0)
            assert runner.trigger_eval(step=1)
            wait_until(lambda: stepping_pids(tmp_path), "the worker to step")
            os.kill(stepping_pids(tmp_path).pop(), signal.SIGKILL)  # its restart hangs
            with pytest.raises(EvaluationError) as caught:
                runner.wait(WAIT)
            assert isinstance(caught.value.__cause__, TimeoutError)
            assert "did not start again within 2s" in str(caught.value.__cause__)

    def test_an_actor_that_died_between_evaluations_is_replaced_at_no_cost(
            self, ray_cluster, caplog):
        with EvalRunner(EnvSpec(LengthEnv, num_envs=2), length_evaluator(), num_episodes=4,
                        backend=RayBackend(evaluator_fn=length_evaluator,
                                           max_restarts=0)) as runner:
            first = runner.evaluate()
            ray_cluster.kill(ray_cluster.get_actor(our_actors()[0]))
            wait_until(lambda: not our_actors(), "Ray to see the actor dead")
            assert runner.evaluate().episodes == first.episodes  # no restart was needed
        assert "died during the evaluation" not in caplog.text


class TestTimeout:
    def test_a_too_slow_evaluation_fails_and_the_next_one_works(self, tmp_path):
        expected = controlled_reference(tmp_path)
        (tmp_path / "hold").touch()
        with controlled(tmp_path, "process", timeout=1.5) as runner:
            with pytest.raises(EvaluationError, match="timeout=1.5s") as caught:
                background(runner, step=1)
            assert isinstance(caught.value.__cause__, TimeoutError)
            (tmp_path / "hold").unlink()
            assert background(runner, step=2).episodes == expected.episodes


class TestErrorsInWorkers:
    def test_an_env_exception_surfaces_with_its_traceback(self, backend, tmp_path):
        expected = controlled_reference(tmp_path)
        (tmp_path / "crash").touch()
        with controlled(tmp_path, backend, num_workers=2) as runner:
            with pytest.raises(EvaluationError, match="the env exploded at step 1") as caught:
                background(runner, step=1)
            original = caught.value.__cause__
            assert isinstance(original, RuntimeError)
            assert str(original) == "the env exploded at step 1"
            assert isinstance(original.__cause__, RemoteTraceback)
            assert 'in step\n    raise RuntimeError(f"the env exploded' in str(original.__cause__)
            assert "tests/workers.py" in "".join(traceback.format_exception(caught.value))
            (tmp_path / "crash").unlink()
            assert background(runner, step=2).episodes == expected.episodes  # still usable

    @pytest.mark.parametrize(("options", "error", "message"), [
        ({"evaluator_fn": evaluator_after_init}, RuntimeError, "init_fn has not run in process"),
        ({"evaluator_fn": cartpole_evaluator}, ValueError,
         "envs: the env's single_observation_space Box"),
        ({"evaluator_fn": cartpole_evaluator, "env_fn": cartpole_vector_env, "num_envs": 4,
          "num_workers": 2}, ValueError,  # num_envs goes to the EnvSpec
         "num_workers: expected 1 when the env factory returns a VectorEnv .* got more: this "
         "worker's share is 2 of the 4 env slots"),
    ])
    def test_start_up_errors_raise_from_the_constructor(self, options, error, message):
        envs = EnvSpec(LengthEnv, num_envs=options.pop("num_envs", 2))
        with pytest.raises(error, match=message) as caught:
            EvalRunner(envs, length_evaluator(), backend=ProcessBackend(**options))
        assert isinstance(caught.value.__cause__, RemoteTraceback)


class TestInitFn:
    def test_runs_first_in_each_worker(self, backend, tmp_path):
        with EvalRunner(EnvSpec(LengthEnv, num_envs=2), length_evaluator(), num_episodes=4,
                        backend=as_backend(backend, evaluator_fn=evaluator_after_init,
                                           init_fn=partial(mark_init, str(tmp_path)))) as runner:
            assert runner.evaluate()["eval/num_episodes"] == 4
        pids = {int(path.name.split("-")[1]) for path in tmp_path.glob("init-*")}
        assert len(pids) == 1 and os.getpid() not in pids
        assert INIT_VARIABLE not in os.environ


class TestLifecycle:
    @pytest.mark.parametrize(("backend", "num_workers"), [("process", 2), ("ray", 1)],
                             indirect=["backend"])
    def test_shutdown_mid_evaluation_leaves_no_worker_behind(self, backend, num_workers,
                                                             tmp_path):
        (tmp_path / "hold").touch()
        runner = controlled(tmp_path, backend, num_workers=num_workers)
        assert runner.trigger_eval(step=1)
        wait_until(lambda: len(stepping_pids(tmp_path)) == num_workers, "workers to step")
        started = time.monotonic()
        assert runner.shutdown(timeout=10) is True
        assert time.monotonic() - started < 10
        with pytest.raises(EvaluationError) as caught:
            runner.wait(WAIT)
        assert isinstance(caught.value.__cause__, EvaluationCancelled)
        assert multiprocessing.active_children() == [] and our_actors() == []
        if backend == "ray":  # the module's Ray: the runner did not start it
            assert sys.modules["ray"].is_initialized()

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(lambda: all(map(gone, stepping_pids(tmp_path))), "the workers to exit")

    def test_busy_policies_and_callbacks_as_with_threads(self, tmp_path):
        results = []
        (tmp_path / "hold").touch()
        with controlled(tmp_path, "process", schedule=EvalSchedule(busy_policy="skip"),
                        callbacks=results.append) as runner:
            assert runner.trigger_eval(step=1) is True
            wait_until(lambda: stepping_pids(tmp_path), "the worker to step")
            assert runner.pending and runner.poll() is None
            assert runner.trigger_eval(step=2) is False  # skipped while busy
            with pytest.raises(RuntimeError, match="an evaluation is still pending"):
                runner.evaluate()
            (tmp_path / "hold").unlink()
            result = runner.wait(WAIT)
            assert result.step == 1 and results == [result] and not runner.pending
            assert runner.wait() is None

    def test_shutdown_after_ray_was_shut_down_starts_no_new_ray(self, ray_cluster):
        runner = EvalRunner(EnvSpec(LengthEnv, num_envs=2), length_evaluator(), num_episodes=2,
                            backend=RayBackend(evaluator_fn=length_evaluator))
        runner.evaluate()
        ray_cluster.shutdown()  # the user's Ray, gone first, with the runner's actors
        try:
            assert runner.shutdown(timeout=10) is True
            assert not ray_cluster.is_initialized()
        finally:
            start_ray(ray_cluster)  # for the rest of the module

    def test_ray_started_by_the_runner_is_shut_down_by_it(self, ray_cluster, monkeypatch):
        calls = []
        # Ray runs (the module's); the runner is made to believe it must connect.
        answers = iter([False])  # then the truth, which Ray's own calls need
        monkeypatch.setattr(ray_cluster, "is_initialized", lambda: next(answers, True))
        monkeypatch.setattr(ray_cluster, "init", lambda **kwargs: calls.append(("init", kwargs)))
        monkeypatch.setattr(ray_cluster, "shutdown", lambda: calls.append(("shutdown", {})))
        with EvalRunner(EnvSpec(LengthEnv, num_envs=2), length_evaluator(), num_episodes=2,
                        backend=RayBackend(evaluator_fn=lambda: length_evaluator(),
                                           address="ray://head:10001",
                                           ray_kwargs={"namespace": "x"})) as runner:
            assert calls == [("init", {"address": "ray://head:10001", "namespace": "x"})]
            runner.evaluate()
        assert calls[1:] == [("shutdown", {})]


class TestCommandLine:
    def test_evaluate_in_a_worker_process_gives_the_thread_backends_numbers(self, tmp_path):
        torch.save(cartpole_agent(seed=4).state_dict(), tmp_path / "agent.pt")
        metrics = {}
        for backend in ("thread", "process"):
            out = tmp_path / f"{backend}.json"
            assert cli.main(["evaluate", "--env", "CartPole-v1", "--agent",
                             "syllabus_eval.demo.agents:MLPAgent", "--checkpoint",
                             str(tmp_path / "agent.pt"), "--episodes", "6", "--num-envs", "2",
                             "--backend", backend, "--json", str(out)]) == 0
            metrics[backend] = json.loads(out.read_text())
            del metrics[backend]["eval/fps"]
        assert metrics["process"] == metrics["thread"]


def capturing(value, factory):
    """A closure of ``factory`` that captures ``value`` (which then travels with it)."""
    return lambda *args: (value, factory(*args))[1]


class TestClosures:
    """Lambdas and closures as factories, sent with cloudpickle (as Gymnasium's AsyncVectorEnv
    sends env factories): one worker process for all of them."""

    def test_lambdas_and_closures_give_the_thread_backends_numbers(self, tmp_path):
        gravities = {"earth": 9.8, "heavy": 15.0}  # locals that the closures capture
        marker, seed = tmp_path / "init-ran", 3
        kwargs = {"num_episodes": 6, "episodes": EpisodeSettings(max_steps=200, seed=7),
                  "tasks": list(gravities)}
        envs = EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=2,
                       set_task=lambda env, task: setattr(env.unwrapped, "gravity",
                                                          gravities[task]))
        evaluator = cartpole_evaluator(seed=1)
        expected = reference(envs, evaluator, **kwargs)
        workers = ProcessBackend(evaluator_fn=lambda: CleanRLEvaluator(cartpole_agent(seed)),
                                 init_fn=lambda: marker.write_text(str(os.getpid())))
        with EvalRunner(envs, evaluator, backend=workers, **kwargs) as runner:
            result = runner.evaluate()
        assert result.episodes == expected.episodes
        assert without_fps(result) == without_fps(expected)
        assert {"eval/task/earth/reward", "eval/task/heavy/reward"} <= result.keys()
        assert int(marker.read_text()) != os.getpid()  # init_fn ran in the worker


class TestBadArguments:
    @pytest.mark.parametrize(("kwargs", "message"), [
        # Without evaluator_fn the workers get the evaluator itself: both missing is an error.
        ({"backend": "process", "evaluator": None},
         "evaluator: expected an Evaluator; only a worker backend goes without one, building "
         "it in each worker"),
        ({"backend": "ray", "evaluator": None}, "evaluator: expected an Evaluator"),
        ({"backend": RayBackend(evaluator_fn=length_evaluator, num_workers=5)},
         "num_workers: expected at most num_envs=4 \\(each worker runs at least one env slot\\)"
         ", got int 5"),
        ({"backend": ProcessBackend(evaluator_fn=capturing(threading.Lock(), length_evaluator))},
         "evaluator_fn: expected a serializable evaluator factory for backend='process', which "
         "sends it to each worker with cloudpickle: .* got function .*, which does not "
         "serialize: cannot pickle '_thread.lock' object"),
        ({"backend": ProcessBackend(evaluator_fn=length_evaluator,
                                    env_fn=capturing((i for i in range(3)), LengthEnv))},
         "env_fn: expected a serializable env factory .*cannot pickle 'generator' object"),
        ({"backend": ProcessBackend(evaluator_fn=length_evaluator),
          "envs": EnvSpec(capturing(threading.Event(), LengthEnv), num_envs=4)},
         "env_fn: expected a serializable env factory .*\\(the runner's env factory is used "
         "when env_fn is not given\\)"),
        ({"backend": ProcessBackend(evaluator_fn=length_evaluator), "tasks": [0],
          "envs": EnvSpec(LengthEnv, num_envs=4,
                          set_task=capturing(threading.Lock(), lambda env, task: None))},
         "set_task: expected a serializable callable"),
    ])
    def test_clear_errors(self, kwargs, message):
        arguments = {"envs": EnvSpec(LengthEnv, num_envs=4), "evaluator": length_evaluator(),
                     **kwargs}
        with pytest.raises(ValueError, match=message):
            EvalRunner(**arguments)

    @pytest.mark.parametrize(("make", "message"), [
        (lambda: ProcessBackend(num_workers=0), "num_workers: expected an integer >= 1, got int 0"),
        (lambda: ProcessBackend(max_restarts=-1), "max_restarts: expected an integer >= 0"),
        (lambda: ProcessBackend(timeout=0), "timeout: expected a number > 0"),
        (lambda: RayBackend(num_cpus=-1), "num_cpus: expected a number >= 0"),
        (lambda: RayBackend(ray_kwargs="local"), "ray_kwargs: expected a dict of ray.init"),
        (lambda: ProcessBackend(init_fn=3), "init_fn: expected a callable or None, got int 3"),
    ])
    def test_each_backend_object_checks_its_fields(self, make, message):
        with pytest.raises(ValueError, match=message):
            make()

    def test_options_of_other_backends_do_not_exist_on_them(self):
        # What the flat signature refused at run time, the types refuse when written.
        for name, option in (("thread", "num_workers"), ("auto", "num_workers"),
                             ("process", "num_gpus")):
            with pytest.raises(TypeError, match=option):
                as_backend(name, **{option: 1})

    def test_missing_ray_says_how_to_install_it(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
        with pytest.raises(ImportError, match=r"pip install 'syllabus-eval\[ray\]'"):
            EvalRunner(LengthEnv, length_evaluator(),
                       backend=RayBackend(evaluator_fn=length_evaluator))
