"""The episode loop: the counted episodes of some env slots, run by any evaluator.

Usage::

    from syllabus_eval import RolloutSettings, make_envs, run_episodes

    envs = make_envs(lambda: gym.make("CartPole-v1"), num_envs=8)
    episodes = run_episodes(evaluator, envs, RolloutSettings(num_episodes=20))
    envs.close()

The rules it follows (quotas, pausing, seeds, tasks, autoreset, shares of slots) are in
:mod:`syllabus_eval.rollout`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import create_empty_array

from syllabus_eval.errors import EvaluationCancelled, bad_argument, check_count, describe
from syllabus_eval.query.inputs import take_rows
from syllabus_eval.query.protocols import (
    AgentQueries,
    PreviousStepQueries,
    RecurrentAgentQueries,
    is_recurrent,
)
from syllabus_eval.rollout.envs import EnvPool, StepResult, VectorSlots, as_slots
from syllabus_eval.rollout.observers import (
    EpisodeObserver,
    InfoObserver,
    PreviousSteps,
    VideoObserver,
)
from syllabus_eval.rollout.plan import EpisodePlan, Job
from syllabus_eval.rollout.records import EpisodeRecord, RolloutSettings, sort_records


class StopFlag(Protocol):
    """What :func:`run_episodes` asks before each step (a ``threading.Event`` is one)."""

    def is_set(self) -> bool: ...


def check_fit(evaluator: AgentQueries, envs: EnvPool | VectorEnv,
              deterministic: bool | None = True) -> None:
    """Raise a clear ``ValueError`` when the envs' spaces do not fit the evaluator.

    Asks the evaluator for the action of one all-zero observation of the env's single
    observation space and checks the action's shape against the single action space.
    """
    obs_space = envs.single_observation_space
    action_space = envs.single_action_space
    probe = create_empty_array(obs_space, 1, fn=np.zeros)  # [1, ...]
    lstm_state, done = _initial_state(evaluator, 1)
    try:
        action, _ = evaluator.get_action(probe, lstm_state, done, deterministic=deterministic)
    except Exception as error:
        raise ValueError(
            f"envs: the env's single_observation_space {obs_space} does not fit "
            f"{type(evaluator).__name__}: a query on one observation of it raised {error!r}"
        ) from error
    action = _to_numpy(action)
    expected = (1, *(action_space.shape or ()))
    if action.shape != expected or (isinstance(action_space, spaces.Discrete)
                                    and not action_space.contains(action[0])):
        raise ValueError(
            f"envs: the env's single_action_space {action_space} does not fit "
            f"{type(evaluator).__name__}: for one observation it gave an action "
            f"{describe(action)} (expected shape {expected})"
        )


def run_episodes(
    evaluator: AgentQueries,
    envs: EnvPool | VectorEnv,
    settings: RolloutSettings,
    *,
    slots: Sequence[int] | None = None,
    num_slots: int | None = None,
    stop: StopFlag | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
) -> list[EpisodeRecord]:
    """Run the counted episodes of ``envs``' slots and return their records.

    Args:
        evaluator: anything with ``get_action(state, lstm_state, done, *, deterministic)``
            returning ``(action, extras)``; recurrent ones
            (:class:`~syllabus_eval.RecurrentAgentQueries` with ``is_lstm``) also
            ``initial_lstm_state(batch_size)`` and ``extras["lstm_state"]``.
        envs: an :class:`EnvPool` or a Gymnasium vector env (``NEXT_STEP`` or ``SAME_STEP``
            autoreset); it is reset here and stays open.
        settings: episodes, step limit, determinism, seed, tasks, success key.
        slots: the global slot index of each env of ``envs`` (default ``0 .. k - 1``).
        num_slots: the evaluation's total number of slots (default: ``len(slots)``).
        stop: anything with ``is_set()`` (a ``threading.Event``), asked before every step;
            once set, the loop raises :class:`~syllabus_eval.EvaluationCancelled`.
        on_episode: called with each record as its episode ends (progress bars).

    Returns:
        The records of every counted episode, ordered by ``(env_index, episode_index)``.
    """
    loop = EpisodeLoop(evaluator, as_slots(envs), settings, slots, num_slots, on_episode)
    try:
        loop.begin()
        while loop.active.size:
            if stop is not None and stop.is_set():
                raise EvaluationCancelled("the evaluation was stopped before its episodes "
                                          "ended")
            step = loop.act()
            ended, cut, fresh = loop.count(step)
            if ended:
                fresh = loop.end_episodes(step, ended, cut, fresh)
            if loop.tracks_starts:
                loop.start_episodes(fresh)
        records = loop.records
        for observer in loop.observers:
            records = observer.finish(records)
        return sort_records(records)
    finally:
        for observer in loop.observers:
            observer.close()


class EpisodeLoop:
    """The state of one :func:`run_episodes` call; arrays marked ``[A]`` have one entry per
    active env, and are sliced like the recurrent state when envs pause. Per-episode
    features (info reductions, previous steps, videos) are its ``observers``
    (:mod:`syllabus_eval.rollout.observers`)."""

    def __init__(self, evaluator: AgentQueries, pool: EnvPool | VectorSlots,
                 settings: RolloutSettings, slots: Sequence[int] | None,
                 num_slots: int | None, on_episode: Callable[[EpisodeRecord], None] | None
                 ) -> None:
        k = pool.num_envs
        global_slots = np.arange(k) if slots is None else np.asarray(slots, dtype=np.int64)
        if global_slots.shape != (k,) or len(set(global_slots.tolist())) != k:
            raise bad_argument("slots", f"{k} distinct global slot indices, one per env", slots)
        num_slots = k if num_slots is None else num_slots
        check_count("num_slots", num_slots)
        if global_slots.min() < 0 or global_slots.max() >= num_slots:
            raise bad_argument("slots", f"indices in [0, {num_slots})", slots)
        if settings.tasks is not None and pool.native:
            raise ValueError(
                f"tasks: expected envs that reset one sub-env at a time with its task (an env "
                f"factory, or a Gymnasium SyncVectorEnv or AsyncVectorEnv), got a "
                f"{type(pool.envs.unwrapped).__name__}, whose sub-envs reset only together or "
                "by themselves; pass a factory of single envs instead")
        if settings.tasks is not None and pool.same_step:
            raise ValueError("tasks: a SAME_STEP vector env resets finished sub-envs before the "
                             "next task is known; use NEXT_STEP autoreset or an env factory")
        self.evaluator, self.pool, self.settings = evaluator, pool, settings
        self.on_episode = on_episode
        self.plan = EpisodePlan(settings, global_slots.tolist(), num_slots)
        # Reset by hand what does not restart by itself (our pool's envs), every episode that
        # needs its task or its own seed passed at reset (where sub-envs reset alone: else the
        # vector env's one generator carries on), and episodes that max_steps cuts.
        self.reset_by_hand = (not pool.autoresets or settings.tasks is not None
                              or (settings.seed is not None and pool.resets_alone))
        self.max_steps = settings.max_steps or np.iinfo(np.int64).max
        # Steps before the longest running episode can reach max_steps: the lengths are
        # compared with it only then (a comparison on every step cost more than the check).
        self.cut_in = self.max_steps
        self.records: list[EpisodeRecord] = []

        firsts = [self.plan.first_job(env) for env in range(k)]
        self.active = np.array([env for env, job in enumerate(firsts) if job is not None],
                               dtype=np.int64)  # [A] envs still running counted episodes
        self.jobs: list[Job] = [job for job in firsts if job is not None]  # [A] their episodes
        # Sub-envs of a vector env are all stepped, so all need a first reset (idle ones as
        # their slot's start); a pool's idle ones are never touched.
        if isinstance(pool, EnvPool):
            self.reset(self.active.tolist(), self.jobs)
        else:
            self.reset(list(range(k)), [(env, 0) if job is None else job
                                        for env, job in enumerate(firsts)])
        size = self.active.size
        self.returns = np.zeros(size)  # [A] float64
        self.lengths = np.zeros(size, dtype=np.int64)  # [A]
        self.lstm_state, self.done = _initial_state(evaluator, size)
        self.actions: np.ndarray | None = None  # [A, ...] of the latest step
        self.observers: list[EpisodeObserver] = []
        if settings.info_keys:
            self.observers.append(InfoObserver(self, settings.info_keys))
        if isinstance(evaluator, PreviousStepQueries):
            self.observers.append(PreviousSteps(self))
        if settings.video is not None:
            self.observers.append(VideoObserver(self, settings.video))
        # Which observations begin an episode matters to recurrent agents and to observers.
        self.tracks_starts = self.done is not None or bool(self.observers)

    def begin(self) -> None:
        """The first episodes begin (observers see their first observations)."""
        for observer in self.observers:
            observer.on_start(np.arange(self.active.size))

    # --- the steps of the loop ---------------------------------------------------------------

    def act(self) -> StepResult:
        """Ask the agent for the active slots' actions and step them."""
        pool, active = self.pool, self.active
        obs = pool.observations if active.size == pool.num_envs else take_rows(
            pool.observations, active)
        for observer in self.observers:
            obs = observer.inputs(obs)
        action, extras = self.evaluator.get_action(obs, self.lstm_state, self.done,
                                                   deterministic=self.settings.deterministic)
        actions = _to_numpy(action)  # [A, ...]
        if len(actions) != active.size:
            raise ValueError(f"evaluator: expected {active.size} actions, one per active env, "
                             f"got {describe(actions)}")
        if self.lstm_state is not None:
            self.lstm_state = extras.get("lstm_state")
        self.actions = actions
        return pool.step_slots(active, actions)

    def count(self, step: StepResult
              ) -> tuple[list[int], np.ndarray | None, np.ndarray | None]:
        """Add the step to the running episodes: the active positions whose episode ended,
        which ``max_steps`` cut (``[A]``; None when none could be), and which observations
        begin an episode (``[A]`` or None)."""
        fresh = step.reset_step  # an autoreset step is no step of any episode
        if fresh is None:
            counted, ended = None, step.ended  # [A]
            self.returns += step.rewards
            self.lengths += 1
        else:
            counted = ~fresh
            np.add(self.returns, step.rewards, out=self.returns, where=counted)
            np.add(self.lengths, counted, out=self.lengths)
            ended = step.ended & counted
        for observer in self.observers:
            observer.on_step(self.actions, step, counted)
        cut = None
        self.cut_in -= 1
        if self.cut_in <= 0:
            cut = (self.lengths >= self.max_steps) & ~ended  # the env's own ending comes first
            ended = ended | cut  # [A]: the done boundary
            running = self.lengths[~ended]  # ended episodes start again from 0
            self.cut_in = self.max_steps - (int(running.max()) if running.size else 0)
        return ended.nonzero()[0].tolist(), cut, fresh

    def end_episodes(self, step: StepResult, ended: list[int], cut: np.ndarray | None,
                     fresh: np.ndarray | None) -> np.ndarray | None:
        """Record the episodes that ended (active positions ``ended``), start their slots'
        next ones, pause the slots that met their quota; the observations that now begin an
        episode (``[A]`` or None)."""
        restarted, by_hand, paused = [], [], []  # active positions
        plan, active = self.plan, self.active.tolist()
        for p in ended:
            was_cut = cut is not None and bool(cut[p])
            self._record(p, step, was_cut)
            job = plan.next_job(active[p])
            if job is None:
                paused.append(p)
                continue
            self.jobs[p] = job
            if self.reset_by_hand or was_cut:
                by_hand.append(p)
            elif step.restarted is not None and step.restarted[p]:
                restarted.append(p)
            # else a NEXT_STEP autoreset comes with the next step, which marks it fresh
        if by_hand:
            self.reset([active[p] for p in by_hand], [self.jobs[p] for p in by_hand])
        if self.tracks_starts and (restarted or by_hand):
            fresh = np.zeros(self.active.size, dtype=bool) if fresh is None else fresh.copy()
            fresh[restarted + by_hand] = True
        if paused:
            fresh = self._pause(paused, fresh)
        return fresh

    def start_episodes(self, fresh: np.ndarray | None) -> None:
        """The next inputs of agents that see episode starts: ``done`` where an episode
        begins and the initial recurrent state in those rows; no previous action or reward."""
        starts = np.flatnonzero(fresh) if fresh is not None else None
        if starts is not None and starts.size:
            for observer in self.observers:
                observer.on_start(starts)
        if self.done is None:
            return
        if fresh is None:
            self.done = np.zeros(self.active.size, dtype=np.float32)
            return
        self.done = fresh.astype(np.float32)
        if starts.size:
            self.lstm_state = _restart_rows(self.evaluator, self.lstm_state, starts)

    def _pause(self, paused: list[int], fresh: np.ndarray | None) -> np.ndarray | None:
        """Slice the active positions ``paused`` out of everything kept per active slot."""
        keep = np.ones(self.active.size, dtype=bool)  # [A]
        keep[paused] = False
        rows = np.flatnonzero(keep)
        self.active, self.returns, self.lengths = (
            self.active[keep], self.returns[keep], self.lengths[keep])
        self.jobs = [self.jobs[row] for row in rows.tolist()]
        for observer in self.observers:
            observer.on_pause(rows)
        if self.done is not None:
            self.lstm_state = _keep_rows(self.evaluator, self.lstm_state, rows)
        return None if fresh is None else fresh[keep]

    # --- helpers -----------------------------------------------------------------------------

    def _record(self, position: int, step: StepResult, cut: bool) -> None:
        slot, episode = job = self.jobs[position]
        task_id = self.plan.task(job)
        info = step.final_info(position)
        success = info.get(self.settings.success_key) if info else None
        summed = float(self.returns[position])
        recorded = _recorded_return(info) if info else None
        record = EpisodeRecord(
            env_index=self.plan.slot_ids[slot], episode_index=episode,
            reward=summed if recorded is None else recorded,
            length=int(self.lengths[position]),
            terminated=bool(step.terminated[position]),
            truncated=bool(step.truncated[position] or cut),
            task=None if task_id is None else self.settings.tasks[task_id],
            success=None if success is None else bool(success),
            wrapped_reward=None if recorded is None or math.isclose(
                recorded, summed, rel_tol=1e-6, abs_tol=1e-9) else summed,
            suite=self.settings.suite, cut=cut)
        for observer in self.observers:
            record = observer.on_end(position, record)
        self.records.append(record)
        if self.on_episode is not None:
            self.on_episode(record)
        self.returns[position], self.lengths[position] = 0.0, 0

    def reset(self, envs: list[int], jobs: list[Job]) -> None:
        """Reset ``envs`` for the episodes ``jobs`` they start, with the plan's seeds: one
        reset call per task, since a vector env passes one options dict to all it resets."""
        plan, tasks = self.plan, self.settings.tasks
        task_ids = [None] * len(jobs) if tasks is None else [plan.task(job) for job in jobs]
        for task_id in dict.fromkeys(task_ids):
            group = [i for i, t in enumerate(task_ids) if t == task_id]
            self.pool.reset_slots(np.array([envs[i] for i in group], dtype=np.int64),
                                  [plan.seed(jobs[i]) for i in group],
                                  None if task_id is None else {"task": tasks[task_id]})


