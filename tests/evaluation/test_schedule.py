"""Scheduled evaluations in env steps: crossing multiples (never step % N), busy runners that
skip and count, the final evaluation, and a schedule carried across a resumed run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from syllabus_eval import EvalSchedule, EvaluationError, StopOnReward
from syllabus_eval.demo.agents import MLPAgent
from tests.gates import SPACES, set_action
from tests.readme import readme_snippet


def crossings(steps: list[int], every: int) -> list[int]:
    """The steps at which an evaluation is due: first step beyond each crossed multiple."""
    due, last = [], 0
    for step in steps:
        if step // every > last // every:
            due.append(step)
        last = step if step // every > last // every else last
    return due


class TestEvalSchedule:
    @pytest.mark.parametrize("increment", [8, 1000, 4096])
    def test_a_jumping_counter_triggers_once_per_crossed_group(self, increment):
        schedule = EvalSchedule(every=1000)
        steps = list(range(increment, 50_000, increment))
        due = [step for step in steps if schedule.due(step)]
        assert due == crossings(steps, 1000)
        # every multiple of 1000 crossed exactly once, in groups
        assert len(due) == len({step // 1000 for step in steps if step >= 1000})

    def test_step_modulo_would_miss_them(self):
        steps = range(8 * 3, 50_000, 8 * 3)  # 8 envs x 3 steps: never a multiple of 1000 + 0
        schedule = EvalSchedule(every=1000)
        assert sum(schedule.due(step) for step in steps) == 49
        assert sum(step % 1000 == 0 for step in steps) == 16  # what `step % N == 0` catches

    def test_several_intervals_at_once_give_one(self):
        schedule = EvalSchedule(every=100)
        assert [schedule.due(s) for s in (50, 450, 460, 499, 500)] == [
            False, True, False, False, True]

    def test_resumed_with_another_interval(self):
        schedule = EvalSchedule(every=100)
        assert schedule.due(250)
        other = EvalSchedule(every=1000)
        other.load_state_dict(schedule.state_dict())
        assert not other.due(999) and other.due(1000)

    @pytest.mark.parametrize("every", [0, -5, 2.5, "10", True])
    def test_bad_interval(self, every):
        with pytest.raises(ValueError, match="every: expected an integer >= 1"):
            EvalSchedule(every)


class TestMaybeTrigger:
    def test_triggers_in_the_background_when_due(self, agent, gate):
        gate.open.set()
        with gate.runner(agent, schedule=EvalSchedule(every=1000, busy_policy="queue")) as runner:
            started = [runner.maybe_trigger(agent, step=step)
                       for step in range(4096, 20_000, 4096)]
            assert started == [True] * 4
            results = [runner.wait(30) for _ in range(4)]
        assert [r.step for r in results] == [4096, 8192, 12288, 16384]

    def test_a_busy_runner_skips_and_counts(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(every=10)) as runner:
            assert runner.schedule.busy_policy == "skip"  # the default
            assert runner.maybe_trigger(agent, step=10)  # held at the gate
            assert not runner.maybe_trigger(agent, step=20)
            assert not runner.maybe_trigger(agent, step=35)
            assert not runner.maybe_trigger(agent, step=38)  # not due: not a skip
            assert runner.skipped == 2
            gate.open.set()
            assert runner.wait(30).step == 10
            assert runner.maybe_trigger(agent, step=40)
            assert runner.wait(30).step == 40 and runner.skipped == 2

    def test_busy_policy_error_is_kept_when_asked(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(every=10, busy_policy="error")) as runner:
            runner.maybe_trigger(agent, step=10)
            with pytest.raises(RuntimeError, match="still pending"):
                runner.maybe_trigger(agent, step=20)
            gate.open.set()

    def test_weights_are_snapshotted_when_due(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner:
            runner.maybe_trigger(agent, step=100)
            set_action(agent, 0)  # training moves on while the evaluation waits
            gate.open.set()
            assert runner.wait(30)["eval/reward"] == 5.0

    @pytest.mark.parametrize("step, message", [
        (None, "step: expected an int"), (1.5, "step: expected an int"),
        (True, "step: expected an int")])
    def test_bad_steps(self, agent, gate, step, message):
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner, \
                pytest.raises(ValueError, match=message):
            runner.maybe_trigger(agent, step=step)

    def test_without_a_schedule(self, agent, gate):
        with gate.runner(agent) as runner, pytest.raises(ValueError, match="schedule: "
                                                                          "maybe_trigger needs"):
            runner.maybe_trigger(agent, step=100)


class TestFinalEval:
    def test_runs_once_after_the_pending_ones(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner:
            runner.maybe_trigger(agent, step=100)
            gate.open.set()
            final = runner.final_eval(agent, step=150)  # waits for step 100's, then runs
            assert final.step == 150 and not runner.pending
            assert runner.wait(30).step == 100
            assert runner.final_eval(agent, step=150) is final  # that step: evaluated already

    def test_the_last_trigger_at_that_step_is_the_final_one(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner:
            assert runner.maybe_trigger(agent, step=200)
            set_action(agent, 0)
            gate.open.set()
            final = runner.final_eval(agent, step=200)
            assert final["eval/reward"] == 5.0  # the snapshot of the trigger, not re-run
            assert runner.poll() is None and runner.wait() is None  # claimed by final_eval


    def test_weights_that_changed_since_are_evaluated_again(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner:
            assert runner.maybe_trigger(agent, step=200)  # during the last rollout
            gate.open.set()
            before = runner.wait(30)
            set_action(agent, 0)
            torch.optim.SGD(agent.parameters(), lr=0.0).step()  # the update after it
            final = runner.final_eval(agent, step=200)
        assert (before["eval/reward"], final["eval/reward"]) == (5.0, 0.0)


    def test_another_module_or_a_state_dict_is_evaluated(self, agent, gate):
        other = MLPAgent(SPACES)  # a module of its own, at version 0 too
        set_action(other, 0)
        gate.open.set()
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner:
            assert runner.maybe_trigger(agent, step=200)
            assert runner.final_eval(other, step=200)["eval/reward"] == 0.0
            runner.trigger_eval(agent.state_dict(), step=300)
            assert runner.final_eval(other.state_dict(), step=300)["eval/reward"] == 0.0
            assert [runner.wait(30)["eval/reward"] for _ in range(2)] == [5.0, 5.0]

    def test_other_observation_statistics_are_evaluated(self, agent, gate):
        stats = {"mean": [0.0], "var": [1.0], "count": 10.0}
        gate.open.set()
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner:
            assert runner.maybe_trigger(agent, step=200)
            triggered = runner.wait(30)
            # the trigger had none: with statistics, it is another evaluation (which here
            # fails, the envs having no NormalizeObservation to take them)
            with pytest.raises(EvaluationError, match="obs_norm"):
                runner.final_eval(agent, step=200, obs_norm=stats)
        assert triggered.step == 200


class TestResume:
    def test_the_schedule_and_the_best_carry_over(self, agent, gate):
        gate.open.set()
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner:
            runner.maybe_trigger(agent, step=150)
            runner.wait(30)
            state = runner.state_dict()
        assert state["schedule"]["next_due"] == 200 and state["results"]["best"] == 5.0
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as resumed:
            resumed.load_state_dict(state)
            assert not resumed.maybe_trigger(agent, step=199)
            assert resumed.maybe_trigger(agent, step=200)
            assert resumed.wait(30).is_best is False  # 5.0 again: no better than before

    def test_skips_and_a_fired_stop_carry_over_through_json(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(every=10),
                         callbacks=[StopOnReward(5.0, times=1)]) as runner:
            runner.maybe_trigger(agent, step=np.int64(10))  # NumPy counters are common
            assert not runner.maybe_trigger(agent, step=20)  # busy: skipped
            gate.open.set()
            runner.wait(30)
            state = json.loads(json.dumps(runner.state_dict()))
        assert state["skipped"] == 1 and state["results"]["stopped"] is True
        with gate.runner(agent, schedule=EvalSchedule(every=10)) as resumed:
            resumed.load_state_dict(state)
            assert resumed.skipped == 1 and resumed.should_stop

    @pytest.mark.parametrize("state, message", [
        ({"schedule": None}, "state: expected what EvalRunner.state_dict"),
        ({"schedule": None, "skipped": "x", "results": {}}, r"state\['skipped'\]: expected"),
        ({"schedule": {"eval_every": 100}, "skipped": 0, "results": {}},
         r"state\['schedule'\]: expected")])
    def test_bad_state(self, agent, gate, state, message):
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner, \
                pytest.raises(ValueError, match=message):
            runner.load_state_dict(state)

    def test_a_saved_schedule_is_not_dropped(self, agent, gate):
        with gate.runner(agent, schedule=EvalSchedule(every=100)) as runner:
            state = runner.state_dict()
        with gate.runner(agent) as unscheduled, pytest.raises(ValueError,
                                                              match="schedule: the state"):
            unscheduled.load_state_dict(state)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    """The README's periodic-evaluation example, executed verbatim."""
    code = readme_snippet("Periodic evaluation during training")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}  # run as a script, under its main guard
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    runner = namespace["runner"]
    assert runner.pending is False
    lines = (tmp_path / "runs" / "eval.jsonl").read_text().splitlines()
    assert len(lines) >= 2  # scheduled evaluations landed, then the final one
    assert (tmp_path / "runs" / "best.pt").is_file()
