"""Checkpoint series: step order, one results line per checkpoint even across a killed sweep,
watching for new checkpoints, corrupt files reported and skipped, the curve per task."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import syllabus_eval.results.report as report
import syllabus_eval.sweep.entries as sweep_entries
import syllabus_eval.sweep.files as sweep_files
import syllabus_eval.sweep.run as sweep_run
from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, Snapshot
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.evaluation.checkpoints import save_checkpoint
from syllabus_eval.evaluation.normalization import ObsNormStats
from syllabus_eval.sweep import (
    SweepEntry,
    evaluate_checkpoints,
    plot_sweep,
    step_in_name,
    sweep_table,
)
from tests.fake_envs import TaskEnv
from tests.models import fake_envs
from tests.workers import cartpole, cartpole_agent

ROOT = Path(__file__).parents[1]


def save_series(folder: Path, steps=(300, 100, 200)) -> dict[int, dict]:
    """Checkpoints of different agents at ``steps``, named so that name order is not step
    order; the last one a plain state dict whose step is in its name."""
    states = {}
    for i, step in enumerate(steps):
        state = cartpole_agent(seed=step).state_dict()
        states[step] = state
        if i == len(steps) - 1:
            torch.save(state, folder / f"agent_{step}.pt")  # CleanRL's way: no step entry
        else:
            save_checkpoint(folder / f"ckpt-{chr(ord('a') + i)}.pt", Snapshot(state, step=step))
    return states


def runner(make_env=cartpole, **kwargs) -> EvalRunner:
    return EvalRunner(EnvSpec(make_env, num_envs=2), CleanRLEvaluator(cartpole_agent(seed=0)),
                      **{"num_episodes": 4, "episodes": EpisodeSettings(max_steps=100),
                         **kwargs})


def task_agent(seed: int) -> MLPAgent:
    torch.manual_seed(seed)
    return MLPAgent(fake_envs(TaskEnv.observation_space, TaskEnv.action_space))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TestSweep:
    def test_step_order_metrics_and_files(self, tmp_path):
        states = save_series(tmp_path)
        results, board = tmp_path / "out" / "results.jsonl", tmp_path / "tb"
        with runner() as sweep_runner:
            entries = evaluate_checkpoints(tmp_path, sweep_runner, results=results,
                                           tensorboard=board, curve=tmp_path / "curve.png")
            expected = {step: sweep_runner.evaluate(state, step=step)
                        for step, state in states.items()}
        assert [entry.step for entry in entries] == [100, 200, 300]
        for entry in entries:
            want = {k: v for k, v in expected[entry.step].items() if k != "eval/fps"}
            assert {k: v for k, v in entry.metrics.items() if k != "eval/fps"} == want
        written = lines(results)
        assert [line["step"] for line in written] == [100, 200, 300]
        assert len({line["sha256"] for line in written}) == 3
        assert (tmp_path / "curve.png").stat().st_size > 0
        pytest.importorskip("tensorboard")  # installed by `make test` (the tensorboard extra)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(board))
        events.Reload()
        assert [e.step for e in events.Scalars("eval/reward")] == [100, 200, 300]

    def test_a_rerun_repeats_nothing(self, tmp_path):
        save_series(tmp_path)
        results = tmp_path / "results.jsonl"
        with runner() as sweep_runner:
            evaluate_checkpoints(tmp_path, sweep_runner, results=results)
            save_checkpoint(tmp_path / "late.pt", Snapshot(cartpole_agent(seed=9).state_dict(),
                                                           step=400))
            entries = evaluate_checkpoints(tmp_path, sweep_runner, results=results)
        assert [line["step"] for line in lines(results)] == [100, 200, 300, 400]
        assert [entry.step for entry in entries] == [100, 200, 300, 400]

    def test_corrupt_and_stepless_files_are_reported_and_the_sweep_goes_on(self, tmp_path):
        save_series(tmp_path, steps=(100, 200))
        (tmp_path / "broken_150.pt").write_bytes(b"half a checkpoint")
        torch.save(cartpole_agent(seed=1).state_dict(), tmp_path / "final.pt")  # no step
        torch.save({"actor.0.weight": torch.zeros(3)}, tmp_path / "other_250.pt")  # misfit
        with runner() as sweep_runner:
            entries = evaluate_checkpoints(tmp_path, sweep_runner)
        by_name = {Path(e.checkpoint).name: e for e in entries}
        assert "does not load" in by_name["broken_150.pt"].error
        assert by_name["broken_150.pt"].step == 150
        assert "no step" in by_name["final.pt"].error
        assert "weights: expected the keys and shapes" in by_name["other_250.pt"].error
        assert by_name["ckpt-a.pt"].error is None and by_name["agent_200.pt"].error is None
        table = sweep_table(entries)
        assert table.count("error") == 3 and "broken_150.pt" in table

    def test_watch_takes_a_checkpoint_written_meanwhile_and_stops_when_idle(self, tmp_path):
        save_series(tmp_path, steps=(100,))
        seen, done = [], threading.Event()
        with runner() as sweep_runner:
            def sweep():
                seen.extend(evaluate_checkpoints(tmp_path, sweep_runner, watch=True,
                                                 idle_timeout=3.0, poll_interval=0.2))
                done.set()

            thread = threading.Thread(target=sweep)
            started = time.monotonic()
            thread.start()
            time.sleep(1.0)
            save_checkpoint(tmp_path / "later.pt", Snapshot(cartpole_agent(seed=2).state_dict(),
                                                            step=500))
            assert done.wait(30), "watching never stopped"
            thread.join()
        assert [entry.step for entry in seen] == [100, 500]
        assert time.monotonic() - started >= 4.0  # it waited idle_timeout after the last one

    def test_one_curve_per_task(self, tmp_path, monkeypatch):
        folder = tmp_path / "ckpts"
        folder.mkdir()
        for step in (10, 20, 30):
            save_checkpoint(folder / f"c{step}.pt",
                            Snapshot(task_agent(step).state_dict(), step=step))
        drawn, save = [], report.save_figure

        def seeing(fig, path):  # the figure's curves, as it is saved
            drawn.extend([line.get_label() for line in ax.get_lines()] for ax in fig.axes)
            return save(fig, path)

        monkeypatch.setattr(report, "save_figure", seeing)
        with EvalRunner(EnvSpec(TaskEnv, num_envs=2), CleanRLEvaluator(task_agent(0)),
                        num_episodes=6, tasks=[0, 1, 2]) as sweep_runner:
            entries = evaluate_checkpoints(folder, sweep_runner)
        plot_sweep(entries, tmp_path / "curve.png")
        reward, success = drawn  # a panel each; a curve per task, and all of them
        assert reward == success == ["all", "0", "1", "2"]
        assert (tmp_path / "curve.png").is_file()


def test_a_killed_sweep_rerun_evaluates_every_checkpoint_exactly_once(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in (1000, 2000, 3000, 4000):
        save_checkpoint(folder / f"c{step}.pt", Snapshot(cartpole_agent(seed=step).state_dict(),
                                                         step=step))
    results = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "syllabus_eval", "evaluate", "--make-env",
               "tests.workers:SlowCartPole", "--agent", "syllabus_eval.demo.agents:MLPAgent",
               "--checkpoints", str(folder), "--results", str(results), "--episodes", "8",
               "--num-envs", "4", "--curve", str(tmp_path / "curve.png")]
    sweep = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (results.is_file() and lines(results)):
        assert time.monotonic() < deadline and sweep.poll() is None, "no checkpoint finished"
        time.sleep(0.05)
    sweep.send_signal(signal.SIGKILL)  # mid-sweep: no cleanup, no flushing of anything else
    sweep.wait(30)
    finished = len(lines(results))
    assert 1 <= finished < 4
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    steps = [line["step"] for line in lines(results)]
    assert sorted(steps) == [1000, 2000, 3000, 4000]  # each exactly once
    assert "| 4000 " in rerun.stdout and (tmp_path / "curve.png").is_file()


def strict_lines(path: Path) -> list[dict]:
    """The lines of ``path`` read as strict JSON: ``NaN`` and ``Infinity`` are refused."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()
            if line.strip()]


