"""The command line, end to end: the demo and evaluate in subprocesses, and every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import matplotlib.image
import numpy as np
import pytest
import torch

import syllabus_eval.sweep as sweep_module
import syllabus_eval.sweep.run as sweep_run
from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, Snapshot
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.cli import main
from syllabus_eval.demo.agents import CNNAgent, MLPAgent
from syllabus_eval.evaluation.checkpoints import save_checkpoint
from syllabus_eval.evaluation.normalization import ObsNormStats
from tests.models import fake_envs
from tests.test_sweep import STATS, FakeClock, balancing_state, normalized_cartpole
from tests.workers import cartpole_agent

ROOT = Path(__file__).parents[1]


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "syllabus_eval", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(3)
    envs = gym.make_vec("CartPole-v1", num_envs=1)
    path = tmp_path_factory.mktemp("agent") / "agent.pt"
    torch.save(MLPAgent(envs).state_dict(), path)
    return path


class TestDemo:
    def test_trains_evaluates_and_writes_what_it_claims(self, tmp_path: Path) -> None:
        run = cli("demo", "--steps", "2048", "--eval-every", "1024", "--seed", "1",
                  "--out", str(tmp_path), "--no-progress")
        assert run.returncode == 0, run.stderr
        assert "PLR probability" in run.stdout and "evaluation return" in run.stdout
        assert "held out" in run.stdout and "generalization gap" in run.stdout
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        steps = [e["eval/step"] for e in metrics["evaluations"]]
        assert steps[0] == 0 and steps[-1] == 2048 and steps == sorted(steps)
        final = metrics["final"]
        assert final == metrics["evaluations"][-1]
        assert final["eval/train/num_episodes"] == 50  # 10 per task, 5 tasks
        assert final["eval/test/num_episodes"] == 50  # the same quota, held-out tasks
        tasks = {key.split("/")[3] for key in final if key.startswith("eval/train/task/")}
        assert tasks == {"standard", "long-pole", "short-pole", "heavy-pole", "weak-push"}
        held_out = {key.split("/")[3] for key in final if key.startswith("eval/test/task/")}
        assert held_out == {"longer-pole", "heavy-cart", "strong-push"}
        assert final["eval/test/reward_ci_low"] <= final["eval/test/reward"] <= final[
            "eval/test/reward_ci_high"]
        assert final["eval/generalization_gap"] == pytest.approx(
            final["eval/train/reward"] - final["eval/test/reward"])
        assert (tmp_path / "best.pt").is_file()
        videos = sorted(path.name.split("_")[1] for path in (tmp_path / "videos").glob("*.mp4"))
        assert videos == sorted([*tasks, *held_out])  # one per task, at the end
        for record in metrics["priorities"]:
            assert sum(record["probabilities"].values()) == pytest.approx(1.0)
        image = matplotlib.image.imread(tmp_path / "demo.png")
        assert image.shape[0] > 300 and image.shape[1] > 300


class TestEvaluate:
    def test_evaluates_a_saved_agent_like_the_library_does(self, checkpoint: Path,
                                                           tmp_path: Path) -> None:
        out = tmp_path / "metrics.json"
        run = cli("evaluate", "--env", "CartPole-v1", "--agent",
                  "syllabus_eval.demo.agents:MLPAgent", "--checkpoint", str(checkpoint),
                  "--episodes", "6", "--num-envs", "3", "--seed", "5", "--json", str(out))
        assert run.returncode == 0, run.stderr
        assert "eval/reward" in run.stdout
        metrics = json.loads(out.read_text())
        agent = MLPAgent(gym.make_vec("CartPole-v1", num_envs=1))
        agent.load_state_dict(torch.load(checkpoint, weights_only=True))
        with EvalRunner(EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=3),
                        CleanRLEvaluator(agent), num_episodes=6,
                        episodes=EpisodeSettings(max_steps=None, seed=5)) as runner:
            expected = runner.evaluate()
        assert metrics["eval/num_episodes"] == 6
        assert metrics["eval/reward"] == expected["eval/reward"]
        assert metrics["eval/episode_length"] == expected["eval/episode_length"]

    def test_a_process_backend_gives_the_same_numbers(self, checkpoint: Path,
                                                      tmp_path: Path) -> None:
        outputs = {}
        for backend in ("thread", "process"):
            outputs[backend] = tmp_path / f"{backend}.json"
            assert main(["evaluate", "--env", "CartPole-v1", "--agent",
                         "syllabus_eval.demo.agents:MLPAgent", "--checkpoint", str(checkpoint),
                         "--episodes", "4", "--num-envs", "2", "--backend", backend,
                         "--json", str(outputs[backend])]) == 0
        thread, process = (json.loads(outputs[b].read_text()) for b in ("thread", "process"))
        for key in ("eval/reward", "eval/episode_length", "eval/num_episodes"):
            assert thread[key] == process[key]

    def test_reports_per_task(self, checkpoint: Path) -> None:
        code = main(["evaluate", "--env", "syllabus_eval.demo.envs:CartPoleTasks-v0", "--adapter",
                     "dummy", "--episodes", "4", "--num-envs", "2", "--tasks",
                     "short-pole,long-pole"])
        assert code == 0


def bad(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as caught:
        main(list(args))
    assert caught.value.code == 2
    return capsys.readouterr().err


EVALUATE = ["evaluate", "--env", "CartPole-v1"]


class TestBadInvocations:
    def test_missing_checkpoint_file(self, capsys) -> None:
        err = bad(capsys, *EVALUATE, "--agent", "syllabus_eval.demo.agents:MLPAgent",
                  "--checkpoint", "no/such/agent.pt")
        assert "--checkpoint: no such file 'no/such/agent.pt'" in err

    @pytest.mark.parametrize("spec,message", [
        ("no_such_module:Agent", "--agent: cannot import module 'no_such_module'"),
        ("syllabus_eval.demo.agents:NoAgent",
         "--agent: module 'syllabus_eval.demo.agents' has no 'NoAgent'"),
        ("MLPAgent", "--agent: expected module:Class, got 'MLPAgent'"),
        ("syllabus_eval.demo.envs:CartPoleTasks",
         "--agent: syllabus_eval.demo.envs:CartPoleTasks(envs) failed"),
    ])
    def test_class_that_does_not_load(self, capsys, spec: str, message: str) -> None:
        assert message in bad(capsys, *EVALUATE, "--agent", spec)

    def test_unknown_env_id(self, capsys) -> None:
        err = bad(capsys, "evaluate", "--env", "NoSuchEnv-v9", "--agent",
                  "syllabus_eval.demo.agents:MLPAgent")
        assert "--env: no Gymnasium environment 'NoSuchEnv-v9'" in err

    def test_checkpoint_that_does_not_fit(self, capsys, tmp_path: Path) -> None:
        path = tmp_path / "cnn.pt"
        frames = gym.spaces.Box(0, 255, (4, 84, 84))
        torch.save(CNNAgent(fake_envs(frames, gym.spaces.Discrete(2))).state_dict(), path)
        err = bad(capsys, *EVALUATE, "--agent", "syllabus_eval.demo.agents:MLPAgent",
                  "--checkpoint", str(path))
        assert "--checkpoint:" in err and "does not fit MLPAgent" in err

    def test_agent_is_required_for_agent_adapters(self, capsys) -> None:
        assert "--agent: required with --adapter cleanrl" in bad(capsys, *EVALUATE)

    @pytest.mark.parametrize("option", ["--episodes", "--num-envs", "--max-steps"])
    def test_counts_must_be_positive(self, capsys, option: str) -> None:
        assert f"argument {option}: expected an integer >= 1, got '0'" in bad(
            capsys, *EVALUATE, "--adapter", "dummy", option, "0")

    def test_demo_counts_must_be_positive(self, capsys) -> None:
        assert "argument --eval-every: expected an integer >= 1, got '-5'" in bad(
            capsys, "demo", "--eval-every", "-5")

    @pytest.mark.parametrize("tasks,episodes,message", [
        ("a,,b", "6", "argument --tasks: expected comma-separated task names, none empty"),
        ("a,b,c", "2", "--episodes: expected at least one episode per task (3 tasks), got 2"),
    ])
    def test_tasks(self, capsys, tasks: str, episodes: str, message: str) -> None:
        assert message in bad(capsys, *EVALUATE, "--adapter", "dummy", "--tasks", tasks,
                              "--episodes", episodes)

    @pytest.mark.parametrize("option", [["--lstm"], ["--checkpoint", "agent.pt"]])
    def test_options_the_dummy_adapter_would_ignore(self, capsys, option: list) -> None:
        assert f"{option[0]}: not used by --adapter dummy" in bad(
            capsys, *EVALUATE, "--adapter", "dummy", *option)

    def test_unknown_adapter_module(self, capsys) -> None:
        assert "--adapter: cannot import module 'nowhere'" in bad(
            capsys, *EVALUATE, "--adapter", "nowhere:Evaluator")

    def test_exit_status_reaches_the_shell(self) -> None:
        run = cli("evaluate", "--env", "NoSuchEnv-v9", "--adapter", "dummy")
        assert run.returncode == 2 and "no Gymnasium environment" in run.stderr


AGENT = ["--agent", "syllabus_eval.demo.agents:MLPAgent"]
QUICK = ["--episodes", "1", "--num-envs", "1", "--max-steps", "20"]


def strict_json(path: Path):
    """``path`` read as strict JSON: ``NaN`` and ``Infinity`` are refused."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def save_normalised(path: Path, step: int = 100) -> Path:
    """A checkpoint of a CartPole agent trained behind NormalizeObservation."""
    stats = ObsNormStats(np.zeros(4), np.ones(4), 10.0)
    return save_checkpoint(path, Snapshot(cartpole_agent(seed=step).state_dict(), step=step,
                                          obs_norm=stats))


