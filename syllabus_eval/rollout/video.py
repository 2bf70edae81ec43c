"""Videos of evaluation episodes: which to record, frames encoded as they come, bounded memory.

Usage (what the episode loop does with ``RolloutSettings.video``)::

    settings = RolloutSettings(20, tasks=["a", "b"], video=VideoSettings(episodes=2))
    recorder = EpisodeRecorder(settings.video, groups_of_every_episode, fps=50)
    recorder.start(env, (slot, episode), group)   # an episode begins on env: record it?
    recorder.add(env, frame)                      # a frame of the episode env records
    recorder.finish(env, reward)                  # it ended: kept if it may still be selected
    recorder.kept()                               # {(slot, episode): Clip} once all ended

For each group of episodes (a task; the whole evaluation without tasks; per suite), ``episodes``
are selected: ``"first"`` (the first in ``(env_index, episode_index)`` order, known before
they run, so only those are recorded), ``"best"`` or ``"worst"`` (by return: every episode is
recorded, and only the ones that can still be selected are kept). Frames go to an encoder as
they come (MP4 through the ffmpeg that ``imageio-ffmpeg`` ships, GIF where it is missing), so
memory holds no episode's frames, and an episode's video stops at ``max_frames`` (a warning
says so). Clips travel back from process and Ray workers as their encoded bytes on the
episode's record; the runner picks the selected ones and writes them
(:func:`syllabus_eval.rollout.video.write_videos`).
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from syllabus_eval.errors import Choice, bad_argument, check_choice, check_count, describe

logger = logging.getLogger(__name__)

class VideoSelect(Choice):
    """Which episodes of each group are kept (:class:`VideoSettings`)."""

    FIRST = "first"  # in (env_index, episode_index) order: known before they run
    BEST = "best"  # by return
    WORST = "worst"


@dataclass(frozen=True)
class VideoSettings:
    """Which episodes an evaluation records, and where the runner writes them (its ``video=``).

    Usage::

        EvalRunner(make_env, evaluator, video=VideoSettings("runs/videos", episodes=2))

    The envs must render ``rgb_array`` frames; needs ``pip install 'syllabus-eval[video]'``.
    """

    folder: str | os.PathLike | None = None
    """Where the runner writes the videos (MP4, GIF without ffmpeg), named by suite, task, step
    and return, and lists them on ``result.videos``; the episode loop itself needs none."""
    episodes: int = 1
    """Episodes recorded per group: each task (per suite); the evaluation without tasks."""
    select: VideoSelect = VideoSelect.FIRST
    """``"first"`` (in slot order), ``"best"`` or ``"worst"`` return."""
    max_frames: int = 500
    """The most frames of one episode's video; a longer episode's stops there (a warning)."""

    def __post_init__(self) -> None:
        if self.folder is not None and not isinstance(self.folder, (str, os.PathLike)):
            raise bad_argument("folder", "a folder path or None", self.folder)
        check_count("episodes", self.episodes)
        object.__setattr__(self, "select", check_choice("select", self.select, VideoSelect))
        check_count("max_frames", self.max_frames)


@dataclass(frozen=True)
class Clip:
    """One episode's encoded video, as it travels on its record."""

    data: bytes
    format: str  # "mp4" or "gif"
    frames: int
    cut: bool  # max_frames stopped it before the episode ended


@dataclass(frozen=True)
class VideoFile:
    """A video an evaluation wrote (``result.videos``)."""

    path: Path
    suite: str | None
    task: Any
    env_index: int
    episode_index: int
    reward: float
    frames: int
    cut: bool


def video_support() -> tuple[Any, bool]:
    """``imageio`` and whether it has an ffmpeg for MP4 (else GIF); a clear error without it."""
    try:
        import imageio.v2 as imageio
    except ImportError as error:
        raise ImportError("videos need imageio: pip install 'syllabus-eval[video]' (with "
                          "imageio-ffmpeg, for MP4)") from error
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        return imageio, True
    except (ImportError, RuntimeError):
        return imageio, False


def render_offscreen() -> None:
    """Let pygame-based renderers (Gymnasium's classic control) draw without a display server.

    They open a pygame display even for ``rgb_array`` frames, and on a headless machine SDL then
    prints ``error: XDG_RUNTIME_DIR is invalid``. The command line and the demo call this before
    they build rendering envs; a driver chosen in ``SDL_VIDEODRIVER`` is kept.
    """
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


