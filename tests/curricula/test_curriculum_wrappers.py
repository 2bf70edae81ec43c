"""The env wrapper and the curriculum server, with real Gymnasium vector envs."""

from __future__ import annotations

import math
import threading
from contextlib import ExitStack, suppress

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from syllabus_eval import CurriculumError, EvaluationError
from syllabus_eval.adapters import DummyEvaluator
from syllabus_eval.curricula import (
    Curriculum,
    CurriculumServer,
    CurriculumWrapper,
    DomainRandomization,
    PrioritizedLevelReplay,
)

TASKS = [2, 3, 5]


class Recorder(DomainRandomization):
    """Uniform tasks, and every record the wrapper sends."""

    wants_experience = True

    def __init__(self, tasks, **kwargs):
        super().__init__(tasks, **kwargs)
        self.records = []

    def observe(self, experience):
        self.records.append(experience)


class Broken(Curriculum):
    def distribution(self):
        raise RuntimeError("no distribution today")


def play(envs, counter, steps=150, seed=0):
    """Random actions; checks each env plays the task its info names."""
    obs, info = envs.reset(seed=seed)
    assert (obs[:, 1] == info["task"]).all()
    for _ in range(steps):
        obs, _, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert (obs[:, 1] == info["task"]).all()
        counter.step(info, terminated, truncated)
    envs.close()


class TestTaskAtReset:
    def test_task_reaches_the_env_through_reset_options(self, chain_env):
        env = CurriculumWrapper(chain_env(), DomainRandomization(TASKS, seed=0))
        obs, info = env.reset(seed=0)
        assert info["task"] in TASKS and obs[1] == info["task"]
        assert env.unwrapped.last_options == {"task": info["task"]}
        assert env.step(1)[-1]["task"] == info["task"]

    def test_a_task_in_the_options_wins(self, chain_env):
        env = CurriculumWrapper(chain_env(), DomainRandomization(TASKS))
        obs, info = env.reset(options={"task": 7, "other": 1})
        assert obs[1] == info["task"] == 7
        assert env.unwrapped.last_options == {"task": 7, "other": 1}

    def test_set_task_hook(self, chain_env):
        def set_length(env, task):
            env.unwrapped.length = task

        env = CurriculumWrapper(chain_env(), DomainRandomization([4]), set_task=set_length)
        obs, info = env.reset()
        assert obs[1] == info["task"] == 4
        assert env.unwrapped.last_options is None  # options pass through unchanged

    def test_each_reset_draws_again(self, chain_env):
        env = CurriculumWrapper(chain_env(), DomainRandomization(list(range(100)), seed=0))
        assert len({env.reset()[1]["task"] for _ in range(20)}) > 10


class TestStream:
    def test_records_of_one_episode(self, chain_env):
        recorder = Recorder([2])
        env = CurriculumWrapper(chain_env(), recorder, env_id="e0")
        env.reset()
        env.step(0)
        env.step(1)
        env.step(1)  # reaches the end of the chain of 2
        env.close()
        env.close()
        kinds = [(r.kind, r.env_id, r.reward, r.terminated) for r in recorder.records]
        assert kinds == [("reset", "e0", 0.0, False), ("step", "e0", 0.0, False),
                         ("step", "e0", 0.0, False), ("step", "e0", 1.0, True),
                         ("close", "e0", 0.0, False)]
        assert recorder.records[0].task == 2
        np.testing.assert_array_equal(recorder.records[3].obs, [2, 2])

    def test_no_stream_for_curricula_that_do_not_want_it(self, chain_env):
        class Silent(DomainRandomization):
            def observe(self, experience):
                raise AssertionError("the wrapper sent a record nobody wants")

        curriculum = Silent([2])
        env = CurriculumWrapper(chain_env(), curriculum)
        env.reset()
        env.step(1)
        env.close()

    def test_env_ids_are_unique_by_default(self, chain_env):
        ids = {CurriculumWrapper(chain_env(), Recorder([2])).env_id for _ in range(10)}
        assert len(ids) == 10