def save_plain(folder: Path, steps=(100, 200)) -> Path:
    folder.mkdir(exist_ok=True)
    for step in steps:
        save_checkpoint(folder / f"c{step}.pt",
                        Snapshot(cartpole_agent(seed=step).state_dict(), step=step))
    return folder


class TestOwnEnv:
    def test_a_normalised_checkpoint_needs_the_wrapper_in_make_env(self, capsys, tmp_path):
        path = save_normalised(tmp_path / "best.pt")
        err = bad(capsys, "evaluate", "--make-env", "tests.workers:cartpole", *AGENT,
                  "--checkpoint", str(path), *QUICK)
        assert ("--make-env: expected an env with gymnasium.wrappers.NormalizeObservation, "
                f"since --checkpoint {str(path)!r} carries observation-normalisation "
                "statistics") in err
        assert "Traceback" not in err
        assert main(["evaluate", "--make-env", "tests.workers:normalized_cartpole", *AGENT,
                     "--checkpoint", str(path), *QUICK]) == 0

    def test_so_does_a_series_of_them(self, capsys, tmp_path):
        save_normalised(tmp_path / "ckpts" / "c100.pt")
        err = bad(capsys, "evaluate", "--make-env", "tests.workers:cartpole", *AGENT,
                  "--checkpoints", str(tmp_path / "ckpts"), *QUICK,
                  "--results", str(tmp_path / "r.jsonl"), "--curve", str(tmp_path / "c.png"))
        assert "--make-env: expected an env with gymnasium.wrappers.NormalizeObservation, " \
               "since the checkpoints of --checkpoints carry" in err

    def test_video_needs_rgb_array_frames_from_make_env(self, capsys, tmp_path):
        err = bad(capsys, "evaluate", "--make-env", "tests.workers:cartpole", "--adapter",
                  "dummy", "--video", str(tmp_path / "videos"), *QUICK)
        assert ("--video: expected the --make-env env to render frames "
                "(render_mode='rgb_array'), got render_mode=None") in err
        assert not (tmp_path / "videos").exists()

    def test_a_make_env_that_fails(self, capsys, tmp_path):
        path = save_normalised(tmp_path / "best.pt")
        err = bad(capsys, "evaluate", "--make-env", "tests.workers:remote_controlled_env",
                  *AGENT, "--checkpoint", str(path), *QUICK)
        assert "--make-env: tests.workers:remote_controlled_env() failed: TypeError" in err