def drawn_labels(monkeypatch) -> list:
    """The curves' labels per panel of every figure saved from now on."""
    drawn, save = [], report.save_figure

    def seeing(fig, path):
        drawn.extend([line.get_label() for line in ax.get_lines()] for ax in fig.axes)
        return save(fig, path)

    monkeypatch.setattr(report, "save_figure", seeing)
    return drawn


class FakeClock:
    """``time`` for the sweep module: ``sleep`` advances the clock at once and runs what is
    due by then, so that watching is tested poll by poll, without waiting."""

    def __init__(self, due: dict[float, callable] | None = None) -> None:
        self.now, self.due, self.polls = 0.0, dict(due or {}), 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.polls += 1
        for when in sorted(self.due):
            if when <= self.now:
                self.due.pop(when)()


class TestFailedCheckpointsAreRetried:
    def test_a_rerun_evaluates_the_failed_ones_again_and_keeps_the_latest(self, tmp_path):
        save_series(tmp_path, steps=(100, 200))
        results = tmp_path / "results.jsonl"
        # An agent of another env: every checkpoint fails to load into it (a wrong --agent).
        with EvalRunner(EnvSpec(TaskEnv, num_envs=1), CleanRLEvaluator(task_agent(0)),
                        num_episodes=1) as wrong:
            first = evaluate_checkpoints(tmp_path, wrong, results=results)
        assert all(entry.error for entry in first) and len(first) == 2
        with runner() as right:
            again = evaluate_checkpoints(tmp_path, right, results=results)
            evaluated = []
            third = evaluate_checkpoints(tmp_path, right, results=results,
                                         on_entry=evaluated.append)
        assert [(e.step, e.error) for e in again] == [(100, None), (200, None)]
        assert all("eval/reward" in e.metrics for e in again)
        assert evaluated == []  # done ones are still skipped
        assert [(e.step, e.error) for e in third] == [(100, None), (200, None)]
        written = lines(results)  # one line per attempt
        assert [("error" in line, line["step"]) for line in written] == [
            (True, 100), (True, 200), (False, 100), (False, 200)]

    def test_a_checkpoint_that_fails_is_tried_once_per_sweep_while_watching(self, tmp_path,
                                                                           monkeypatch):
        (tmp_path / "broken_100.pt").write_bytes(b"half a checkpoint")
        monkeypatch.setattr(sweep_run, "time", FakeClock())
        with runner() as sweep_runner:
            entries = evaluate_checkpoints(tmp_path, sweep_runner, watch=True,
                                           idle_timeout=5, poll_interval=1)
        assert len(entries) == 1 and "does not load" in entries[0].error


