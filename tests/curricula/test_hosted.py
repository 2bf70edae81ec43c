"""A curriculum hosted in a worker process (LocalCurriculumServer): the same scores as PLR's
in-process worker, weights that follow the learner's optimizer steps whole, envs in any
process, failures that reach every env, and nothing left behind."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

from syllabus_eval import CurriculumError
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.curricula import (
    CurriculumWrapper,
    Experience,
    LocalCurriculumServer,
    PrioritizedLevelReplay,
)
from syllabus_eval.demo.agents import MLPAgent
from tests.curricula.hosting import (
    SCORE,
    SCORE_DOUBLED,
    CoinEnv,
    LinearAgent,
    domain_randomization,
    double_the_critic,
    dummy_plr,
    episode,
    heap_report,
    linear_plr,
    mlp_plr,
    not_a_curriculum,
    probe_plr,
)
from tests.models import TearProbe, fake_envs
from tests.readme import readme_snippet

ROOT = Path(__file__).parents[2]


def recorded_stream(num_envs: int = 4, records: int = 600, seed: int = 0) -> list[Experience]:
    """Interleaved episodes of random lengths, observations and rewards over tasks 0-2, some
    cut by a truncation, some left open: what wrappers would send."""
    rng = np.random.default_rng(seed)
    stream, left = [], [0] * num_envs
    while len(stream) < records:
        env = int(rng.integers(num_envs))
        obs = rng.normal(size=4).astype(np.float32)
        if left[env] == 0:
            stream.append(Experience("reset", env, int(rng.integers(3)), obs))
            left[env] = int(rng.integers(2, 30))
            continue
        left[env] -= 1
        end = left[env] == 0
        truncated = end and bool(rng.integers(2))
        stream.append(Experience("step", env, obs=obs, reward=float(rng.normal()),
                                 terminated=end and not truncated, truncated=truncated))
    return stream


def server_for(curriculum_fn, **kwargs) -> LocalCurriculumServer:
    return LocalCurriculumServer(curriculum_fn, **kwargs)


def own_client(client):
    """A copy of the client, with a connection of its own (as an env process would have)."""
    return pickle.loads(pickle.dumps(client))


def step_until_it_raises(env, seconds: float = 10.0) -> None:
    """Step (and reset at episode ends) until the env raises; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _, _, terminated, truncated, _ = env.step(1)
        if terminated or truncated:
            env.reset()
        time.sleep(0.001)
    raise AssertionError(f"no error within {seconds} s")


class TestSameScoresAsTheInProcessWorker:
    """The in-process worker is the reference: the same stream, the same agent weights."""

    @pytest.mark.parametrize("process", [True, False])
    def test_on_the_same_stream(self, process, no_leaked_threads):
        torch.manual_seed(3)
        agent = MLPAgent(fake_envs(spaces.Box(-5.0, 5.0, (4,), np.float32),
                                   spaces.Discrete(2)))
        stream = recorded_stream()
        with PrioritizedLevelReplay([0, 1, 2], CleanRLEvaluator(agent), seed=0,
                                    num_steps=16) as reference:
            for record in stream:
                reference.observe(record)
        with LocalCurriculumServer(partial(mlp_plr, num_steps=16), agent=agent,
                                   process=process, batch_records=37) as server:
            for record in stream:
                server.client.observe(record)
        assert server.scored_steps() == reference.scored_steps()
        assert server.task_scores() == pytest.approx(reference.task_scores(), rel=1e-5)
        assert len(reference.task_scores()) == 3


