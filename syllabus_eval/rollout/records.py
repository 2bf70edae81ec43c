"""What one evaluation runs and what it gives: settings, episode records, quotas.

Usage::

    from syllabus_eval import EpisodeSettings, RolloutSettings, episode_quota

    settings = RolloutSettings(num_episodes=20, max_steps=500, seed=0, tasks=["a", "b"])
    EpisodeSettings(max_steps=500, seed=0).run(20, tasks=["a", "b"])    # the same
    episode_quota(20, 8, slot=7)     # 3: slot i of k runs (N + i) // k episodes

The rules behind the numbers are in :mod:`syllabus_eval.rollout`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from syllabus_eval.errors import bad_argument, check_count, check_flag, check_number
from syllabus_eval.rollout.video import Clip, VideoSettings


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    """One finished evaluation episode.

    Attributes:
        env_index: the global index of the env slot whose quota it counts in (a floating
            episode may have run on another env of the same worker).
        episode_index: ``j`` for the slot's ``j``-th episode (from 0).
        reward: the episode's return: the raw return the env recorded, when it records
            episode statistics (``RecordEpisodeStatistics``: ``info["episode"]["r"]`` at the
            episode's end), else the sum of the rewards the env returned.
        length: steps in the episode (reset steps are not steps).
        terminated: the env ended the episode (a terminal state).
        truncated: the episode was cut short, by the env or by ``max_steps``.
        task: the task it ran (``None`` without tasks).
        success: the ``success_key`` entry of the last step's info, ``None`` if absent.
        wrapped_reward: the sum of the rewards the agent received, where it differs from
            ``reward`` (reward wrappers outside ``RecordEpisodeStatistics``, SB3 #181);
            ``None`` where they agree.
        info: the ``info_keys`` of :class:`RolloutSettings`, each reduced over the episode's
            steps; a key the episode never reported is absent.
        suite: the evaluation suite it belongs to (``None`` without suites).
        cut: ``max_steps`` cut it short (it is ``truncated`` too); the env's own time limit
            is not a cut.
        clip: its encoded video while it travels to the runner (``RolloutSettings.video``);
            results keep none (their videos are on ``result.videos``).
    """

    env_index: int
    episode_index: int
    reward: float
    length: int
    terminated: bool
    truncated: bool
    task: Any = None
    success: bool | None = None
    wrapped_reward: float | None = None
    info: Mapping[str, float] = field(default_factory=dict, hash=False)
    suite: str | None = None
    cut: bool = False
    clip: Clip | None = field(default=None, compare=False, hash=False, repr=False)


INFO_REDUCTIONS = ("last", "sum", "mean", "max", "min")


@dataclass(frozen=True, kw_only=True)
class EpisodeSettings:
    """How every episode of an evaluation runs and is summarised (the runner's ``episodes=``).

    Usage::

        EvalRunner(make_env, evaluator, episodes=EpisodeSettings(max_steps=500, seed=1))

    Recorded with each result (``result.settings["episodes"]``).
    """

    max_steps: int | None = None
    """Steps after which an episode is cut short (``truncated``, counted as
    ``eval/max_steps_cut``); ``None``: no limit beyond the env's own."""
    deterministic: bool | None = True
    """Greedy actions (``True``, as SB3's ``evaluate_policy``), sampled (``False``), or the
    evaluator's own default (``None``). Episodes are reproducible and identical across backends
    with greedy actions; sampled ones only when the evaluator's sampler is seeded and batches
    split alike (PyTorch's global generator is shared with training, so it is not re-seeded)."""
    seed: int | None = 0
    """A non-negative int from which every episode's reset seed is derived (by its slot and
    index, :mod:`syllabus_eval.rollout`): different seeds share no episodes, the same seed
    reproduces them; ``None``: unseeded resets."""
    interchangeable_slots: bool = False
    """Declare every env slot alike, so that each slot's last quarter of episodes may run on
    whichever env is free (the *floating tail*): evaluations end sooner. With slots that
    differ (one level or scene per slot) it biases toward short episodes; the default runs
    every episode on its own slot's env."""
    success_key: str = "success"
    """The info key read at the last step of an episode for its success."""
    info_keys: Mapping[str, str] | None = None
    """``{key: "last" | "sum" | "mean" | "max" | "min"}``: info entries reduced over each
    episode's steps (those that have the key), reported as ``eval/info/<key>``."""
    ci: float | None = 0.95
    """The confidence level of the intervals every mean gets (bootstrap for returns, Wilson
    for success rates, seeded by ``seed``); ``None``: none."""

    def __post_init__(self) -> None:
        if self.max_steps is not None:
            check_count("max_steps", self.max_steps)
        check_flag("deterministic", self.deterministic, none_ok=True)
        if self.seed is not None:
            check_count("seed", self.seed, low=0)  # SeedSequence takes no negative entropy
            object.__setattr__(self, "seed", int(self.seed))
        check_flag("interchangeable_slots", self.interchangeable_slots)
        if not isinstance(self.success_key, str):
            raise bad_argument("success_key", "an info key (str)", self.success_key)
        if self.info_keys is not None:
            object.__setattr__(self, "info_keys", _checked_info_keys(self.info_keys))
        if self.ci is not None:
            check_number("ci", self.ci, 0.0, 1.0, low_open=True, high_open=True)

    def run(self, num_episodes: int, *, tasks: Sequence[Any] | None = None,
            suite: str | None = None, video: VideoSettings | None = None) -> RolloutSettings:
        """These settings for one run of ``num_episodes`` (one suite's, with its tasks)."""
        shared = {item.name: getattr(self, item.name) for item in fields(EpisodeSettings)}
        return RolloutSettings(num_episodes, tasks=tasks, suite=suite, video=video, **shared)


def _checked_info_keys(info_keys: object) -> dict[str, str]:
    if not isinstance(info_keys, Mapping):
        raise bad_argument("info_keys", "a dict {info key: reduction}", info_keys)
    for key, reduction in info_keys.items():
        if not isinstance(key, str) or "/" in key or not key:
            raise bad_argument("info_keys", "info keys that are names without '/'", key)
        if reduction not in INFO_REDUCTIONS:
            raise bad_argument(f"info_keys[{key!r}]", f"one of {list(INFO_REDUCTIONS)}",
                               reduction)
    return dict(info_keys)


@dataclass(frozen=True)
class RolloutSettings(EpisodeSettings):
    """What one evaluation run executes (one suite's, with suites): the
    :class:`EpisodeSettings` (keyword-only) plus the episodes, tasks and videos of the run;
    shared by every backend and worker.

    Args:
        num_episodes: ``N``, the episodes counted, spread over the slots by fixed quotas.
        tasks: tasks assigned to episodes round robin (see :mod:`syllabus_eval.rollout`);
            ``None``: none.
        suite: the name of the evaluation suite these settings run (``None``: no suites).
        video: which episodes to record (``env.render()`` frames, see
            :mod:`syllabus_eval.rollout.video`); ``None``: none.
    """

    num_episodes: int
    tasks: Sequence[Any] | None = None
    suite: str | None = None
    video: VideoSettings | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("num_episodes", self.num_episodes)
        if self.tasks is not None:
            if isinstance(self.tasks, (str, bytes)) or not isinstance(self.tasks, Sequence) \
                    or not self.tasks:
                raise bad_argument("tasks", "a non-empty list of tasks or None", self.tasks)
            names = [str(task) for task in self.tasks]
            if len(set(names)) != len(names):
                raise bad_argument("tasks", "tasks with distinct names (metrics are keyed by "
                                   "str(task))", names)
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.suite is not None and (not isinstance(self.suite, str) or not self.suite
                                       or "/" in self.suite):
            raise bad_argument("suite", "a suite name without '/'", self.suite)
        if self.video is not None and not isinstance(self.video, VideoSettings):
            raise bad_argument("video", "a VideoSettings or None", self.video)


def episode_quota(num_episodes: int, num_slots: int, slot: int) -> int:
    """Episodes counted on env slot ``slot`` of ``num_slots``: ``(N + i) // k``."""
    return (num_episodes + slot) // num_slots


def episode_number(num_episodes: int, num_slots: int, slot: int, episode: int) -> int:
    """The round-by-round number of the ``episode``-th episode of ``slot`` (the rule for
    tasks in :mod:`syllabus_eval.rollout`).

    Quotas are ``q`` or ``q + 1`` (``q = N // k``) and the last ``N % k`` slots have ``q + 1``:
    rounds before ``q`` are full, round ``q`` holds only those last slots.
    """
    full_rounds, extra = divmod(num_episodes, num_slots)
    number = episode * num_slots + slot
    return number - (num_slots - extra) if episode == full_rounds else number


def sort_records(records: Iterable[EpisodeRecord]) -> list[EpisodeRecord]:
    """Records in ``(suite, env_index, episode_index)`` order: the order of every result, so
    that the same episodes give the same numbers however they were gathered (seeded resampling
    included)."""
    return sorted(records, key=_record_order)


def _record_order(record: EpisodeRecord) -> tuple[str, int, int]:
    return record.suite or "", record.env_index, record.episode_index