class TestWatchClock:
    def test_a_file_seen_just_before_the_idle_timeout_is_waited_for(self, tmp_path,
                                                                   monkeypatch):
        def write():
            save_checkpoint(tmp_path / "late.pt", Snapshot(cartpole_agent(seed=4).state_dict(),
                                                           step=900))

        # Polls at 0, 2, 4, 6: the file appears at 6, when the 5 s idle timeout has passed,
        # and holds still only at the poll of 8.
        clock = FakeClock({5.5: write})
        monkeypatch.setattr(sweep_run, "time", clock)
        with runner() as sweep_runner:
            entries = evaluate_checkpoints(tmp_path, sweep_runner, watch=True, idle_timeout=5,
                                           poll_interval=2)
        assert [(entry.step, entry.error) for entry in entries] == [(900, None)]
        assert clock.now == 14  # idle for 5 s after the poll (8) that took it

    def test_a_file_still_growing_keeps_the_sweep_waiting(self, tmp_path, monkeypatch):
        growing = tmp_path / "growing_1.pt"
        due = {t + 0.5: (lambda t=t: growing.write_bytes(b"x" * (t + 1))) for t in range(10)}
        clock = FakeClock(due)
        monkeypatch.setattr(sweep_run, "time", clock)
        with runner() as sweep_runner:
            entries = evaluate_checkpoints(tmp_path, sweep_runner, watch=True, idle_timeout=3,
                                           poll_interval=1)
        assert len(entries) == 1 and "does not load" in entries[0].error  # taken when still
        assert clock.now >= 13


