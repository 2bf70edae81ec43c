"""Which episode each env runs next: the slots' fixed quotas, each on its own env, and the
floating tail for slots declared interchangeable; and the seed each episode is reset with.

Usage::

    plan = EpisodePlan(settings, slot_ids=[0, 1, 2, 3], num_slots=4)
    job = plan.first_job(env)      # (slot, episode) of the env's first episode, or None
    job = plan.next_job(env)       # after an episode ends: its next, or None (the env pauses)
    plan.seed(job), plan.task(job)

The rules (quotas, seeds, the floating tail) are in :mod:`syllabus_eval.rollout`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from syllabus_eval.rollout.records import RolloutSettings, episode_number, episode_quota

Job = tuple[int, int]  # (local slot, episode index in the slot's quota)


def episode_seeds(seed: int, slot: int, count: int) -> list[int]:
    """The reset seeds of the first ``count`` episodes of global slot ``slot`` in an evaluation
    seeded ``seed``: ``numpy.random.SeedSequence(seed, spawn_key=(slot,))``'s
    ``generate_state(count)``, 32-bit words (episode ``j`` gets word ``j``, the same for any
    ``count > j``).

    Hashed rather than ``seed + slot``-style offsets, so that evaluations with different seeds
    share no episodes (with ``seed + i``, seed 1's slot ``i`` was seed 0's slot ``i + 1``).
    32 bits: the range every Gymnasium env and simulator takes as a seed.
    """
    return np.random.SeedSequence(seed, spawn_key=(slot,)).generate_state(count).tolist()


class EpisodePlan:
    """The episodes of one share of an evaluation's slots, and who runs which.

    Env ``i`` of the share owns local slot ``i`` and runs its slot's episodes in order, and
    only those: slots may differ (one level or scene per slot), so an episode belongs to its
    slot's env. With ``settings.interchangeable_slots``, each slot's last ``quota // 4``
    episodes *float* instead: an env that met its own quota runs one, taken from the back of
    the slot with the most floating episodes left. Every episode is reset with a seed of its
    own, so which env runs a floating episode does not change it when the slots' envs are
    alike, and a share's episodes stay those of one run over every slot, however it is split.

    Args:
        settings: the evaluation's episodes, seed and tasks.
        slot_ids: the global index of each local slot.
        num_slots: the evaluation's number of slots (``K``).
    """

    def __init__(self, settings: RolloutSettings, slot_ids: Sequence[int], num_slots: int
                 ) -> None:
        self.settings, self.slot_ids, self.num_slots = settings, list(slot_ids), num_slots
        self.quotas = [episode_quota(settings.num_episodes, num_slots, i) for i in slot_ids]
        # Episode 0 never floats: it is the slot's seeded start, on its own env.
        self.floating_from = ([max(1, q - q // 4) for q in self.quotas]
                              if settings.interchangeable_slots else list(self.quotas))
        # [slot][episode], drawn once; at least one: an idle sub-env of a vector env is still
        # reset, as its slot's first episode would be.
        self._seeds = None if settings.seed is None else [
            episode_seeds(settings.seed, slot, max(quota, 1))
            for slot, quota in zip(self.slot_ids, self.quotas)]
        self._front = [0] * len(self.quotas)  # the next episode each owner takes
        self._end = list(self.quotas)  # one past the last episode not yet started

    def first_job(self, env: int) -> Job | None:
        """The first episode of env ``env`` (its slot's episode 0), None with a quota of 0."""
        return self.next_job(env) if self.quotas[env] else None

    def next_job(self, env: int) -> Job | None:
        """The episode env ``env`` starts now: its own slot's next, else a floating one of
        another slot (the last of the slot with the most left), else None: it pauses."""
        front, end = self._front, self._end
        if front[env] < end[env]:
            front[env] += 1
            return env, front[env] - 1
        left = [stop - max(start, first)
                for start, stop, first in zip(front, end, self.floating_from)]
        slot = max(range(len(left)), key=left.__getitem__)  # the first of the most left
        if left[slot] <= 0:
            return None
        end[slot] -= 1
        return slot, end[slot]

    def floats(self, job: Job) -> bool:
        slot, episode = job
        return episode >= self.floating_from[slot]

    def number(self, job: Job) -> int:
        """The episode's round-by-round number in the whole evaluation (tasks follow it)."""
        slot, episode = job
        return episode_number(self.settings.num_episodes, self.num_slots, self.slot_ids[slot],
                              episode)

    def seed(self, job: Job) -> int | None:
        """The seed the episode's reset takes (:func:`episode_seeds` of its global slot);
        None without a seed."""
        if self._seeds is None:
            return None
        slot, episode = job
        return self._seeds[slot][episode]

    def task(self, job: Job) -> int | None:
        """An index into the tasks for the episode (None: no tasks)."""
        tasks = self.settings.tasks
        return None if tasks is None else self.number(job) % len(tasks)
