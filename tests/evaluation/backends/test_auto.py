"""The default backend and workers without ``evaluator_fn`` (issue #22): the workers get the
evaluator itself; background evaluations leave for a worker process, blocking ones stay; what
keeps a worker from them keeps them here, said once; scripts without the main guard work."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
import warnings
from functools import partial
from pathlib import Path

import gymnasium as gym
import pytest

from syllabus_eval import EnvSpec, EpisodeSettings, EvalResult, EvalRunner
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from tests.workers import cartpole, cartpole_agent, cartpole_evaluator

WAIT = 60  # seconds any wait may take: a hang fails, it never blocks the suite
ROOT = Path(__file__).resolve().parents[3]
KWARGS = {"num_episodes": 10, "episodes": EpisodeSettings(max_steps=200, seed=7)}
CARTPOLES = EnvSpec(cartpole, num_envs=4)


@pytest.fixture(params=["process", "ray"])
def backend(request) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return request.param


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert multiprocessing.active_children() == []


def without_fps(result: EvalResult, *, step: bool = True) -> dict:
    return {key: value for key, value in result.items()
            if key != "eval/fps" and (step or key != "eval/step")}


def thread_results(evaluator, *weights) -> list[EvalResult]:
    """What the thread backend gives on each of ``weights`` (``None``: the training agent's)."""
    with EvalRunner(CARTPOLES, evaluator, backend="thread", **KWARGS) as runner:
        return [runner.evaluate(w, step=i) for i, w in enumerate(weights, 1)]


def assert_same(got: list[EvalResult], want: list[EvalResult]) -> None:
    for have, expected in zip(got, want, strict=True):
        assert have.episodes == expected.episodes
        assert without_fps(have) == without_fps(expected)


class Handle:
    """What a simulator binding may hold: shared by copies, refused by pickle."""

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError("cannot pickle 'Handle' object (a simulator handle)")


def unpicklable_evaluator() -> CleanRLEvaluator:
    agent = cartpole_agent(seed=1)
    agent.handle = Handle()  # the evaluator's copy carries it too
    return CleanRLEvaluator(agent)


class TestWorkersWithoutEvaluatorFn:
    def test_the_thread_backends_numbers(self, backend):
        evaluator, other = cartpole_evaluator(seed=1), cartpole_agent(seed=2)
        expected = thread_results(evaluator, None, other)
        with EvalRunner(CARTPOLES, evaluator, backend=backend, **KWARGS) as runner:
            got = [runner.evaluate(step=1)]
            assert runner.trigger_eval(other, step=2)
            got.append(runner.wait(WAIT))
        assert_same(got, expected)
        assert expected[0].episodes != expected[1].episodes  # the weights made a difference

    def test_an_evaluator_without_weights_travels_as_it_is(self):
        # Random actions from the evaluator's own generator, which travels in its state.
        evaluator = DummyEvaluator(gym.spaces.Discrete(2), seed=4)
        with EvalRunner(CARTPOLES, evaluator, backend="thread", **KWARGS) as runner:
            expected = [runner.evaluate(step=1)]
        with EvalRunner(CARTPOLES, evaluator, backend="process", **KWARGS) as runner:
            assert_same([runner.evaluate(step=1)], expected)

    def test_a_copy_that_does_not_pickle_is_an_error_naming_evaluator_fn(self, backend):
        with pytest.raises(ValueError, match=(
                f"evaluator_fn: expected a factory that builds the evaluator in each worker, "
                f"since the evaluator given does not serialize for backend='{backend}' .*got "
                "None, and CleanRLEvaluator.*which does not serialize: cannot pickle 'Handle' "
                "object")):
            EvalRunner(CARTPOLES, unpicklable_evaluator(), backend=backend, **KWARGS)


class TestDefault:
    def test_background_evaluations_run_in_a_worker_blocking_ones_here(self):
        evaluator, other = cartpole_evaluator(seed=1), cartpole_agent(seed=2)
        expected = thread_results(evaluator, None, other)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", "EvalRunner: background")  # no fallback
            with EvalRunner(CARTPOLES, evaluator, **KWARGS) as runner:
                got = [runner.evaluate(step=1)]
                assert multiprocessing.active_children() == []  # blocking: no worker
                # The first background ones run here while the worker starts (seconds), then
                # in the worker, the weights through shared memory.
                background = in_background_until_shared(runner, other)
                workers = multiprocessing.active_children()
                assert len(workers) == 1 and runner._backend.process is not None
                background += in_background_until_shared(runner, other)
                assert multiprocessing.active_children() == workers  # the same worker
        assert_same(got, expected[:1])
        for result in background:  # at steps of their own
            assert result.episodes == expected[1].episodes
            assert without_fps(result, step=False) == without_fps(expected[1], step=False)

    @pytest.mark.parametrize("case", ["instance", "unpicklable", "fails to start"])
    def test_what_keeps_a_worker_away_keeps_background_evaluations_here_said_once(self, case):
        if case == "instance":
            make_env, evaluator = gym.make("CartPole-v1"), cartpole_evaluator(seed=1)
            kwargs = {"episodes": EpisodeSettings(seed=7, max_steps=200)}
            why = "envs is an env instance"
        elif case == "unpicklable":
            make_env, evaluator, kwargs = CARTPOLES, unpicklable_evaluator(), KWARGS
            why = (r"a worker process cannot be given what it needs \(evaluator_fn: expected a "
                   "factory that builds the evaluator in each worker")
        else:  # registered in this process only, as a training script may do
            gym.register("OnlyHere-v0", entry_point="gymnasium.envs.classic_control:"
                                                    "CartPoleEnv", max_episode_steps=500)
            make_env = EnvSpec(partial(gym.make, "OnlyHere-v0"), num_envs=4)
            evaluator = cartpole_evaluator(seed=1)
            kwargs, why = KWARGS, "its worker process failed to start .*OnlyHere"
        try:
            with EvalRunner(make_env, evaluator, backend="thread", **kwargs) as runner:
                expected = runner.evaluate(step=1)
            with pytest.warns(RuntimeWarning, match=f"runner's thread.* because {why}") as caught, \
                    EvalRunner(make_env, evaluator, **kwargs) as runner:
                results = []
                deadline = time.monotonic() + WAIT  # a worker fails to start within seconds
                while not (caught and runner._backend.background == "thread"):
                    assert time.monotonic() < deadline, "no warning came"
                    assert runner.trigger_eval(step=len(results) + 1)
                    results.append(runner.wait(WAIT))
                    time.sleep(0.2)
                assert runner.trigger_eval(step=len(results) + 1)  # here, without a word more
                results.append(runner.wait(WAIT))
        finally:
            gym.registry.pop("OnlyHere-v0", None)
        assert len([w for w in caught if "runner's thread" in str(w.message)]) == 1
        assert "backend='thread'" in str(caught[0].message)
        for result in results:
            assert result.episodes == expected.episodes


def in_background_until_shared(runner: EvalRunner, weights) -> list[EvalResult]:
    """Background evaluations of ``weights`` until one ran on weights from shared memory
    (the default backend's worker is up)."""
    results, deadline = [], time.monotonic() + WAIT
    while not results or runner._last_job.snapshot.shared is None:
        assert time.monotonic() < deadline, "the worker never took an evaluation"
        assert runner.trigger_eval(weights, step=len(results) + 2)
        results.append(runner.wait(WAIT))
        time.sleep(0.1)
    return results


SCRIPT = """\
import json, multiprocessing
from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator
from tests.workers import cartpole, cartpole_agent

def train():
    agent = cartpole_agent(seed=3)
    with EvalRunner(EnvSpec(cartpole, num_envs=2), CleanRLEvaluator(agent), num_episodes=4,
                    episodes=EpisodeSettings(seed=5)) as runner:
        runner.trigger_eval(agent, step=1)
        result = runner.wait(60)
        workers = len(multiprocessing.active_children())
    print(json.dumps({"episodes": [[r.env_index, r.length, r.reward] for r in result.episodes],
                      "workers": workers}))
"""


class TestScripts:
    @pytest.mark.parametrize("guarded", [False, True], ids=["no guard", "guarded"])
    def test_a_script_evaluates_in_the_background_with_or_without_the_main_guard(
            self, guarded, tmp_path):
        call = 'if __name__ == "__main__":\n    train()\n' if guarded else "train()\n"
        script = tmp_path / "train.py"
        script.write_text(SCRIPT + call)
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout.strip().splitlines()[-1])
        with EvalRunner(EnvSpec(cartpole, num_envs=2), CleanRLEvaluator(cartpole_agent(seed=3)),
                        num_episodes=4, backend="thread",
                        episodes=EpisodeSettings(seed=5)) as runner:
            expected = runner.evaluate(step=1)
        assert printed["episodes"] == [[r.env_index, r.length, r.reward]
                                       for r in expected.episodes]
        if guarded:  # in a worker process, without a word
            assert printed["workers"] == 1 and "RuntimeWarning" not in done.stderr
        else:  # here, with one warning that names the fix, pointing at the trigger
            assert printed["workers"] == 0
            assert done.stderr.count("RuntimeWarning") == 1
            assert textwrap.dedent(f"""\
                {script}:10: RuntimeWarning: EvalRunner: background evaluations run in the \
runner's thread""") in done.stderr
            assert 'runs without `if __name__ == "__main__":`' in done.stderr

    def test_the_process_backend_refuses_an_unguarded_script_before_spawning(self, tmp_path):
        script = tmp_path / "train.py"
        guardless = SCRIPT.replace("EpisodeSettings(seed=5))",
                                   "EpisodeSettings(seed=5), backend='process')")
        script.write_text(guardless + "train()\n")
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 1
        assert ("ValueError: backend: 'process' spawns workers, which run the main script "
                f"again before they start: expected {script} to keep its training code under "
                '`if __name__ == "__main__":`') in done.stderr
        assert "spawn_main" not in done.stderr  # no worker ran the script