class TestHashing:
    def test_each_file_is_hashed_and_loaded_once_unless_it_changes(self, tmp_path,
                                                                  monkeypatch):
        save_series(tmp_path)
        hashed, loaded, sha256 = [], [], hashlib.sha256

        def counting_sha256(*args):
            hashed.append(1)
            return sha256(*args)

        def counting_load(path):
            loaded.append(Path(path).name)
            return load(path)

        load = sweep_run.load_checkpoint  # loaded to be evaluated (not to learn a step)
        monkeypatch.setattr(sweep_files.hashlib, "sha256", counting_sha256)
        monkeypatch.setattr(sweep_run, "load_checkpoint", counting_load)

        def rewrite():  # new content (a new mtime): hashed and evaluated again
            save_checkpoint(tmp_path / "ckpt-a.pt",
                            Snapshot(cartpole_agent(seed=7).state_dict(), step=700))

        clock = FakeClock({3.5: rewrite})
        monkeypatch.setattr(sweep_run, "time", clock)
        with runner() as sweep_runner:
            entries = evaluate_checkpoints(tmp_path, sweep_runner, watch=True,
                                           idle_timeout=5, poll_interval=1)
        assert clock.polls >= 9  # the other files were polled again and again
        assert len(hashed) == 4 + 1  # four file contents, and the settings' fingerprint once
        assert sorted(loaded) == ["agent_200.pt", "ckpt-a.pt", "ckpt-a.pt", "ckpt-b.pt"]
        assert [entry.step for entry in entries] == [100, 200, 300, 700]


class TestSuites:
    def test_a_row_per_suite_and_a_curve_per_suite_and_task(self, tmp_path, monkeypatch):
        for step in (10, 20):
            save_checkpoint(tmp_path / f"c{step}.pt",
                            Snapshot(task_agent(step).state_dict(), step=step))
        drawn = drawn_labels(monkeypatch)
        with EvalRunner(EnvSpec(TaskEnv, num_envs=2), CleanRLEvaluator(task_agent(0)),
                        num_episodes=6, suites={"train": [0, 1], "test": [2]}) as sweep_runner:
            entries = evaluate_checkpoints(tmp_path, sweep_runner,
                                           curve=tmp_path / "curve.png")
        table = sweep_table(entries).splitlines()
        assert [cell.strip() for cell in table[0].split("|")[1:-1]] == [
            "step", "checkpoint", "suite", "return", "95% interval", "success"]
        rows = [[cell.strip() for cell in row.split("|")[1:-1]] for row in table[2:]]
        by_suite = {(row[0], row[2]): row for row in rows}
        assert set(by_suite) == {("10", "train"), ("10", "test"), ("20", "train"),
                                 ("20", "test")}
        # TaskEnv: task t returns t per step for t + 1 steps; success when t is even.
        assert by_suite["10", "test"][3] == "6.0" and by_suite["10", "test"][5] == "100%"
        assert by_suite["10", "train"][3] == "1.0" and by_suite["10", "train"][5] == "50%"
        reward, success = drawn
        assert sorted(reward) == sorted(success) == sorted(
            ["train", "test", "train/0", "train/1", "test/2"])


