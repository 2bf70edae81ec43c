"""The backend registry and interface: one list of names for the runner and the CLI, abstract
methods that fail when a backend is built, the typed worker protocol."""

from __future__ import annotations

import pickle

import gymnasium as gym
import pytest

from syllabus_eval import EnvSpec, EvalRunner, ProcessBackend, RolloutSettings, Snapshot, cli
from syllabus_eval.errors import RemoteFailure
from syllabus_eval.evaluation.backends import BACKENDS, Backend, as_backend, backend_class
from syllabus_eval.evaluation.backends.pool import PooledBackend
from syllabus_eval.evaluation.backends.workers import Event, EventKind, JobOrder
from tests.workers import cartpole, cartpole_evaluator


class TestRegistry:
    def test_every_name_builds_its_class(self):
        for name in BACKENDS:
            assert issubclass(backend_class(name), Backend)

    def test_the_cli_offers_the_registered_backends(self):
        parser = cli._parser()
        commands = parser._subparsers._group_actions[0].choices
        for command in ("demo", "evaluate"):
            backend = next(a for a in commands[command]._actions if a.dest == "backend")
            assert backend.choices == list(BACKENDS)

    def test_an_unknown_name_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match=r"backend: expected one of \['auto', 'thread', "
                                             r"'process', 'ray'\], got str 'gpu'"):
            EvalRunner(cartpole, cartpole_evaluator(), backend="gpu")

    def test_every_name_has_its_backend_object_and_back(self):
        for name in BACKENDS:
            assert as_backend(name).kind == name
            assert backend_class(as_backend(name).kind) is backend_class(name)

    def test_options_of_other_backends_are_refused(self):
        with pytest.raises(TypeError, match="num_workers"):
            as_backend("thread", num_workers=2)


class TestAbstractInterface:
    def test_a_backend_without_run_fails_when_built(self):
        class Incomplete(Backend):
            def close(self) -> None: ...

        with pytest.raises(TypeError, match="abstract method.*run"):
            Incomplete(EnvSpec(cartpole, num_envs=2), cartpole_evaluator(),
                       (RolloutSettings(num_episodes=2),))

    def test_a_pool_without_its_worker_methods_fails_before_starting_any(self):
        class NoWorkers(PooledBackend):
            name = "none"

        with pytest.raises(TypeError, match="_close_workers, _payload, _poll, _start_worker"):
            NoWorkers(EnvSpec(cartpole, num_envs=2), cartpole_evaluator(),
                      (RolloutSettings(num_episodes=2),),
                      settings=ProcessBackend(evaluator_fn=cartpole_evaluator))


class TestWorkerProtocol:
    def test_events_and_orders_travel_between_processes(self):
        order = JobOrder(3, Snapshot(None, version=7, step=4096), stream=True)
        assert pickle.loads(pickle.dumps(order)) == order
        event = pickle.loads(pickle.dumps(Event(EventKind.DONE, 3, [])))
        assert event.kind is EventKind.DONE and (event.job, event.data) == (3, [])

    def test_a_failure_raises_the_workers_exception_with_its_traceback(self):
        with pytest.raises(gym.error.Error) as caught:
            gym.make("NoSuchEnv-v0")
        raised = pickle.loads(pickle.dumps(RemoteFailure.of(caught.value))).exception()
        assert type(raised) is type(caught.value) and str(raised) == str(caught.value)
        assert "gym.make" in str(raised.__cause__)
