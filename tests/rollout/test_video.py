"""Videos of evaluation episodes: real CartPole frames in the thread and process backends, files
decoded back, first / best / worst per task, bounded memory, clear errors."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tracemalloc

import gymnasium as gym
import numpy as np
import pytest

imageio = pytest.importorskip("imageio.v2", reason="needs the video extra (make test installs "
                              "it): pip install 'syllabus-eval[video]'")

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, EvaluationError, VideoSettings  # noqa: E402
from syllabus_eval.adapters import DummyEvaluator  # noqa: E402
from syllabus_eval.evaluation.backends import as_backend  # noqa: E402
from tests.fake_envs import LengthEnv, PaintedLengthEnv  # noqa: E402
from tests.workers import cartpole_agent, cartpole_evaluator, rendered_cartpole  # noqa: E402


def decoded(path) -> tuple[int, tuple[int, int]]:
    reader = imageio.get_reader(path)
    try:
        return reader.count_frames(), tuple(reader.get_meta_data()["size"])
    finally:
        reader.close()


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_real_cartpole_videos_decode_back(backend, tmp_path):
    options = {} if backend == "thread" else {"evaluator_fn": cartpole_evaluator}
    with EvalRunner(EnvSpec(rendered_cartpole, num_envs=2), cartpole_evaluator(seed=3),
                    num_episodes=4, backend=as_backend(backend, **options),
                    video=VideoSettings(tmp_path, episodes=2)) as runner:
        result = runner.evaluate(step=300)
    assert [(v.env_index, v.episode_index) for v in result.videos] == [(0, 0), (0, 1)]
    for video in result.videos:
        record = next(r for r in result.episodes
                      if (r.env_index, r.episode_index) == (video.env_index, video.episode_index))
        assert video.path.suffix == ".mp4" and video.path.parent == tmp_path
        assert "step300" in video.path.name and f"return{record.reward:.1f}" in video.path.name
        # the first frame, then one a step; CartPole draws 600 x 400
        assert decoded(video.path) == (record.length + 1, (600, 400))
        assert video.frames == record.length + 1
    assert all(r.clip is None for r in result.episodes)  # results keep no video bytes


@pytest.mark.parametrize("select", ["first", "best", "worst"])
def test_the_selected_episodes_of_each_task(select, tmp_path):
    with EvalRunner(EnvSpec(PaintedLengthEnv, num_envs=4), DummyEvaluator(LengthEnv.action_space),
                    num_episodes=12, tasks=[0, 1],
                    video=VideoSettings(tmp_path, episodes=2, select=select)) as runner:
        result = runner.evaluate()
    for task in (0, 1):
        mine = [r for r in result.episodes if r.task == task]
        if select == "first":
            mine.sort(key=lambda r: (r.env_index, r.episode_index))
        else:
            mine.sort(key=lambda r: ((-r.reward if select == "best" else r.reward),
                                     r.env_index, r.episode_index))
        chosen = [(v.env_index, v.episode_index) for v in result.videos if v.task == task]
        assert chosen == [(r.env_index, r.episode_index) for r in mine[:2]]
        for video, record in zip([v for v in result.videos if v.task == task], mine):
            assert decoded(video.path)[0] == record.length + 1
    assert len(list(tmp_path.iterdir())) == 4


def test_a_long_episode_stops_at_the_cap_and_memory_holds_no_frames(tmp_path, caplog):
    class Long(gym.Wrapper):  # 300 steps of 400 x 600 frames: 216 MB if they were kept
        metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
        render_mode = "rgb_array"

        def __init__(self):
            super().__init__(LengthEnv())
            self.t = 0

        def reset(self, **kwargs):
            self.t = 0
            return self.env.reset(**kwargs)

        def step(self, action):
            self.t += 1
            obs, reward, _, _, info = self.env.step(action)
            return obs, reward, self.t >= 300, False, info

        def render(self):
            return np.full((400, 600, 3), self.t % 256, dtype=np.uint8)

    tracemalloc.start()
    with EvalRunner(EnvSpec(Long, num_envs=1), DummyEvaluator(LengthEnv.action_space),
                    num_episodes=1, episodes=EpisodeSettings(max_steps=None),
                    video=VideoSettings(tmp_path, max_frames=200)) as runner, \
            caplog.at_level(logging.WARNING):
        result = runner.evaluate()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    (video,) = result.videos
    assert video.cut and video.frames == 200 and decoded(video.path)[0] == 200
    assert "stops at 200 frames (max_frames) of its 300 steps" in caplog.text
    assert peak < 40 * 400 * 600 * 3  # no more than a few frames at a time, never 200


def test_an_env_without_rgb_array_says_how_to_fix_it(tmp_path):
    with EvalRunner(EnvSpec(lambda: PaintedLengthEnv(render_mode=None), num_envs=1),
                    DummyEvaluator(LengthEnv.action_space), num_episodes=1,
                    video=VideoSettings(tmp_path)) as runner, \
            pytest.raises(EvaluationError) as caught:
        runner.evaluate()
    assert "render_mode='rgb_array'" in str(caught.value.__cause__)


@pytest.mark.parametrize("kwargs, message", [
    ({"select": "median"}, r"select: expected one of \['first', 'best'"),
    ({"episodes": 0}, "episodes: expected an integer >= 1"),
    ({"max_frames": 0}, "max_frames: expected an integer >= 1"),
    ({"folder": 3}, "folder: expected a folder path"),
])
def test_bad_video_options(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoSettings(**{"folder": tmp_path, **kwargs})


def test_video_settings_without_a_folder_are_not_ignored():
    with pytest.raises(ValueError, match="video: expected VideoSettings with a folder"):
        EvalRunner(PaintedLengthEnv, DummyEvaluator(LengthEnv.action_space),
                   video=VideoSettings(episodes=3))


def test_the_cli_writes_videos(tmp_path):
    import torch

    from syllabus_eval.cli import main

    state = tmp_path / "agent.pt"
    torch.save(cartpole_agent(seed=3).state_dict(), state)
    assert main(["evaluate", "--make-env", "tests.workers:rendered_cartpole", "--agent",
                 "syllabus_eval.demo.agents:MLPAgent", "--checkpoint", str(state),
                 "--episodes", "2", "--num-envs", "2", "--video", str(tmp_path / "v")]) == 0
    assert len(list((tmp_path / "v").glob("*.mp4"))) == 1


def test_the_cli_renders_off_screen_without_a_display(tmp_path):
    """CartPole's renderer opens a pygame display even for ``rgb_array`` frames; headless, SDL
    would print ``error: XDG_RUNTIME_DIR is invalid`` into the user's output."""
    import torch

    state = tmp_path / "agent.pt"
    torch.save(cartpole_agent(seed=3).state_dict(), state)
    headless = {key: value for key, value in os.environ.items()
                if key not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "SDL_VIDEODRIVER")}
    done = subprocess.run(
        [sys.executable, "-m", "syllabus_eval", "evaluate", "--env", "CartPole-v1", "--agent",
         "syllabus_eval.demo.agents:MLPAgent", "--checkpoint", str(state), "--episodes", "1",
         "--num-envs", "1", "--video", str(tmp_path / "v")],
        env=headless, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "XDG_RUNTIME_DIR" not in done.stdout + done.stderr
    assert len(list((tmp_path / "v").glob("*.mp4"))) == 1


def test_render_offscreen_keeps_a_chosen_driver(monkeypatch):
    from syllabus_eval.rollout.video import render_offscreen

    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    render_offscreen()
    assert os.environ["SDL_VIDEODRIVER"] == "dummy"
    monkeypatch.setenv("SDL_VIDEODRIVER", "x11")
    render_offscreen()
    assert os.environ["SDL_VIDEODRIVER"] == "x11"