class EpisodeRecorder:
    """Records the episodes of one share of an evaluation (module docs).

    Args:
        settings: what to record.
        groups: gives the group of every episode of the evaluation,
            ``{(slot, episode): group}`` (all slots, not only this share's: ``"first"`` needs
            the whole order, and is the only selection that calls it).
        fps: the frame rate the videos play at (the env's ``render_fps``).
    """

    def __init__(self, settings: VideoSettings,
                 groups: Callable[[], dict[tuple[int, int], Any]], fps: float) -> None:
        self.settings, self.fps = settings, fps
        self.imageio, self.mp4 = video_support()
        self._first: set[tuple[int, int]] | None = None
        if settings.select == "first":
            by_group: dict[Any, list[tuple[int, int]]] = {}
            every = groups()
            for key in sorted(every):
                by_group.setdefault(every[key], []).append(key)
            self._first = {key for keys in by_group.values()
                           for key in keys[:settings.episodes]}
        self._folder = tempfile.TemporaryDirectory(prefix="syllabus-eval-video-")
        self._open: dict[int, _Encoder] = {}  # env -> the encoder of its running episode
        self._clips: dict[tuple[int, int], Clip] = {}  # (slot, episode) -> a kept clip
        self._heaps: dict[Any, list] = {}  # group -> its candidates ("best"/"worst")

    def start(self, env: int, key: tuple[int, int], group: Any) -> bool:
        """Episode ``key`` (``(slot, episode)``) begins on env ``env``; whether it is recorded
        (then :meth:`add` its frames)."""
        self.discard(env)
        if self._first is not None and key not in self._first:
            return False
        slot, episode = key
        path = Path(self._folder.name) / f"{slot}-{episode}.{'mp4' if self.mp4 else 'gif'}"
        self._open[env] = _Encoder(self.imageio, path, self.fps, self.mp4,
                                   self.settings.max_frames, group, key)
        return True

    def recording(self, env: int) -> bool:
        return env in self._open

    def add(self, env: int, frame: Any) -> None:
        """The next frame of the episode ``env`` records."""
        encoder = self._open.get(env)
        if encoder is not None:
            encoder.add(_as_frame(frame))

    def finish(self, env: int, reward: float) -> None:
        """The episode of ``env`` ended with ``reward``: its clip is kept if it may still be
        selected."""
        encoder = self._open.pop(env, None)
        if encoder is None:
            return
        clip = encoder.close()
        if self._first is not None:
            self._clips[encoder.key] = clip
            return
        # "best"/"worst": keep the episodes that can still be among the selected of their
        # group; the others' clips go (a heap of the kept, the least selectable on top; ties
        # go to the earlier episode, as in the runner's choice).
        sign = 1.0 if self.settings.select == "best" else -1.0
        heap = self._heaps.setdefault(encoder.group, [])
        entry = (sign * reward, tuple(-i for i in encoder.key))
        if len(heap) < self.settings.episodes:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            _, dropped = heapq.heapreplace(heap, entry)
            del self._clips[tuple(-i for i in dropped)]
        else:
            return
        self._clips[encoder.key] = clip

    def kept(self) -> dict[tuple[int, int], Clip]:
        """The clips that may be selected, by ``(slot, episode)``."""
        return dict(self._clips)

    def discard(self, env: int) -> None:
        """Drop the recording of ``env``'s running episode (it will not end counted)."""
        encoder = self._open.pop(env, None)
        if encoder is not None:
            encoder.close()

    def close(self) -> None:
        for env in list(self._open):
            self.discard(env)
        self._folder.cleanup()


class _Encoder:
    """Frames of one episode, streamed to a file; its bytes once it ends."""

    def __init__(self, imageio: Any, path: Path, fps: float, mp4: bool, max_frames: int,
                 group: Any, key: tuple[int, int]) -> None:
        self.path, self.max_frames, self.group, self.key = path, max_frames, group, key
        self.frames, self.cut = 0, False
        options = ({"fps": fps, "codec": "libx264", "macro_block_size": 2,
                    "ffmpeg_log_level": "error"} if mp4 else {"duration": 1000 / fps})
        self._writer = imageio.get_writer(path, **options)
        self.format = "mp4" if mp4 else "gif"

    def add(self, frame: np.ndarray) -> None:
        if self.frames >= self.max_frames:
            self.cut = True
            return
        self._writer.append_data(frame)
        self.frames += 1

    def close(self) -> Clip:
        self._writer.close()
        data = self.path.read_bytes() if self.frames else b""
        self.path.unlink(missing_ok=True)
        return Clip(data, self.format, self.frames, self.cut)


def _as_frame(frame: Any) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 frame with even sides (padded: H.264 needs them)."""
    if frame is None:
        raise ValueError("video_dir: expected env.render() to return a frame, got None; make "
                         "the env with render_mode='rgb_array' (gym.make(id, "
                         "render_mode='rgb_array'))")
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(f"video_dir: expected env.render() to return an RGB frame [H, W, 3] "
                         f"of uint8 (render_mode='rgb_array'), got {describe(array)}")
    array = array[:, :, :3]
    if array.shape[0] % 2 or array.shape[1] % 2:
        array = np.pad(array, ((0, array.shape[0] % 2), (0, array.shape[1] % 2), (0, 0)))
    return array


def write_videos(records: Iterable[Any], folder: str | os.PathLike, settings: VideoSettings,
                 step: int | None) -> list[VideoFile]:
    """Write the selected clips of an evaluation's records to ``folder``; the files."""
    groups: dict[Any, list] = {}
    for record in records:
        clip = record.clip
        if clip is not None and clip.frames:
            groups.setdefault((record.suite, _task_name(record.task)), []).append(record)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for (suite, task), candidates in groups.items():
        if settings.select == "best":
            candidates.sort(key=lambda r: (-r.reward, r.env_index, r.episode_index))
        elif settings.select == "worst":
            candidates.sort(key=lambda r: (r.reward, r.env_index, r.episode_index))
        else:
            candidates.sort(key=lambda r: (r.env_index, r.episode_index))
        for record in candidates[:settings.episodes]:
            clip = record.clip
            if clip.cut:
                logger.warning("the video of episode %d of env %d (%s) stops at %d frames "
                               "(max_frames) of its %d steps", record.episode_index,
                               record.env_index, task or "all", clip.frames, record.length)
            parts = [suite, task, f"step{step if step is not None else 'none'}",
                     f"env{record.env_index}", f"episode{record.episode_index}",
                     f"return{record.reward:.1f}"]
            name = "_".join(_safe(str(p)) for p in parts if p is not None)
            path = folder / f"{name}.{clip.format}"
            path.write_bytes(clip.data)
            written.append(VideoFile(path, suite, record.task, record.env_index,
                                     record.episode_index, record.reward, clip.frames,
                                     clip.cut))
    return written


def without_clips(records: Iterable[Any]) -> list[Any]:
    """The records with their clips dropped (results keep no video bytes)."""
    return [record if record.clip is None else replace(record, clip=None) for record in records]


def _task_name(task: Any) -> str | None:
    return None if task is None else str(task)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"