class TestSeries:
    def test_json_writes_the_entries_as_strict_json(self, capsys, tmp_path):
        folder = save_plain(tmp_path / "ckpts")
        out = tmp_path / "entries.json"
        assert main(["evaluate", "--env", "CartPole-v1", *AGENT, "--checkpoints", str(folder),
                     "--results", str(tmp_path / "r.jsonl"), "--curve",
                     str(tmp_path / "curve.png"), "--json", str(out), *QUICK]) == 0
        entries = strict_json(out)
        assert [entry["step"] for entry in entries] == [100, 200]
        assert all(entry["metrics"]["eval/reward_ci_low"] is None for entry in entries)  # NaN
        assert [line["sha256"] for line in map(json.loads, (tmp_path / "r.jsonl").read_text(
        ).splitlines())] == [entry["sha256"] for entry in entries]
        assert f"wrote {tmp_path / 'r.jsonl'}, {out} and" in capsys.readouterr().out

    def test_a_curve_that_fails_at_the_end_still_prints_the_table(self, capsys, tmp_path,
                                                                 monkeypatch):
        folder = save_plain(tmp_path / "ckpts", steps=(100,))

        def full_disk(entries, path):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(sweep_module, "plot_sweep", full_disk)
        with pytest.raises(SystemExit) as caught:
            main(["evaluate", "--env", "CartPole-v1", *AGENT, "--checkpoints", str(folder),
                  "--results", str(tmp_path / "r.jsonl"), "--curve",
                  str(tmp_path / "curve.png"), *QUICK])
        assert caught.value.code == 2
        out, err = capsys.readouterr()
        assert "| 100  | c100.pt" in out
        assert "--curve:" in err and "No space left on device" in err

    def test_json_without_nan_for_one_evaluation(self, tmp_path):
        out = tmp_path / "metrics.json"
        assert main(["evaluate", "--env", "CartPole-v1", "--adapter", "dummy", *QUICK,
                     "--json", str(out)]) == 0
        metrics = strict_json(out)
        assert metrics["eval/reward_ci_low"] is None and metrics["eval/num_episodes"] == 1


