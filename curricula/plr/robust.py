"""Robust PLR (PLR⊥; Jiang, Dennis, Parker-Holder, Foerster, Grefenstette, Rocktäschel,
NeurIPS 2021, "Replay-Guided Adversarial Environment Design"): new tasks are scored by
evaluation rollouts of the current policy, and the agent trains only on replays of scored tasks.

Usage (what ``PrioritizedLevelReplay(..., robust=True, env_fn=make_env)`` builds)::

    from syllabus_eval.curricula import CurriculumWrapper, PrioritizedLevelReplay

    with PrioritizedLevelReplay(tasks, evaluator, robust=True, env_fn=make_env,
                                num_eval_envs=4, seed=0) as plr:
        envs = gym.vector.SyncVectorEnv(
            [lambda: CurriculumWrapper(make_env(), plr) for _ in range(8)])
        ...                     # train as usual: every reset replays a task scored already
        plr.flush()             # every evaluation queued so far has been scored
        plr.task_scores()       # tasks scored by evaluation rollouts and by training

How it works. :class:`RobustReplay` keeps an evaluation queue and a thread that runs it: it
takes up to ``num_eval_envs`` queued tasks at a time and plays one episode of each on its own
envs (``env_fn()``, each wrapped in a :class:`~syllabus_eval.curricula.CurriculumWrapper`)
with the episode engine (:func:`~syllabus_eval.run_episodes`, sampled actions, no gradient: the
evaluator's queries run under ``torch.no_grad``, recurrent agents from their initial state at
every episode start). The wrappers send those episodes' records to PLR's scoring worker, the
same path as the training envs' records, so a task is scored from an evaluation exactly as
it would be from training (strategy, GAE, segments of ``num_steps``): only the source of the
episode differs.

Draws follow the replay decision of the reference code (``level_sampler.py``, whose
``sample_replay_decision`` PLR⊥ runs with ``no_exploratory_grad_updates``): a draw is a
replay with PLR's replay probability (the ``replay_schedule`` over the fraction of tasks
scored), else a new task. In robust mode a "new task" decision sends one unscored task, drawn
uniformly from those not queued yet, to the evaluation queue instead of to training, and the
decision is drawn again, until it says "replay" (or no task is left to queue); training gets
that replay, drawn from PLR's replay distribution (PLR Eq. 3). So evaluations and replays come
in the reference's ratio, and training never plays a task that nobody has scored. Both kinds
of draw count for staleness, as in the reference.

Before any task is scored there is nothing to replay: the thread starts at construction on
``num_eval_envs`` tasks drawn uniformly, and :meth:`RobustReplay.sample` waits for the first
score, up to ``first_score_timeout`` seconds (then ``TimeoutError``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import VectorEnv

from syllabus_eval.errors import EvaluationCancelled, bad_argument, check_count, check_number
from syllabus_eval.rollout import EnvPool, RolloutSettings, check_fit, run_episodes

from ..background import POLL_S, BackgroundThread
from ..curriculum import Experience
from ..wrappers import CurriculumWrapper
from .worker import ScoringWorker

if TYPE_CHECKING:
    from .curriculum import PrioritizedLevelReplay

THREAD_NAME = "PrioritizedLevelReplay evaluation"


def check_robust_settings(robust: object, env_fn: object, set_task: object,
                          num_eval_envs: object, first_score_timeout: object) -> None:
    """Refuse bad robust-mode arguments before PLR starts any thread."""
    if not isinstance(robust, (bool, np.bool_)):
        raise bad_argument("robust", "True or False", robust)
    if not robust:
        if env_fn is not None:
            raise bad_argument("env_fn", "None unless robust=True (only Robust PLR runs "
                               "evaluation episodes)", env_fn)
        if set_task is not None:
            raise bad_argument("set_task", "None unless robust=True", set_task)
        return
    if env_fn is None or not callable(env_fn):
        raise bad_argument("env_fn", "a callable returning one gymnasium Env, which robust=True "
                           "plays unscored tasks on", env_fn)
    if set_task is not None and not callable(set_task):
        raise bad_argument("set_task", "a callable set_task(env, task) or None", set_task)
    check_count("num_eval_envs", num_eval_envs)
    check_number("first_score_timeout", first_score_timeout, 0.0, low_open=True)


class _ToWorker:
    """What the evaluation envs' wrappers report to: PLR's scoring worker, directly."""

    wants_experience = True

    def __init__(self, worker: ScoringWorker) -> None:
        self.worker = worker

    def sample(self, k: int = 1) -> list:
        raise RuntimeError("Robust PLR's evaluation envs play the tasks their evaluation "
                           "gives them at reset; they never draw one")

    def observe(self, experience: Experience) -> None:
        self.worker.put(experience)


class RobustReplay:
    """The evaluation queue of a Robust PLR curriculum and the thread that scores it.

    Args:
        plr: the curriculum (its task space, score table, lock, generator, evaluator,
            scoring worker, replay schedule and replay distribution).
        env_fn: returns one new gymnasium Env; ``num_eval_envs`` are made at construction.
        set_task: optional ``set_task(env, task)`` for envs that do not read
            ``options["task"]`` at reset (as :class:`~syllabus_eval.curricula.CurriculumWrapper`).
        num_eval_envs: envs that evaluate queued tasks side by side (one episode each).
        first_score_timeout: seconds :meth:`sample` waits for the first scored task.
        seed: seeds the evaluation episodes' resets (``None``: unseeded).

    A failure in the thread is raised by :meth:`check` (and so by PLR's ``sample``,
    ``observe`` and ``flush``) as :class:`~syllabus_eval.CurriculumError`, or by
    :meth:`close` if nothing reported it.
    """

    def __init__(self, plr: PrioritizedLevelReplay, env_fn: Callable[[], gym.Env], *,
                 set_task: Callable[[gym.Env, Any], None] | None, num_eval_envs: int,
                 first_score_timeout: float, seed: int | None) -> None:
        self.plr = plr
        self.num_eval_envs = num_eval_envs
        self.first_score_timeout = float(first_score_timeout)
        self._table, self._worker = plr._table, plr._worker
        self._pool = _build_envs(env_fn, set_task, num_eval_envs, _ToWorker(plr._worker))
        try:
            # The spaces must fit the agent: say so here, not from the thread later.
            check_fit(plr.evaluator, self._pool, deterministic=False)
        except BaseException:
            self._pool.close()
            raise
        # Its own generator, so the tasks PLR draws do not depend on the thread's timing.
        self._episode_seeds = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
        self._seeded = seed is not None

        self._cond = threading.Condition()  # guards the queue and the counters below
        self._queue: deque[int] = deque()  # task indices waiting, oldest first
        self._waiting: set[int] = set()  # queued or being evaluated
        self._queued = 0  # tasks ever queued
        self._evaluated = 0  # of those, evaluated (or found scored already) and scored
        self._stop = threading.Event()
        with plr._lock:
            self._queue_new(self.num_eval_envs)  # the first evaluations: nothing is scored
        self._thread = BackgroundThread(self._run, THREAD_NAME)

    # --- the callers' side -----------------------------------------------------------------------

    def sample(self, k: int) -> list:
        """``k`` replays of scored tasks, queueing new tasks for evaluation on the way."""
        check_count("k", k)
        self.check()
        self._wait_for_a_score()
        plr, table = self.plr, self._table
        tasks = plr.task_space.tasks
        with plr._lock:
            drawn = []
            for _ in range(k):
                # PLR's draw puts 1 - P(replay) on the unscored tasks: the "new task" decision.
                explore = float(plr._plr_distribution()[~table.seen].sum())
                if explore >= 1.0:  # replay_prob=0: every decision says "new"
                    self._queue_new(len(tasks))
                elif explore > 0.0:
                    # The decisions until the first "replay", in one geometric draw.
                    self._queue_new(int(plr._rng.geometric(1.0 - explore)) - 1)
                index = int(plr._rng.choice(len(tasks), p=plr.replay_distribution()))
                table.drawn(index)
                drawn.append(tasks[index])
            return drawn

    def distribution(self) -> np.ndarray:
        """P of each task for the next training draw: PLR's replay distribution, ``[N]``."""
        return self.plr.replay_distribution()

    def pending(self) -> int:
        """Tasks queued for evaluation and not scored yet."""
        with self._cond:
            return self._queued - self._evaluated

    def flush(self, timeout: float | None = None) -> float | None:
        """Wait until every task queued before this call is evaluated and scored; the seconds
        of ``timeout`` left (``None``: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._queued
            done = self._cond.wait_for(
                lambda: self._evaluated >= target or not self._thread.alive, timeout)
            left = self._queued - self._evaluated
        self.check()
        if not done:
            raise TimeoutError(f"flush: {left} queued tasks still unevaluated after {timeout} s")
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def check(self) -> None:
        """Raise the scoring worker's failure, then the evaluation thread's."""
        self._worker.check()  # first: an evaluation that fed a failed worker fails with it
        self._thread.check()

    def close(self) -> None:
        """Stop the thread (an episode under way is cut short) and close its envs
        (idempotent); raise its failure if nobody was told of it."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
        self._thread.join()

    # --- the queue -------------------------------------------------------------------------------

    def _queue_new(self, count: int) -> None:
        """Queue up to ``count`` unscored tasks not queued yet, uniformly (under PLR's lock)."""
        if count <= 0:
            return
        table = self._table
        with self._cond:
            free = ~table.seen
            free[list(self._waiting)] = False
            candidates = np.flatnonzero(free)
            if candidates.size == 0:
                return
            chosen = self.plr._rng.choice(candidates, size=min(count, candidates.size),
                                          replace=False)
            for index in chosen.tolist():
                table.drawn(index)  # the reference counts a new level's draw for staleness
                self._queue.append(index)
                self._waiting.add(index)
            self._queued += len(chosen)
            self._cond.notify_all()

    def _wait_for_a_score(self) -> None:
        seen = self._table.seen
        if seen.any():
            return
        deadline = time.monotonic() + self.first_score_timeout
        with self._cond:
            while not seen.any():
                self.check()
                if self._stop.is_set() or not self._thread.alive:
                    raise RuntimeError("PrioritizedLevelReplay is closed: nothing was scored "
                                       "to replay")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"sample: no task was scored within first_score_timeout="
                        f"{self.first_score_timeout} s; Robust PLR replays only scored tasks "
                        f"and its evaluation of the first {self.num_eval_envs} has not ended "
                        "(episodes that never end? raise first_score_timeout, or give env_fn "
                        "a time limit)")
                # The worker records scores without telling us: look again every POLL_S.
                self._cond.wait(min(left, POLL_S))

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._take()
                if batch is None:
                    return
                self._evaluate(batch)
        except EvaluationCancelled:
            pass  # close() cut the evaluation short
        finally:
            try:
                # The wrappers' close records go to the worker, which scores any open episode
                # as truncated there, as it does for training envs closed mid-episode.
                self._pool.close()
            finally:
                with self._cond:
                    self._cond.notify_all()  # wake flush() and sample() callers

    def _take(self) -> list[int] | None:
        """Up to ``num_eval_envs`` queued tasks still unscored (None: stop)."""
        with self._cond:
            while True:
                if self._stop.is_set():
                    return None
                batch = []
                while self._queue and len(batch) < self.num_eval_envs:
                    index = self._queue.popleft()
                    if self._table.seen[index]:  # scored meanwhile (training, update_score)
                        self._waiting.discard(index)
                        self._evaluated += 1
                    else:
                        batch.append(index)
                self._cond.notify_all()  # skipped tasks may complete a flush
                if batch:
                    return batch
                self._cond.wait()

    def _evaluate(self, batch: list[int]) -> None:
        """One episode of each task, by the current policy; scored before they count as done."""
        tasks = self.plr.task_space.tasks
        seed = int(self._episode_seeds.integers(2**31)) if self._seeded else None
        settings = RolloutSettings(num_episodes=len(batch), deterministic=False, seed=seed,
                                   tasks=[tasks[index] for index in batch])
        # One episode per task: slot quotas (N + i) // k over k >= N envs give each task one.
        run_episodes(self.plr.evaluator, self._pool, settings, stop=self._stop)
        self._worker.flush()  # their last records are scored: the tasks are replayable now
        with self._cond:
            self._waiting.difference_update(batch)
            self._evaluated += len(batch)
            self._cond.notify_all()


def _build_envs(env_fn: Callable[[], gym.Env], set_task: Callable[[gym.Env, Any], None] | None,
                num_envs: int, sink: _ToWorker) -> EnvPool:
    """``num_envs`` envs from ``env_fn``, each reporting its episodes to PLR's worker."""
    envs: list[gym.Env] = []
    try:
        for i in range(num_envs):
            env = env_fn()
            if isinstance(env, VectorEnv) or not isinstance(env, gym.Env):
                if isinstance(env, (gym.Env, VectorEnv)):
                    env.close()
                raise bad_argument("env_fn", "a callable returning one gymnasium Env (not a "
                                   "VectorEnv)", env)
            if any(env.unwrapped is other.unwrapped for other in envs):
                raise bad_argument("env_fn", "a factory that builds a new env on each call "
                                   "(a lambda returning a captured env?)", env)
            envs.append(CurriculumWrapper(env, sink, set_task=set_task,
                                          env_id=(THREAD_NAME, i)))  # unlike uuid ids
        return EnvPool(envs)
    except BaseException:
        for env in envs:
            env.close()
        raise