AUTORESET = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP]


class TestVectorEnvs:
    """Every transition reaches PLR once: envs in this process (sync) or in worker processes
    (async, through a CurriculumServer), with either autoreset mode."""

    @pytest.mark.parametrize("mode", AUTORESET)
    @pytest.mark.parametrize("vector_env", [SyncVectorEnv, AsyncVectorEnv])
    def test_plr_scores_every_transition_once(self, chain_env, transition_counter, vector_env,
                                              mode, no_leaked_threads):
        counter = transition_counter(4, mode)
        with ExitStack() as stack:
            plr = stack.enter_context(PrioritizedLevelReplay(
                TASKS, DummyEvaluator(gym.spaces.Discrete(2)), seed=0))
            source = plr
            if vector_env is AsyncVectorEnv:
                source = stack.enter_context(CurriculumServer(plr)).client
            play(vector_env([lambda: CurriculumWrapper(chain_env(), source)] * 4,
                            autoreset_mode=mode), counter)
        assert counter.total > 400
        assert plr.scored_steps() == dict(counter.counts)


class TestServer:
    def test_spawned_workers(self, no_leaked_threads):
        curriculum = DomainRandomization(TASKS, seed=0)
        with CurriculumServer(curriculum) as server:
            client = server.client
            envs = AsyncVectorEnv(
                [lambda: CurriculumWrapper(gym.make("CartPole-v1"), client,
                                           set_task=lambda env, task: None)] * 2,
                context="spawn")
            tasks = {envs.reset(seed=0)[1]["task"][0] for _ in range(10)}
            envs.close()
        assert tasks <= set(TASKS) and len(tasks) > 1

    def test_serves_this_process_too(self, no_leaked_threads):
        with CurriculumServer(DomainRandomization(TASKS, seed=0)) as server:
            assert set(server.client.sample(20)) == set(TASKS)
            server.close()

    def test_client_after_close(self):
        server = CurriculumServer(DomainRandomization(TASKS))
        client = server.client
        client.sample()
        server.close()
        with pytest.raises(RuntimeError, match="CurriculumServer (closed the connection|is "
                                               "gone)"):
            client.sample()

    @pytest.mark.filterwarnings("ignore:.*(error|exception|Shutting):UserWarning")
    def test_a_curriculum_failure_reaches_env_processes_and_close(self, chain_env,
                                                                   no_leaked_threads):
        server = CurriculumServer(Broken(TASKS))
        client = server.client
        envs = AsyncVectorEnv([lambda: CurriculumWrapper(chain_env(), client)] * 2)
        with pytest.raises(RuntimeError, match="the CurriculumServer failed: RuntimeError"
                                               r"\('no distribution today'\)"):
            envs.reset()
        envs.close()
        with pytest.raises(EvaluationError, match="no distribution today"):
            server.close()


class Closable(gym.Wrapper):
    """Remembers its close: where a simulator would be released."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.was_closed = False

    def close(self) -> None:
        self.was_closed = True
        super().close()


class NanReward(gym.Wrapper):
    """Every reward is NaN: PLR's worker fails on the first one it scores (issue #19)."""

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        return obs, math.nan, terminated, truncated, info


def new_thread(name: str, before: set[threading.Thread]) -> threading.Thread:
    (thread,) = [t for t in threading.enumerate() if t.name == name and t not in before]
    return thread