class TestSource:
    @pytest.mark.parametrize("source,says", [
        ("missing", "no such file or folder"),
        ("empty", "a folder without .pt, .pth, .ckpt files"),
        ("empty/*.pt", "a glob pattern that matches no file"),
    ])
    def test_a_source_without_checkpoints_is_an_error(self, tmp_path, source, says):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("not a checkpoint")
        with runner() as sweep_runner, pytest.raises(ValueError, match="^source: ") as caught:
            evaluate_checkpoints(tmp_path / source, sweep_runner)
        assert says in str(caught.value)

    def test_watching_waits_for_an_empty_or_future_folder_but_not_under_a_missing_one(
            self, tmp_path):
        (tmp_path / "empty").mkdir()
        with runner() as sweep_runner:
            for source in ("empty", "later", "later/*.pt"):
                assert evaluate_checkpoints(tmp_path / source, sweep_runner, watch=True,
                                            idle_timeout=0) == []
            for source in ("no/such", "no/such/*.pt"):
                with pytest.raises(ValueError, match="^source: .*parent folder exists"):
                    evaluate_checkpoints(tmp_path / source, sweep_runner, watch=True,
                                         idle_timeout=0)

    @pytest.mark.parametrize("source,message", [
        (5, "source: expected a folder, a glob pattern or an iterable of checkpoint files, "
            "got int 5"),
        ([5], "source: expected checkpoint file paths, got int 5"),
        ([], "source: expected at least one checkpoint file, got an empty list"),
        (["no/such.pt"], "source: expected checkpoint files, got 'no/such.pt': no such file"),
    ])
    def test_bad_sources_are_named(self, source, message):
        with runner() as sweep_runner, pytest.raises(ValueError) as caught:
            evaluate_checkpoints(source, sweep_runner)
        assert str(caught.value) == message


class TestArguments:
    @pytest.mark.parametrize("name,value,message", [
        ("results", 5, "results: expected a path or None, got int 5"),
        ("tensorboard", 5, "tensorboard: expected a path or None, got int 5"),
        ("curve", 5, "curve: expected a path or None, got int 5"),
        ("curve", "ckpt-a.pt/curve.png", "curve: expected a path whose folder can be made"),
        ("curve", "", "curve: expected an image file name, got the folder"),
        ("curve", "curve.xyz", "curve: expected an image file ending in one of"),
        ("results", "", "results: expected a JSON-lines file, got the folder"),
        ("tensorboard", "ckpt-a.pt", "tensorboard: expected a folder, got the file"),
        ("on_entry", 5, "on_entry: expected a callable taking a SweepEntry, or None, got int"),
    ])
    def test_bad_arguments_are_named_before_anything_is_evaluated(self, tmp_path, name, value,
                                                                  message):
        save_series(tmp_path, steps=(100, 200))
        if isinstance(value, str):
            value = str(tmp_path / value) if value else str(tmp_path)
        evaluated = []
        with runner() as sweep_runner, pytest.raises(ValueError) as caught:
            evaluate_checkpoints(tmp_path, sweep_runner, **{
                "on_entry": evaluated.append, name: value})
        assert str(caught.value).startswith(message)
        assert evaluated == []

    def test_a_curve_that_still_fails_at_the_end_loses_no_entry(self, tmp_path, monkeypatch,
                                                               caplog):
        save_series(tmp_path, steps=(100, 200))

        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(sweep_entries, "plot_curves", full_disk)
        with runner() as sweep_runner, caplog.at_level(logging.WARNING, "syllabus_eval.sweep"):
            entries = evaluate_checkpoints(tmp_path, sweep_runner,
                                           curve=tmp_path / "curve.png")
        assert [entry.step for entry in entries] == [100, 200]
        assert "No space left on device" in caplog.text


