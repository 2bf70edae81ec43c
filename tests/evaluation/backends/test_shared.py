"""Weights through shared memory (issue #22): what a worker reads is the copy its trigger wrote,
whole; weights changed after a trigger never reach its evaluation; nothing is left behind."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
import torch
from torch import nn

from syllabus_eval import EnvSpec, EvalRunner, EvalSchedule, RolloutSettings, SaveBest
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.evaluation.backends import create_backend
from syllabus_eval.evaluation.backends.shared import SharedWeights
from syllabus_eval.query.weights import weight_source
from tests.gates import SPACES, set_action
from tests.workers import remote_controlled_action_env

WAIT = 60  # seconds any wait may take: a hang fails, it never blocks the suite


def hand_made(scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A state dict of known values, of several dtypes and shapes (a scalar included)."""
    return {"weight": torch.arange(6, dtype=torch.float32).view(2, 3) * scale,
            "mask": torch.tensor([True, False, True]),
            "count": torch.tensor(7 * int(scale), dtype=torch.int64),
            "halves": torch.full((5,), scale, dtype=torch.float16)}


class Holder(nn.Module):
    """A module whose state dict is :func:`hand_made`'s."""

    def __init__(self) -> None:
        super().__init__()
        for name, value in hand_made().items():
            self.register_buffer(name, torch.zeros_like(value))


def another_handle(shared: SharedWeights) -> SharedWeights:
    """The same memory as a worker holds it (pickled with PyTorch's reductions), but with no
    knowledge of what the training side holds: a writer that ignores ownership."""
    return pickle.loads(ForkingPickler.dumps(shared))


def read(shared: SharedWeights, ticket, during=None) -> dict[str, torch.Tensor]:
    """What a worker's agent would get: a copy of every tensor, ``during`` run half-way."""
    copied: dict[str, torch.Tensor] = {}

    def load(views):
        for index, (name, view) in enumerate(views.items()):
            if index == 2 and during is not None:
                during()
            copied[name] = view.clone()

    shared.load(ticket, load)
    return copied


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name])


class TestTheBuffer:
    def test_a_worker_reads_exactly_what_was_written(self):
        shared = SharedWeights.for_agent(Holder())
        ticket, view, version = shared.write(hand_made(2.0))
        assert version is None  # a state dict carries no version
        assert_same(read(another_handle(shared), ticket), hand_made(2.0))
        assert_same(dict(view), hand_made(2.0))  # the training side's view (checkpoints)

    def test_a_module_is_read_with_its_optimizer_step_count(self):
        agent = MLPAgent(SPACES)
        shared = SharedWeights.for_agent(agent)
        optimizer = torch.optim.SGD(agent.parameters(), lr=0.0)
        weight_source(agent)  # counts steps from here
        for _ in range(2):
            optimizer.step()
        ticket, _, version = shared.write(agent)
        assert version == 2
        assert_same(read(shared, ticket), {k: v for k, v in agent.state_dict().items()})

    def test_a_write_during_a_read_is_detected_not_evaluated(self):
        shared = SharedWeights.for_agent(Holder())
        ticket, _, _ = shared.write(hand_made(1.0))
        rogue = another_handle(shared)
        with pytest.raises(RuntimeError, match="changed while this worker read them"):
            read(shared, ticket, during=lambda: rogue.write(hand_made(3.0)))
        # and a reader that comes after it sees a copy other than its own
        with pytest.raises(RuntimeError, match="changed before this worker read them"):
            read(shared, ticket)

    def test_a_held_buffer_is_not_written_until_released(self):
        shared = SharedWeights.for_agent(Holder())
        ticket, view, _ = shared.write(hand_made(1.0))
        assert shared.write(hand_made(2.0)) is None  # held: the trigger takes a private copy
        assert_same(read(shared, ticket), hand_made(1.0))
        shared.release(ticket)
        assert len(view) == 0  # the training side's view ends with its evaluation
        second, _, _ = shared.write(hand_made(2.0))
        assert second.sequence > ticket.sequence and second.sequence % 2 == 0
        assert_same(read(shared, second), hand_made(2.0))

    @pytest.mark.parametrize("weights", [
        {**hand_made(), "weight": torch.zeros(3, 2)},           # another shape
        {**hand_made(), "halves": torch.zeros(5)},                # another dtype
        {k: v for k, v in hand_made().items() if k != "mask"},  # a key missing
    ], ids=["shape", "dtype", "missing"])
    def test_weights_that_do_not_fit_are_not_written(self, weights):
        shared = SharedWeights.for_agent(Holder())
        assert shared.write(weights) is None
        assert shared.write(hand_made()) is not None  # nothing was held

    def test_agents_whose_state_is_not_plain_tensors_share_nothing(self):
        class WithExtraState(Holder):
            def get_extra_state(self):
                return {"note": "not a tensor"}

            def set_extra_state(self, state):
                pass

        assert SharedWeights.for_agent(WithExtraState()) is None
        assert SharedWeights.for_agent(None) is None