class TestSeriesNumbers:
    """Issue #19: a sweep's numbers are those of its own settings and files."""

    def series(self, tmp_path: Path, *options: str) -> list[dict]:
        """The entries (``--json``) of a sweep of ``tmp_path/ckpts`` with ``options``."""
        out = tmp_path / "entries.json"
        assert main(["evaluate", "--env", "CartPole-v1", *AGENT, "--checkpoints",
                     str(tmp_path / "ckpts"), "--results", str(tmp_path / "r.jsonl"),
                     "--curve", str(tmp_path / "curve.png"), "--json", str(out),
                     "--num-envs", "2", *options]) == 0
        return strict_json(out)

    def test_a_rerun_with_max_steps_20_reports_returns_of_at_most_20(self, capsys, tmp_path):
        (tmp_path / "ckpts").mkdir()
        torch.save(balancing_state(), tmp_path / "ckpts" / "agent_100.pt")
        (uncut,) = self.series(tmp_path, "--episodes", "2")
        assert uncut["metrics"]["eval/reward"] > 100
        capsys.readouterr()
        (cut,) = self.series(tmp_path, "--episodes", "2", "--max-steps", "20")
        # CartPole pays 1 per step: both episodes cut at 20 steps return 20.
        assert cut["metrics"]["eval/reward"] == 20.0
        assert cut["metrics"]["eval/max_steps_cut"] == 2
        assert "step 100: agent_100.pt: return 20.0" in capsys.readouterr().out
        assert {key: cut["settings"][key] for key in ("env", "agent", "max_steps",
                                                      "num_episodes", "seed")} == {
            "env": "CartPole-v1", "agent": "syllabus_eval.demo.agents:MLPAgent",
            "max_steps": 20, "num_episodes": 2, "seed": 0}
        (again,) = self.series(tmp_path, "--episodes", "2", "--max-steps", "20")
        assert again == cut  # resumed, not evaluated again
        assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2

    def test_a_copy_at_a_later_step_has_its_own_line(self, capsys, tmp_path):
        folder = tmp_path / "ckpts"
        folder.mkdir()
        torch.save(cartpole_agent(seed=1).state_dict(), folder / "agent_1000.pt")
        # No update in between (CleanRL's way: steps in the names): a byte-for-byte copy.
        shutil.copyfile(folder / "agent_1000.pt", folder / "agent_9000.pt")
        first, copy = self.series(tmp_path, *QUICK)
        assert (first["step"], copy["step"]) == (1000, 9000)
        assert "reused_from" not in first
        assert copy["reused_from"] == str(folder / "agent_1000.pt")
        assert copy["metrics"] == {**first["metrics"], "eval/step": 9000}
        out = capsys.readouterr().out
        assert "step 9000: agent_9000.pt: return" in out
        assert "(the evaluation of agent_1000.pt, whose content it has)" in out
        table = [line for line in out.splitlines() if line.startswith("|")]
        rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table]
        assert rows[0][:3] == ["step", "checkpoint", "reused from"]
        assert rows[3][:3] == ["9000", "agent_9000.pt", "agent_1000.pt"]

    def test_watch_started_on_an_empty_folder_normalises_a_checkpoint_that_comes_later(
            self, tmp_path, monkeypatch):
        (tmp_path / "ckpts").mkdir()
        state = cartpole_agent(seed=100).state_dict()

        def write():
            save_checkpoint(tmp_path / "ckpts" / "c100.pt",
                            Snapshot(state, step=100, obs_norm=STATS))

        monkeypatch.setattr(sweep_run, "time", FakeClock({2.5: write}))
        (entry,) = self.series(tmp_path, "--episodes", "4", "--watch", "--idle-timeout", "5",
                               "--poll-interval", "1")
        with EvalRunner(EnvSpec(normalized_cartpole, num_envs=2),
                        CleanRLEvaluator(cartpole_agent(seed=0)), num_episodes=4) as runner:
            expected = runner.evaluate(state, step=100, obs_norm=STATS)
        assert "error" not in entry
        for key in ("eval/reward", "eval/episode_length", "eval/num_episodes"):
            assert entry["metrics"][key] == expected[key]


