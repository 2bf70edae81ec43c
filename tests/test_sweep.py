"""Checkpoint series: step order, one results line per checkpoint even across a killed sweep,
watching for new checkpoints, corrupt files reported and skipped, the curve per task."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import syllabus_eval.report as report
from syllabus_eval import EvalRunner, Snapshot
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.checkpoints import save_checkpoint
from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.sweep import evaluate_checkpoints, plot_sweep, sweep_table
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


def runner(**kwargs) -> EvalRunner:
    return EvalRunner(cartpole, CleanRLEvaluator(cartpole_agent(seed=0)), num_envs=2,
                      num_episodes=4, max_steps=100, **kwargs)


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
        with EvalRunner(TaskEnv, CleanRLEvaluator(task_agent(0)),
                        num_envs=2, num_episodes=6, tasks=[0, 1, 2]) as sweep_runner:
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