class TestStepInName:
    @pytest.mark.parametrize("name,step", [
        ("agent_10000_seed1.pt", 10000),      # the largest number, not the last
        ("seed1_step_500.pt", 500),           # the one after a step word wins
        ("step_10000_seed_12345.pt", 10000),
        ("steps10000.pt", 10000),
        ("global_step=2048.ckpt", 2048),
        ("ppo_timesteps_300_v9000.pt", 300),
        ("model_iter-7_seed42.pth", 7),
        ("update12_seed99.pt", 12),
        ("rl_model_5000_steps.pt", 5000),     # SB3's CheckpointCallback
        ("Step_64.pt", 64),
        ("agent_200.pt", 200),
        ("final.pt", None),
    ])
    def test_rule(self, name, step):
        assert step_in_name(name) == step

    def test_a_sweep_orders_by_it(self, tmp_path):
        for name, seed in (("agent_900_seed1.pt", 1), ("agent_50_seed7.pt", 7)):
            torch.save(cartpole_agent(seed=seed).state_dict(), tmp_path / name)
        with runner() as sweep_runner:
            entries = evaluate_checkpoints(tmp_path, sweep_runner)
        assert [(Path(e.checkpoint).name, e.step) for e in entries] == [
            ("agent_50_seed7.pt", 50), ("agent_900_seed1.pt", 900)]


class TestNonFinite:
    def test_nan_is_written_as_null_and_read_back_as_nan(self, tmp_path):
        save_series(tmp_path, steps=(100,))
        results = tmp_path / "results.jsonl"
        with runner(num_episodes=1) as one_episode:  # one episode: no interval (NaN)
            entries = evaluate_checkpoints(tmp_path, one_episode, results=results)
            assert math.isnan(entries[0].metrics["eval/reward_ci_low"])
            (line,) = strict_lines(results)
            assert line["metrics"]["eval/reward_ci_low"] is None
            assert line["metrics"]["eval/reward"] == entries[0].metrics["eval/reward"]
            again = evaluate_checkpoints(tmp_path, one_episode, results=results)
        assert math.isnan(again[0].metrics["eval/reward_ci_low"])
        assert again[0].metrics["eval/reward"] == entries[0].metrics["eval/reward"]
        assert "nan" not in sweep_table(again)

    def test_to_json_is_strict_json(self):
        entry = SweepEntry("a.pt", "0" * 64, 5, {"eval/x": math.nan, "eval/y": math.inf,
                                                 "eval/z": 1.5})
        assert json.loads(json.dumps(entry.to_json(), allow_nan=False))["metrics"] == {
            "eval/x": None, "eval/y": None, "eval/z": 1.5}


def balancing_state() -> dict[str, torch.Tensor]:
    """A CartPole ``MLPAgent`` whose greedy action pushes the way the pole falls (right when
    ``theta + theta_dot > 0``): it keeps the pole up for hundreds of steps, so that a 20-step
    cut shows in every return."""
    agent = cartpole_agent(seed=0)
    with torch.no_grad():
        for layer in agent.actor[0], agent.actor[2], agent.actor[4]:
            layer.weight.zero_()
            layer.bias.zero_()
        agent.actor[0].weight[0] = torch.tensor([0.0, 0.0, 10.0, 10.0])  # [x, v, theta, omega]
        agent.actor[2].weight[0, 0] = 10.0
        agent.actor[4].weight[:, 0] = torch.tensor([-1.0, 1.0])  # logits [left, right]
    return agent.state_dict()


def counting(sweep_runner: EvalRunner) -> list:
    """The steps ``sweep_runner`` evaluates from now on."""
    evaluated, evaluate = [], sweep_runner.evaluate

    def counted(*args, **kwargs):
        evaluated.append(kwargs.get("step"))
        return evaluate(*args, **kwargs)

    sweep_runner.evaluate = counted
    return evaluated


def without_fps(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "eval/fps"}