def held_runner(folder: Path, agent: MLPAgent, **kwargs) -> EvalRunner:
    """A process runner on envs that wait while ``folder/hold`` exists (one worker)."""
    kwargs = {"num_episodes": 4, "backend": "process", **kwargs}
    return EvalRunner(EnvSpec(lambda: remote_controlled_action_env(str(folder)), num_envs=2),
                      CleanRLEvaluator(agent), **kwargs)


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert multiprocessing.active_children() == []


class TestProcessBackend:
    def test_weights_changed_after_the_trigger_do_not_reach_its_evaluation(self, agent,
                                                                            tmp_path):
        # The backend alone, so that the weights change before the worker reads them.
        envs = EnvSpec(lambda: remote_controlled_action_env(str(tmp_path)), num_envs=2)
        backend = create_backend("process", envs, CleanRLEvaluator(agent),
                                 [RolloutSettings(num_episodes=4)])
        try:
            snapshot = backend.snapshot(None, agent, step=1, background=True)  # acts 1
            assert snapshot.shared is not None  # the weights wait in shared memory
            set_action(agent, 0)  # training moves on before the worker reads them
            records = backend.run(snapshot, threading.Event(), None, True)
            backend.release(snapshot)
            assert [record.reward for record in records] == [5.0] * 4
            later = backend.snapshot(None, agent, step=2, background=True)  # reused, now 0
            assert later.shared is not None and later.shared.sequence > snapshot.shared.sequence
            records = backend.run(later, threading.Event(), None, True)
            assert [record.reward for record in records] == [0.0] * 4
            backend.release(later)
        finally:
            backend.close()

    def test_a_trigger_queued_behind_a_running_evaluation_gets_its_own_copy(self, agent,
                                                                             tmp_path):
        (tmp_path / "hold").touch()
        with held_runner(tmp_path, agent, schedule=EvalSchedule(busy_policy="queue")) as runner:
            assert runner.trigger_eval(agent, step=1)  # shared memory, held by this one
            set_action(agent, 0)
            assert runner.trigger_eval(agent, step=2)  # queued: a private copy
            set_action(agent, 1)
            assert runner.trigger_eval(agent, step=3)
            (tmp_path / "hold").unlink()
            results = [runner.wait(WAIT) for _ in range(3)]
            set_action(agent, 0)
            assert runner.trigger_eval(agent, step=4)  # the buffer is free again: shared
            results.append(runner.wait(WAIT))
            assert runner._last_job.snapshot.shared is not None
        assert [(r.step, r["eval/reward"]) for r in results] == [
            (1, 5.0), (2, 0.0), (3, 5.0), (4, 0.0)]

    def test_save_best_writes_the_evaluated_copy_from_shared_memory(self, agent, tmp_path):
        with held_runner(tmp_path, agent, callbacks=[SaveBest(tmp_path / "best.pt")]) as runner:
            assert runner.trigger_eval(agent, step=1)
            expected = {k: v.clone() for k, v in agent.state_dict().items()}
            set_action(agent, 0)  # moved on: the checkpoint holds what was evaluated
            assert runner.wait(WAIT)["eval/reward"] == 5.0
            assert runner._last_job.snapshot.shared is not None
        saved = torch.load(tmp_path / "best.pt", weights_only=False)["state_dict"]
        assert_same(saved, expected)

    def test_shutdown_leaves_no_process_or_shared_memory_behind(self, agent, tmp_path):
        before = shared_segments()
        runner = held_runner(tmp_path, agent)
        runner.trigger_eval(agent, step=1)
        runner.wait(WAIT)
        assert len(shared_segments() - before) == 1  # the buffer, mapped here
        assert runner.shutdown(timeout=10)
        gc.collect()
        assert multiprocessing.active_children() == []
        assert shared_segments() - before == set()


def shared_segments() -> set[str]:
    """PyTorch's shared-memory segments mapped into this process (with the default
    ``file_descriptor`` strategy they have no name left in /dev/shm, only mappings)."""
    with open("/proc/self/maps") as maps:
        return {line.split()[5] for line in maps if "/dev/shm/torch_" in line}

