"""The episode engine: exact, unbiased evaluation episodes of any evaluator over vectorized envs.

Usage::

    from syllabus_eval import RolloutSettings, make_envs, run_episodes

    envs = make_envs(lambda: gym.make("CartPole-v1"), num_envs=8)      # our own pool
    settings = RolloutSettings(num_episodes=20, max_steps=500, seed=0)
    episodes = run_episodes(evaluator, envs, settings)                   # 20 EpisodeRecords
    envs.close()

Rooms: :mod:`~syllabus_eval.rollout.records` (what an evaluation runs and gives),
:mod:`~syllabus_eval.rollout.plan` (which episode each env runs next, and its seed),
:mod:`~syllabus_eval.rollout.envs` (env slots and the pool),
:mod:`~syllabus_eval.rollout.spec` (how envs are made: :class:`EnvSpec`, :func:`make_envs`),
:mod:`~syllabus_eval.rollout.loop` (:func:`run_episodes`),
:mod:`~syllabus_eval.rollout.observers` (its per-episode features: info reductions, previous
steps, videos, each an observer), and their engines :mod:`~syllabus_eval.rollout.infos` and
:mod:`~syllabus_eval.rollout.video`. Every backend of
:class:`~syllabus_eval.EvalRunner` runs its episodes through :func:`run_episodes`. The rules
below make each episode a function of where it runs, never of timing, so that episodes can be
split across workers and merged.

**Env slots, quotas and pausing.** ``N`` episodes over ``k`` env slots give slot ``i`` the
fixed quota ``(N + i) // k`` (SB3 #402 / PR #447): never "the first N episodes to finish",
which over-counts short episodes. Which episodes count is fixed before any runs; an episode
that starts is counted when it ends, whatever its length. Env ``i`` runs slot ``i``'s episodes,
in order, and no others, whatever the envs are: the slots of one vector env may differ (one
level, scene or config per slot, as in Habitat), and so may the envs a factory returns. An
env that met its quota is paused: its recurrent state is sliced out of the batch (Habitat's
``pause_envs``). An :class:`EnvPool` of our own no longer steps a paused env; a Gymnasium
vector env steps all its sub-envs, so a paused one gets its last action again and its results
are dropped.

**The floating tail (opt-in).** With fixed quotas the slowest slot sets an evaluation's end.
A user whose slots are alike can say so with ``interchangeable_slots=True``
(:class:`RolloutSettings`): each slot's last ``q // 4`` episodes (of its quota ``q``) then
*float*: an env that met its own quota takes one, from the back of the slot with the most
left, and so on until none is left. A floating episode keeps its slot's seed (below), so it
is the same episode whichever env runs it *if the envs are alike*; on slots that differ it
would run on the wrong env and bias the numbers, hence the default.

**Seeding.** With ``seed`` set, every episode is reset with a seed of its own, derived from
``(seed, slot, episode)``: the 32-bit word ``j`` of
``numpy.random.SeedSequence(seed, spawn_key=(slot,)).generate_state(...)`` for episode ``j``
of the *global* slot index ``slot`` (see below)
(:func:`~syllabus_eval.rollout.plan.episode_seeds`). So evaluations with different seeds share
no episodes (evaluating training seeds 0..4 with ``seed=run_seed`` gives independent
samples), the same seed reproduces them exactly, and with deterministic actions (the default,
see :class:`RolloutSettings`) each episode depends only on its env, its seed and its task:
never on timing, on which env ran a floating one, or on how the slots are split between
workers. A vector env that cannot reset one sub-env alone (Gymnasium's native ones, with one
generator for all sub-envs, or one inside a vector wrapper that needs whole resets) is seeded
once, at its first reset, with its first slot's seed, and its later episodes start from its
own autoresets.

**Tasks.** Episodes are numbered round by round: round ``j`` holds the ``j``-th episode of
every slot that has one, in slot order, and episode number ``e`` runs ``tasks[e % len(tasks)]``
(round robin over the quotas: each task gets ``N // T`` or ``N // T + 1`` of the ``N``
episodes). The task reaches the env at its reset, as ``options={"task": task}``, or through the
``set_task(env, task)`` hook of :func:`make_envs` for envs that take tasks another way.

**A subset of slots.** ``run_episodes(..., slots=[4, 5, 6, 7], num_slots=8)`` runs global slots
4 to 7 of an 8-slot evaluation on a 4-env pool: quotas, seeds and tasks follow the global
indices (floating episodes, where opted in, move only between the share's envs), so the
records of workers that each run a share of the slots, put together, are the records of one
run over all of them (for stochastic actions see :class:`RolloutSettings`).

**Autoreset.** Gymnasium 1.x vector envs come in two modes (``envs.metadata["autoreset_mode"]``).
``NEXT_STEP`` (the default) resets a finished sub-env during the *next* step, which ignores
the action and gives reward 0: that step is counted in no episode, and the recurrent state
restarts after it, on the new episode's first observation. ``SAME_STEP`` resets a finished
sub-env inside the step that ends its episode: that step's reward is the episode's last, its
observation is the next episode's first, and its info is under ``info["final_info"]``; it is
counted once (Gymnasium PR #1624 under-counts it). Episodes that ``max_steps`` cuts, and with
a seed or tasks every episode, are reset by the loop through
``reset(seed=..., options={"reset_mask": ...})``; a vector env that ignores the mask
(Gymnasium's native ``CartPoleVectorEnv`` does) is caught rather than miscounted, and tasks on
one are refused. ``DISABLED`` vector envs are refused.

**Rewards.** An episode's return is the sum of the rewards the envs return. Wrappers applied
inside the env factory are part of the env, so evaluate on raw rewards by leaving reward
shaping (``NormalizeReward``, ``ClipReward``, ...) out of the evaluation env factory. Vector
reward wrappers around a vector env you pass would silently change returns, so they are
refused; apply the wrappers you want counted to each sub-env instead.
"""

from syllabus_eval.rollout.envs import EnvPool
from syllabus_eval.rollout.loop import StopFlag, check_fit, run_episodes
from syllabus_eval.rollout.records import (
           EpisodeRecord,
           EpisodeSettings,
           RolloutSettings,
           episode_quota,
           sort_records,
)
from syllabus_eval.rollout.spec import EnvSpec, GivenEnvs, VectorizationMode, make_envs
from syllabus_eval.rollout.video import VideoSelect, VideoSettings

__all__ = ["EnvPool", "EnvSpec", "EpisodeRecord", "EpisodeSettings", "GivenEnvs",
           "RolloutSettings", "StopFlag", "VectorizationMode", "VideoSelect", "VideoSettings",
           "check_fit", "episode_quota", "make_envs", "run_episodes", "sort_records"]