class TestResultsAreKeyedBySettings:
    """Issue #19, point 4: results are reused only for the same content and settings."""

    def test_a_rerun_with_a_shorter_cut_evaluates_again(self, tmp_path, caplog):
        torch.save(balancing_state(), tmp_path / "agent_100.pt")
        results = tmp_path / "results.jsonl"
        with runner(episodes=EpisodeSettings(max_steps=None)) as uncut:
            (first,) = evaluate_checkpoints(tmp_path, uncut, results=results)
        assert first.metrics["eval/reward"] > 100  # it balances far past 20 steps uncut
        with runner(episodes=EpisodeSettings(max_steps=20)) as cut, caplog.at_level(logging.WARNING,
                                                          "syllabus_eval.sweep"):
            evaluated = counting(cut)
            (second,) = evaluate_checkpoints(tmp_path, cut, results=results)
        assert evaluated == [100]
        # CartPole pays 1 per step: each of the 4 episodes cut at 20 steps returns 20.
        assert second.metrics["eval/reward"] == 20.0
        assert second.metrics["eval/max_steps_cut"] == 4
        assert second.metrics["eval/reward_ci_high"] <= 20.0
        assert "max_steps None there, 20 now" in caplog.text
        written = lines(results)
        assert [line["settings"]["max_steps"] for line in written] == [None, 20]
        assert written[0]["settings_sha256"] != written[1]["settings_sha256"]
        assert written[1]["settings_sha256"] == second.settings_sha256

    def test_a_rerun_with_the_same_settings_evaluates_nothing_again(self, tmp_path):
        torch.save(balancing_state(), tmp_path / "agent_100.pt")
        results = tmp_path / "results.jsonl"
        for max_steps in (None, 20):
            with runner(episodes=EpisodeSettings(max_steps=max_steps)) as sweep_runner:
                evaluate_checkpoints(tmp_path, sweep_runner, results=results)
        for max_steps, reward in ((20, 20.0), (None, None)):
            with runner(episodes=EpisodeSettings(max_steps=max_steps)) as sweep_runner:
                evaluated = counting(sweep_runner)
                (entry,) = evaluate_checkpoints(tmp_path, sweep_runner, results=results)
            assert evaluated == []  # each settings' own lines are resumed
            if reward is not None:
                assert entry.metrics["eval/reward"] == reward
            else:
                assert entry.metrics["eval/reward"] > 100
        assert len(lines(results)) == 2

    def test_lines_without_settings_are_evaluated_again(self, tmp_path):
        torch.save(balancing_state(), tmp_path / "agent_100.pt")
        results = tmp_path / "results.jsonl"
        stale = {"checkpoint": str(tmp_path / "agent_100.pt"), "step": 100,
                 "sha256": hashlib.sha256((tmp_path / "agent_100.pt").read_bytes()).hexdigest(),
                 "metrics": {"eval/reward": 380.0}}  # as an older version wrote them
        results.write_text(json.dumps(stale) + "\n")
        with runner(episodes=EpisodeSettings(max_steps=20)) as sweep_runner:
            (entry,) = evaluate_checkpoints(tmp_path, sweep_runner, results=results)
        assert entry.metrics["eval/reward"] == 20.0

    def test_files_of_one_content_are_an_entry_each_and_say_whose_evaluation(
            self, tmp_path, monkeypatch):
        state = cartpole_agent(seed=1).state_dict()
        torch.save(state, tmp_path / "agent_1000.pt")
        # No update in between: the later file is a byte-for-byte copy.
        shutil.copyfile(tmp_path / "agent_1000.pt", tmp_path / "agent_9000.pt")
        results, points = tmp_path / "results.jsonl", drawn_points(monkeypatch)
        with runner() as sweep_runner:
            expected = without_fps(sweep_runner.evaluate(state, step=1000))
            evaluated = counting(sweep_runner)
            entries = evaluate_checkpoints(tmp_path, sweep_runner, results=results,
                                           curve=tmp_path / "curve.png")
            again = evaluate_checkpoints(tmp_path, sweep_runner, results=results)
        assert evaluated == [1000]  # once: the copy reuses that evaluation
        assert [(Path(e.checkpoint).name, e.step, e.reused_from) for e in entries] == [
            ("agent_1000.pt", 1000, None),
            ("agent_9000.pt", 9000, str(tmp_path / "agent_1000.pt"))]
        assert without_fps(entries[0].metrics) == expected
        assert without_fps(entries[1].metrics) == {**expected, "eval/step": 9000.0}
        assert [(e.checkpoint, e.reused_from) for e in again] == [
            (e.checkpoint, e.reused_from) for e in entries]
        written = lines(results)
        assert [(line["step"], line.get("reused_from")) for line in written] == [
            (1000, None), (9000, str(tmp_path / "agent_1000.pt"))]
        table = sweep_table(entries).splitlines()
        assert [cell.strip() for cell in table[0].split("|")[1:-1]] == [
            "step", "checkpoint", "reused from", "return", "95% interval", "success"]
        rows = [[cell.strip() for cell in row.split("|")[1:-1]] for row in table[2:]]
        assert [row[:3] for row in rows] == [["1000", "agent_1000.pt", ""],
                                             ["9000", "agent_9000.pt", "agent_1000.pt"]]
        assert rows[0][3:] == rows[1][3:]
        reward = expected["eval/reward"]
        assert points[0]["all"] == [(1000, reward), (9000, reward)]  # the return panel