class TestBadSeries:
    @pytest.mark.parametrize("source,says", [
        ("missing", "no such file or folder"),
        ("empty", "a folder without .pt, .pth, .ckpt files"),
        ("empty/*.pt", "a glob pattern that matches no file"),
    ])
    def test_checkpoints_that_are_not_there(self, capsys, tmp_path, source, says):
        (tmp_path / "empty").mkdir()
        err = bad(capsys, *EVALUATE, *AGENT, "--checkpoints", str(tmp_path / source),
                  "--curve", str(tmp_path / "curve.png"))
        assert f"--checkpoints: expected a folder of checkpoints, a glob pattern or files, " \
               f"got {str(tmp_path / source)!r}: {says}" in err
        assert not (tmp_path / "curve.png").exists()

    def test_watching_under_a_missing_folder(self, capsys, tmp_path):
        err = bad(capsys, *EVALUATE, *AGENT, "--checkpoints", str(tmp_path / "no" / "ckpts"),
                  "--watch")
        assert "--checkpoints: expected a folder or glob whose parent folder exists" in err

    def test_a_curve_that_cannot_be_written(self, capsys, tmp_path):
        folder = save_plain(tmp_path / "ckpts", steps=(100,))
        err = bad(capsys, *EVALUATE, *AGENT, "--checkpoints", str(folder), "--curve",
                  str(folder / "c100.pt" / "curve.png"))
        assert "--curve: expected a path whose folder can be made" in err

    @pytest.mark.parametrize("option,value,message", [
        ("--idle-timeout", "-1", "argument --idle-timeout: expected a finite number of seconds "
                                 ">= 0, got '-1'"),
        ("--idle-timeout", "nan", "argument --idle-timeout: expected a finite number of "
                                  "seconds >= 0, got 'nan'"),
        ("--poll-interval", "0", "argument --poll-interval: expected a finite number of "
                                 "seconds > 0, got '0'"),
    ])
    def test_seconds(self, capsys, option, value, message):
        assert message in bad(capsys, *EVALUATE, *AGENT, "--checkpoints", "x", option, value)