def _initial_state(evaluator: AgentQueries, batch_size: int
                   ) -> tuple[Any, np.ndarray | None]:
    """The recurrent state and done flags ([B] float32, all 1: episodes start) of B envs."""
    if not is_recurrent(evaluator):
        return None, None
    return evaluator.initial_lstm_state(batch_size), np.ones(batch_size, dtype=np.float32)


def _recorded_return(info: dict) -> float | None:
    """The raw return ``RecordEpisodeStatistics`` put in an episode's last info, if any."""
    episode = info.get("episode")
    if isinstance(episode, dict) and "r" in episode:
        return float(np.asarray(episode["r"]).reshape(-1)[0])
    return None


def _to_numpy(action: Any) -> np.ndarray:
    if isinstance(action, torch.Tensor):
        if action.device.type == "cpu" and not action.requires_grad:
            return action.numpy()  # the hot path: no copy
        return action.detach().cpu().numpy()
    return np.asarray(action)


def _restart_rows(evaluator: RecurrentAgentQueries, lstm_state: tuple, rows: np.ndarray
                  ) -> tuple:
    """``lstm_state`` with rows ``rows`` (active positions) back at the initial state."""
    dim = evaluator.lstm_batch_dim
    fresh = evaluator.initial_lstm_state(len(rows))
    restarted = []
    for tensor, initial in zip(lstm_state, fresh):
        index = torch.as_tensor(rows, device=tensor.device)
        restarted.append(tensor.index_copy(dim, index, initial.to(tensor)))
    return tuple(restarted)


def _keep_rows(evaluator: RecurrentAgentQueries, lstm_state: tuple, rows: np.ndarray
               ) -> tuple:
    """``lstm_state`` of the active positions ``rows`` only: paused envs are sliced out."""
    dim = evaluator.lstm_batch_dim
    return tuple(t.index_select(dim, torch.as_tensor(rows, device=t.device))
                 for t in lstm_state)