def drawn_points(monkeypatch) -> list:
    """``{label: [(x, y), ...]}`` per panel of every figure saved from now on."""
    drawn, save = [], report.save_figure

    def seeing(fig, path):
        drawn.extend({line.get_label(): list(zip(*line.get_data())) for line in ax.get_lines()}
                     for ax in fig.axes)
        return save(fig, path)

    monkeypatch.setattr(report, "save_figure", seeing)
    return drawn


def normalized_cartpole() -> gym.Env:
    return gym.wrappers.NormalizeObservation(gym.make("CartPole-v1"))


# Statistics that change what the agent of cartpole_agent(seed=100) does (raw CartPole
# observations give it other returns): x shifted by 0.5, every feature scaled by 10.
STATS = ObsNormStats(np.array([0.5, 0.0, 0.0, 0.0]), np.full(4, 0.01), 1000.0)


class TestNormalisationPerCheckpoint:
    """Issue #19, point 5: whether envs normalise is decided per checkpoint."""

    def test_watching_an_empty_folder_takes_a_normalised_checkpoint_that_comes_later(
            self, tmp_path, monkeypatch):
        state = cartpole_agent(seed=100).state_dict()

        def write():
            save_checkpoint(tmp_path / "c100.pt", Snapshot(state, step=100, obs_norm=STATS))
            torch.save(state, tmp_path / "raw_200.pt")  # the same weights, no statistics

        monkeypatch.setattr(sweep_run, "time", FakeClock({2.5: write}))
        built, shut = [], []

        def normalising() -> EvalRunner:  # built when the first normalised checkpoint comes
            built.append(runner(make_env=normalized_cartpole))
            shutdown = built[-1].shutdown
            built[-1].shutdown = lambda *args: shut.append(True) or shutdown(*args)
            return built[-1]

        with runner() as plain:
            entries = evaluate_checkpoints(tmp_path, plain, watch=True, idle_timeout=5,
                                           poll_interval=1, normalized_runner=normalising)
        with runner(make_env=normalized_cartpole) as reference:
            normalised = without_fps(reference.evaluate(state, step=100, obs_norm=STATS))
        with runner() as reference:
            raw = without_fps(reference.evaluate(state, step=200))
        assert [(e.step, e.error) for e in entries] == [(100, None), (200, None)]
        assert without_fps(entries[0].metrics) == normalised
        assert without_fps(entries[1].metrics) == raw
        assert normalised["eval/reward"] != raw["eval/reward"]
        assert len(built) == 1 and shut == [True]  # the sweep shut down the one it built

    def test_a_normalising_runner_of_other_settings_is_refused(self, tmp_path):
        save_series(tmp_path, steps=(100,))
        refusal = (r"^normalized_runner: expected the settings of runner but for its envs, "
                   r"got num_episodes 8 \(runner: 4\)")
        with runner() as plain, runner(make_env=normalized_cartpole, num_episodes=8) as other, \
                pytest.raises(ValueError, match=refusal):
            evaluate_checkpoints(tmp_path, plain, normalized_runner=other)