class TestCloseAfterFailure:
    """A SyncVectorEnv of four wrappers closes all four after its curriculum failed, and the
    failure is reported once: by the first step after it, or else by the curriculum's close."""

    def reset(self, chain_env, source):
        """Four closable envs paying NaN rewards, after their first reset."""
        inner = [Closable(NanReward(chain_env())) for _ in range(4)]
        envs = SyncVectorEnv([lambda env=env: CurriculumWrapper(env, source) for env in inner])
        envs.reset(seed=0)
        return envs, inner

    def fail(self, envs, worker: threading.Thread) -> None:
        """One step: PLR's worker dies on the NaN rewards."""
        envs.step(np.ones(4, dtype=np.int64))
        worker.join(30)  # ends only by failing: nothing closed the curriculum
        assert not worker.is_alive()

    def failed(self, chain_env, source, worker: threading.Thread):
        envs, inner = self.reset(chain_env, source)
        self.fail(envs, worker)
        return envs, inner

    def plr(self):
        before = set(threading.enumerate())
        plr = PrioritizedLevelReplay([5], DummyEvaluator(gym.spaces.Discrete(2)))
        return plr, new_thread("PrioritizedLevelReplay worker", before)

    def test_reported_by_a_step_then_every_env_closes(self, chain_env, no_leaked_threads):
        plr, worker = self.plr()
        envs, inner = self.failed(chain_env, plr, worker)
        with pytest.raises(CurriculumError, match="PrioritizedLevelReplay worker failed") as info:
            envs.step(np.ones(4, dtype=np.int64))
        assert "experience.reward: expected a finite number, got nan" in str(
            info.value.__cause__)
        envs.close()  # does not raise it again
        assert [env.was_closed for env in inner] == [True] * 4 and envs.closed
        plr.close()  # nor does the curriculum

    def test_unreported_then_every_env_closes_and_the_curriculum_reports_it(
            self, chain_env, no_leaked_threads):
        plr, worker = self.plr()
        envs, inner = self.failed(chain_env, plr, worker)
        envs.close()
        assert [env.was_closed for env in inner] == [True] * 4 and envs.closed
        with pytest.raises(CurriculumError, match="experience.reward"):
            plr.close()  # reported once, here
        plr.close()

    def test_through_a_failed_server(self, chain_env, no_leaked_threads):
        plr, worker = self.plr()
        before = set(threading.enumerate())
        server = CurriculumServer(plr)
        envs, inner = self.reset(chain_env, server.client)
        handler = new_thread("CurriculumServer connection", before)
        self.fail(envs, worker)
        # The server's next observe fails and drops the client: on one of the first step's
        # records, or on this step's (then this step passes).
        with suppress(RuntimeError):
            envs.step(np.ones(4, dtype=np.int64))
        handler.join(30)
        assert not handler.is_alive()
        envs.close()  # the close records find the connection gone: dropped, the envs closed
        assert [env.was_closed for env in inner] == [True] * 4 and envs.closed
        with pytest.raises(EvaluationError, match="CurriculumServer connection failed"):
            server.close()
        plr.close()  # the server's thread was told first

    def test_after_the_server_closed(self, chain_env, no_leaked_threads):
        inner = [Closable(chain_env()) for _ in range(4)]
        with PrioritizedLevelReplay(TASKS, DummyEvaluator(gym.spaces.Discrete(2))) as plr:
            server = CurriculumServer(plr)
            envs = SyncVectorEnv(
                [lambda env=env: CurriculumWrapper(env, server.client) for env in inner])
            envs.reset(seed=0)
            envs.step(np.ones(4, dtype=np.int64))
            server.close()  # the wrong order: the envs are still open
            envs.close()
        assert [env.was_closed for env in inner] == [True] * 4 and envs.closed


class TestBadInputs:
    def test_not_a_curriculum(self, chain_env):
        with pytest.raises(ValueError, match="curriculum: expected a curriculum or a "
                                             "CurriculumServer client"):
            CurriculumWrapper(chain_env(), object())
        with pytest.raises(ValueError, match="curriculum: expected a curriculum"):
            CurriculumServer([1, 2])

    def test_bad_set_task(self, chain_env):
        with pytest.raises(ValueError, match="set_task: expected a callable"):
            CurriculumWrapper(chain_env(), DomainRandomization(2), set_task="length")

    def test_bad_k_and_timeout(self):
        with pytest.raises(ValueError, match="timeout: expected a number > 0"):
            CurriculumServer(DomainRandomization(2), timeout=0)
        with CurriculumServer(DomainRandomization(2)) as server, pytest.raises(
                ValueError, match="k: expected an integer >= 1"):
            server.client.sample(0)