class TestWeightsFollowTheLearner:
    @pytest.mark.parametrize("process", [True, False])
    def test_an_optimizer_step_changes_the_scores_after_it_and_not_before(
            self, process, no_leaked_threads):
        agent = LinearAgent()
        with LocalCurriculumServer(linear_plr, agent=agent, process=process) as server:
            client = server.client
            for record in episode(0, "a"):
                client.observe(record)
            server.flush(30)
            assert server.task_scores() == pytest.approx({"a": SCORE})  # V(s) = s[0]
            double_the_critic(agent)  # one SGD step: V(s) = 2 s[0], pushed after it
            for record in episode(1, "b"):
                client.observe(record)
            server.flush(30)
            assert server.task_scores() == pytest.approx({"a": SCORE, "b": SCORE_DOUBLED})

    def test_scored_with_the_last_finished_step(self, no_leaked_threads):
        """A TearProbe values every state at c, the SGD steps taken: a one-step episode from
        it with reward 0 scores |0 - c| = c, the steps the scorer's weights had."""
        probe = TearProbe(size=1000)
        optimizer = torch.optim.SGD(probe.parameters(), lr=1.0)
        with LocalCurriculumServer(probe_plr, agent=probe) as server:
            for steps in range(1, 4):
                optimizer.zero_grad()
                probe.loss().backward()
                optimizer.step()
                for record in episode(steps, "a", [[0.0], [0.0]], [0.0]):
                    server.client.observe(record)
                server.flush(30)
                assert server.task_scores() == {"a": float(steps)}

    def test_never_torn_while_the_learner_steps(self, no_leaked_threads):
        """Steps on a large TearProbe run while PLR scores: a torn copy would give a NaN
        value, which fails PLR's worker."""
        probe = TearProbe(layers=6, size=200_000)
        optimizer = torch.optim.SGD(probe.parameters(), lr=1.0, foreach=False)
        done = threading.Event()

        def train():
            while not done.is_set():
                optimizer.zero_grad()
                probe.loss().backward()
                optimizer.step()

        with LocalCurriculumServer(partial(probe_plr, 200_000), agent=probe,
                                   batch_records=2) as server:
            learner = threading.Thread(target=train)
            learner.start()
            try:
                for env_id in range(150):
                    for record in episode(env_id, "a", [[0.0], [0.0]], [0.0]):
                        server.client.observe(record)
                server.flush(60)
            finally:
                done.set()
                learner.join()
            score = server.task_scores()["a"]
        assert score == int(score) and score > 0  # c: the steps of one whole copy

    def test_a_state_dict_with_its_version(self, no_leaked_threads):
        with LocalCurriculumServer(linear_plr) as server:
            doubled = LinearAgent()
            double_the_critic(doubled)
            server.load_weights(doubled.state_dict(), version=5)
            for record in episode(0, "b"):
                server.client.observe(record)
            server.flush(30)
            assert server.task_scores() == pytest.approx({"b": SCORE_DOUBLED})


class TestEnvsInAnyProcess:
    @pytest.mark.parametrize("context", ["fork", "spawn"])
    def test_every_transition_is_scored_once(self, chain_env, transition_counter, context,
                                             no_leaked_threads):
        counter = transition_counter(2)
        # A queue of 4 records and batches of 8: the worker is often full (back-pressure).
        with LocalCurriculumServer(partial(dummy_plr, queue_size=4, batch_size=8),
                                   batch_records=16) as server:
            client = server.client
            envs = AsyncVectorEnv([lambda: CurriculumWrapper(chain_env(), client)] * 2,
                                  context=context)
            obs, info = envs.reset(seed=0)
            for _ in range(150):
                obs, _, terminated, truncated, info = envs.step(envs.action_space.sample())
                assert (obs[:, 1] == info["task"]).all()
                counter.step(info, terminated, truncated)
            envs.close()  # the close records ship what the env processes buffered
        assert counter.total > 200
        assert server.scored_steps() == dict(counter.counts)

    def test_draws_follow_the_distribution(self, chain_env, no_leaked_threads):
        with LocalCurriculumServer(domain_randomization, prefetch=4) as server:
            envs = SyncVectorEnv([lambda: CurriculumWrapper(chain_env(), server.client)] * 2)
            tasks = {int(task) for _ in range(20) for task in envs.reset()[1]["task"]}
            envs.close()
        assert tasks == {2, 3, 5}


class TestFailures:
    def test_a_killed_worker_fails_every_env(self, chain_env, no_leaked_threads):
        server = LocalCurriculumServer(dummy_plr)
        envs = [CurriculumWrapper(chain_env(), own_client(server.client)) for _ in range(3)]
        for env in envs:
            env.reset(seed=0)
            env.step(1)
        os.kill(server.pid, signal.SIGKILL)
        for env in envs:
            with pytest.raises(CurriculumError, match="the curriculum's worker process is gone"):
                step_until_it_raises(env)
            with pytest.raises(CurriculumError, match="worker process is gone"):
                env.reset()  # every time
            env.close()  # never raises
        with pytest.raises(CurriculumError, match=r"worker process \(pid \d+\) was killed by "
                                                  "SIGKILL"):
            server.close()
        server.close()
        for env in envs:
            env.curriculum.close()

    def test_a_curriculum_failure_reaches_every_env_and_the_learner_once(
            self, chain_env, no_leaked_threads):
        from tests.curricula.test_curriculum_wrappers import NanReward

        server = LocalCurriculumServer(dummy_plr, batch_records=1)
        envs = [CurriculumWrapper(NanReward(chain_env()), own_client(server.client))
                for _ in range(2)]
        for env in envs:
            env.reset(seed=0)
        for env in envs:
            with pytest.raises(CurriculumError, match="experience.reward: expected a finite "
                                                      "number, got nan"):
                step_until_it_raises(env)
            env.close()
            env.curriculum.close()
        with pytest.raises(CurriculumError, match="experience.reward"):
            server.close()  # the learner hears it once, here
        server.close()

    def test_a_dead_env_process_leaves_the_curriculum_running(self, no_leaked_threads):
        """Its open episode is scored as if truncated where it stopped; others go on."""
        with LocalCurriculumServer(partial(linear_plr, ("calm", "noisy"))) as server:
            context = multiprocessing.get_context("spawn")
            player = context.Process(target=play_three_steps_then_die, args=(server.client,))
            player.start()
            player.join(60)
            assert player.exitcode == -signal.SIGKILL
            server.flush(30)
            assert sum(server.scored_steps().values()) == 3
            assert server.client.sample(2)[0] in ("calm", "noisy")


