"""Per-episode features of the episode loop, each one observer of a small fixed interface.

Usage (what :func:`~syllabus_eval.run_episodes` does)::

    observers = [InfoObserver(loop, info_keys), PreviousSteps(loop), VideoObserver(loop, ...)]
    obs = observer.inputs(obs)                        # before each query
    observer.on_step(actions, step, counted)          # after each env step
    record = observer.on_end(position, record)        # an episode ended: its record
    observer.on_start(positions)                      # episodes began at these positions
    observer.on_pause(rows)                           # only these active positions go on

Positions index the loop's active envs (arrays marked ``[A]``): when envs pause, every
observer slices its per-position state with :meth:`EpisodeObserver.on_pause`, as the loop
slices the recurrent state (Habitat's ``pause_envs``). A new per-episode feature is a new
observer: the loop's body has no branch per feature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium.vector.utils import create_empty_array

from syllabus_eval.rollout.envs import StepResult
from syllabus_eval.rollout.infos import InfoReducer
from syllabus_eval.rollout.plan import EpisodePlan
from syllabus_eval.rollout.records import EpisodeRecord
from syllabus_eval.rollout.video import EpisodeRecorder, VideoSettings

if TYPE_CHECKING:  # the loop builds its observers; they read its state
    from syllabus_eval.rollout.loop import EpisodeLoop


class EpisodeObserver:
    """One per-episode feature of the loop; every hook does nothing by default.

    Args:
        loop: the loop it observes (its ``active`` envs, their ``jobs``, ``plan``, ``pool``
            and ``settings``).
    """

    def __init__(self, loop: EpisodeLoop) -> None:
        self.loop = loop

    def inputs(self, obs: Any) -> Any:
        """The agent's inputs for this step, from the active envs' observations ``[A, ...]``."""
        return obs

    def on_step(self, actions: np.ndarray, step: StepResult, counted: np.ndarray | None
                ) -> None:
        """The active envs were stepped with ``actions`` ``[A, ...]``; ``counted`` ``[A]``
        marks the steps that belong to an episode (``None``: all of them)."""

    def on_end(self, position: int, record: EpisodeRecord) -> EpisodeRecord:
        """The episode at ``position`` ended: its record, with what this feature adds."""
        return record

    def on_start(self, positions: np.ndarray) -> None:
        """Episodes began at active ``positions``: the current observations are their
        first."""

    def on_pause(self, rows: np.ndarray) -> None:
        """Only the active positions ``rows`` go on (the others' envs paused)."""

    def finish(self, records: list[EpisodeRecord]) -> list[EpisodeRecord]:
        """The loop's records once every episode ended."""
        return records

    def close(self) -> None:
        """Release what it holds (also after a failure)."""


class PreviousSteps(EpisodeObserver):
    """Each active env's previous action and reward, zeros at an episode's start, handed to
    agents that read them (:class:`~syllabus_eval.PreviousStepQueries`; Habitat's
    ``pause_envs`` slices ``prev_actions`` too)."""

    def __init__(self, loop: EpisodeLoop) -> None:
        super().__init__(loop)
        size = loop.active.size
        self.actions = create_empty_array(loop.pool.single_action_space, size,
                                          fn=np.zeros)  # [A, ...]
        self.rewards = np.zeros(size, dtype=np.float32)  # [A]

    def inputs(self, obs: Any) -> Any:
        return self.loop.evaluator.with_previous_step(obs, self.actions, self.rewards)

    def on_step(self, actions: np.ndarray, step: StepResult, counted: np.ndarray | None
                ) -> None:
        self.actions = np.array(actions, dtype=self.actions.dtype)
        self.rewards = step.rewards.astype(np.float32)

    def on_start(self, positions: np.ndarray) -> None:
        self.actions[positions] = 0
        self.rewards[positions] = 0.0

    def on_pause(self, rows: np.ndarray) -> None:
        self.actions, self.rewards = self.actions[rows], self.rewards[rows]


class InfoObserver(EpisodeObserver):
    """Each episode's ``info_keys`` reductions (:mod:`syllabus_eval.rollout.infos`), onto its
    record's ``info``."""

    def __init__(self, loop: EpisodeLoop, info_keys: Mapping[str, str]) -> None:
        super().__init__(loop)
        self.reducer = InfoReducer(info_keys, loop.active.size)

    def on_step(self, actions: np.ndarray, step: StepResult, counted: np.ndarray | None
                ) -> None:
        self.reducer.add(step, counted)

    def on_end(self, position: int, record: EpisodeRecord) -> EpisodeRecord:
        info = self.reducer.episode(position)
        self.reducer.restart(position)
        return replace(record, info=info)

    def on_pause(self, rows: np.ndarray) -> None:
        self.reducer.keep(rows)


class VideoObserver(EpisodeObserver):
    """Records the episodes ``settings`` selects from ``env.render()`` frames
    (:mod:`syllabus_eval.rollout.video`); their clips go onto their records at the end."""

    def __init__(self, loop: EpisodeLoop, settings: VideoSettings) -> None:
        super().__init__(loop)
        self.recorder = EpisodeRecorder(settings, self._groups, loop.pool.render_fps)

    def on_step(self, actions: np.ndarray, step: StepResult, counted: np.ndarray | None
                ) -> None:
        # The frames of steps of running episodes: not of an autoreset step, nor of the first
        # observation of a SAME_STEP restart.
        same_episode = counted if step.restarted is None else (
            ~step.restarted if counted is None else counted & ~step.restarted)
        self._capture(np.arange(self.loop.active.size) if same_episode is None
                      else np.flatnonzero(same_episode))

    def on_end(self, position: int, record: EpisodeRecord) -> EpisodeRecord:
        self.recorder.finish(int(self.loop.active[position]), record.reward)
        return record

    def on_start(self, positions: np.ndarray) -> None:
        loop = self.loop
        for p in positions.tolist():
            slot, episode = job = loop.jobs[p]
            self.recorder.start(int(loop.active[p]), (loop.plan.slot_ids[slot], episode),
                                self._group(loop.plan.task(job)))
        self._capture(positions)

    def finish(self, records: list[EpisodeRecord]) -> list[EpisodeRecord]:
        kept = self.recorder.kept()
        return [replace(r, clip=kept[r.env_index, r.episode_index])
                if (r.env_index, r.episode_index) in kept else r for r in records]

    def close(self) -> None:
        self.recorder.close()

    def _group(self, task_id: int | None) -> tuple[str | None, str | None]:
        """The video group of an episode with task ``task_id``: ``(suite, task name)``."""
        settings = self.loop.settings
        return settings.suite, None if task_id is None else str(settings.tasks[task_id])

    def _groups(self) -> dict[tuple[int, int], Any]:
        """The video group of every episode of the evaluation, all slots' (``"first"`` picks
        among them all)."""
        num_slots = self.loop.plan.num_slots
        whole = EpisodePlan(self.loop.settings, range(num_slots), num_slots)
        return {(slot, episode): self._group(whole.task((slot, episode)))
                for slot, quota in enumerate(whole.quotas) for episode in range(quota)}

    def _capture(self, positions: np.ndarray) -> None:
        """The current frame of the episodes recorded at active ``positions``."""
        loop, recorder = self.loop, self.recorder
        envs = [env for env in loop.active[positions].tolist() if recorder.recording(env)]
        if envs:
            for env, frame in zip(envs, loop.pool.render_slots(envs)):
                recorder.add(env, frame)