def play_three_steps_then_die(client) -> None:
    env = CurriculumWrapper(CoinEnv(), client)
    env.reset(seed=0)
    for _ in range(3):
        env.step(0)
    client.flush(30)
    os.kill(os.getpid(), signal.SIGKILL)


class TestLifecycle:
    def test_close_leaves_no_process_memory_or_thread(self, no_leaked_threads):
        server = LocalCurriculumServer(linear_plr, agent=LinearAgent())
        server.client.sample(1)  # a connection from this process, with its reader thread
        pid, memory = server.pid, Path("/dev/shm") / server._writers[0].name
        assert memory.exists()
        server.close()
        server.close()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not memory.exists()
        assert server.task_scores() == {}  # the final tables stay

    def test_the_workers_start_up_heap_is_out_of_the_collectors_sight(self, no_leaked_threads):
        # torch, the curriculum and its agent live as long as the worker: a full collection
        # that walked them would take a tenth of a second from the learner's cores.
        with LocalCurriculumServer(heap_report) as server:
            assert server.call("frozen_objects") > 10_000

    def test_interpreter_exit_ends_the_worker(self):
        script = ("from tests.curricula.hosting import linear_plr, LinearAgent\n"
                  "from syllabus_eval.curricula import LocalCurriculumServer\n"
                  "if __name__ == '__main__':\n"
                  "    server = LocalCurriculumServer(linear_plr, agent=LinearAgent())\n"
                  "    print(server.pid, server._writers[0].name)\n")
        run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        pid, name = run.stdout.split()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(int(pid)):
            time.sleep(0.1)
        assert not _alive(int(pid))
        assert not (Path("/dev/shm") / name).exists()
        assert "leaked" not in run.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_readme_example_runs():
    run = subprocess.run([sys.executable, "-c", readme_snippet("PLR in a worker process")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = eval(run.stdout.strip().splitlines()[-1])  # {task: score}
    assert scores and set(scores) <= {"standard", "long-pole", "short-pole", "heavy-pole",
                                      "weak-push"}


class TestBadInputs:
    def test_a_factory_that_builds_no_curriculum(self):
        with pytest.raises(ValueError, match="curriculum_fn: expected a factory returning a "
                                             "curriculum"):
            LocalCurriculumServer(not_a_curriculum)
        with pytest.raises(ValueError, match="curriculum_fn: expected a function"):
            LocalCurriculumServer("plr")

    def test_a_factory_that_cannot_travel(self):
        lock = threading.Lock()
        with pytest.raises(ValueError, match="curriculum_fn: expected a factory that can be "
                                             "pickled"):
            LocalCurriculumServer(lambda: lock)

    @pytest.mark.parametrize("kwargs, message", [
        ({"batch_records": 0}, "batch_records: expected an integer >= 1"),
        ({"prefetch": -1}, "prefetch: expected an integer >= 0"),
        ({"timeout": 0}, "timeout: expected a number > 0"),
        ({"max_delay": float("nan")}, "max_delay: expected a finite number"),
        ({"agent": "agent"}, "agent: expected the training agent"),
        ({"process": "yes"}, "process: expected True or False"),
        ({"nice": -1}, "nice: expected an integer >= 0"),
    ])
    def test_bad_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            LocalCurriculumServer(dummy_plr, **kwargs)

    def test_weights_that_do_not_fit(self, no_leaked_threads):
        with LocalCurriculumServer(linear_plr) as server:
            with pytest.raises(ValueError, match=r"weights: do not fit the hosted LinearAgent: "
                                                 r".*critic.weight: expected \(1, 1\), got "
                                                 r"\(2, 2\)"):
                server.load_weights({"critic.weight": torch.zeros(2, 2)})
            with pytest.raises(ValueError, match="weights: expected an nn.Module or a state "
                                                 "dict"):
                server.load_weights([1.0])
            with pytest.raises(ValueError, match="version: expected an integer >= 0"):
                server.load_weights(LinearAgent(), version=-1)

    def test_a_curriculum_that_takes_no_weights(self, no_leaked_threads):
        with LocalCurriculumServer(domain_randomization) as server, pytest.raises(
                ValueError, match="weights: DomainRandomization takes no weights"):
            server.load_weights(LinearAgent())

    def test_calls_by_name(self, no_leaked_threads):
        with LocalCurriculumServer(dummy_plr) as server:
            assert len(server.call("sample", 3)) == 3
            np.testing.assert_allclose(server.distribution(), [1 / 3] * 3)
            with pytest.raises(ValueError, match="name: expected a public method of "
                                                 "PrioritizedLevelReplay"):
                server.call("_check")
        with pytest.raises(RuntimeError, match="LocalCurriculumServer is closed"):
            server.call("sample")
