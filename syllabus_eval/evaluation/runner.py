"""Periodic evaluation of a training agent, blocking or in the background.

Usage::

    from syllabus_eval import EvalRunner
    from syllabus_eval.adapters import CleanRLEvaluator
    from syllabus_eval.results.loggers import JSONLinesLogger

    with EvalRunner(lambda: gym.make("CartPole-v1"), CleanRLEvaluator(agent), num_envs=8,
                    num_episodes=20, eval_every=10_000, save_best="runs/best.pt",
                    on_result=[print, JSONLinesLogger("runs/eval.jsonl")]) as runner:
        for step in range(0, total_steps, num_envs):
            ...                                        # train
            runner.maybe_trigger(agent, step=step)     # every 10,000 env steps, meanwhile
            if runner.should_stop:
                break
        runner.final_eval(agent, step=step)            # the last policy, blocking

The runner is the facade of evaluation; it composes a backend (where episodes run,
:mod:`.backends`), a job queue (the runner's thread: evaluations one at a time, in
trigger order, :mod:`.jobs`), a schedule in env steps (:mod:`.schedule`)
and what happens to each result (the best model, early stopping and the callbacks,
:mod:`syllabus_eval.evaluation.tracking`). The weights, and the observation statistics given as
``obs_norm``, are snapshotted when the evaluation is triggered (never later) and put on the
evaluation device; training goes on meanwhile. Results are :class:`EvalResult`: the flat
metrics dict, with the per-episode records on ``.episodes`` and the trigger step on ``.step``.

By default (``backend="auto"``, :mod:`.backends.auto`) blocking evaluations run in
the runner's thread and background ones in a worker process launched at the first (those due
while it starts, seconds, run in the thread), which training barely feels; where a worker
cannot run them (a script without the ``if __name__ == "__main__":`` guard, an env instance,
something that does not pickle) they stay in the runner's thread, with one warning that says
why. There (``backend="thread"``) an
evaluation shares the GIL with training: a background one pauses a moment each env step so that
the training thread gets the GIL back at once (:mod:`.backends.thread`), and runs
slower for it. The ``"process"`` and ``"ray"`` backends run every evaluation in worker
processes or Ray actors (:mod:`.backends.pool`), which get the evaluator itself
(its private copy, pickled once) or build theirs with ``evaluator_fn``::

    runner = EvalRunner(make_env, evaluator, num_envs=8, backend="process", num_workers=2,
                        timeout=600)
"""

from __future__ import annotations

import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from typing import Any

import gymnasium as gym
import torch
from torch import nn
from tqdm.auto import tqdm

from syllabus_eval.errors import ArgumentError, bad_argument, check_count, check_number, describe
from syllabus_eval.evaluation.backends import create_backend
from syllabus_eval.evaluation.jobs import BUSY_POLICIES, Job, JobQueue
from syllabus_eval.evaluation.normalization import read_obs_norm
from syllabus_eval.evaluation.schedule import EvalSchedule
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.evaluation.tracking import Callback, ResultTracker
from syllabus_eval.query.compiled import unwrap_compiled
from syllabus_eval.query.protocols import AgentQueries, WeightedAgentQueries
from syllabus_eval.query.weights import weight_source
from syllabus_eval.results.metrics import EvalResult, MetricsFn, summarize
from syllabus_eval.rollout import GivenEnvs, RolloutSettings
from syllabus_eval.rollout.video import VideoSettings, video_support, without_clips, write_videos

Weights = nn.Module | Mapping[str, torch.Tensor] | None


class EvalRunner:
    """Evaluates an agent periodically over vectorized envs, with exact episode counts.

    Args:
        make_env: returns one ``gymnasium.Env`` (``num_envs`` copies are made) or a whole
            ``VectorEnv`` of ``num_envs`` sub-envs. Wrappers inside it are part of the env:
            the training script's own factory is right (reward wrappers: see
            :class:`~syllabus_eval.EpisodeRecord` for which return is reported). The
            ``"thread"`` and ``"auto"`` backends also take an env instance, as TorchRL's
            ``Evaluator(eval_env, policy)`` does: a ``VectorEnv`` (its sub-envs are the slots)
            or one ``Env`` (one slot); the runner does not close it.
        evaluator: the agent's :class:`~syllabus_eval.Evaluator` (any object with its
            query methods). Evaluations run on ``evaluator.detached(device)``, a private copy;
            in process and Ray workers, on that copy sent to them once (with cloudpickle), or
            on the evaluators ``evaluator_fn`` builds there. With ``evaluator_fn`` these
            backends need none (``None``, TorchRL's ``policy_factory``): weights then come
            from :meth:`evaluate` / :meth:`trigger_eval`, or are the factory's own.
        num_envs: env slots (default 8, or the size of a vector env instance); slot ``i``
            runs ``(num_episodes + i) // num_envs`` episodes, each on its own env (the slots
            may differ).
        num_episodes: episodes per evaluation.
        max_steps: steps after which an episode is truncated; ``None`` (the default): the
            env's own limit. Episodes it cuts are counted as ``eval/max_steps_cut`` (a warning
            says so, once per runner).
        backend: where episodes run: ``"auto"`` (the default: blocking evaluations in the
            runner's daemon thread, background ones in one worker process launched at the
            first; see :mod:`.backends.auto`), ``"thread"`` (every evaluation in
            the runner's thread), ``"process"`` (spawned worker processes) or ``"ray"`` (Ray
            actors; needs ``pip install 'syllabus-eval[ray]'``). The options below marked
            *process, ray* are refused by backends that do not take them.
        busy_policy: what a trigger does while an evaluation is pending: ``"error"`` raises
            ``RuntimeError``, ``"queue"`` runs it afterwards, ``"skip"`` drops it (counted in
            :attr:`skipped`). Default: ``"skip"`` with ``eval_every``, else ``"error"``.
        on_result: a callable or a list of them, each called with every
            :class:`EvalResult`, on the runner's thread, before :meth:`wait` returns it (the
            loggers of :mod:`syllabus_eval.results.loggers`, ``wandb.log``, ...). An exception one
            raises is logged, kept on ``result.on_result_error`` and stops neither the others
            nor the runner. The evaluation counts as pending until they return.
        metrics_fn: ``metrics_fn(episodes) -> {name: number}``, extra metrics under ``eval/``.
        eval_every: env steps between the evaluations :meth:`maybe_trigger` starts (see
            :mod:`syllabus_eval.evaluation.schedule`); ``None``: no schedule.
        save_best: a path: each new best result's snapshot is written there (weights,
            observation statistics, step and metrics, :mod:`syllabus_eval.evaluation.checkpoints`).
        best_metric: the metric that ranks results (default ``"eval/reward"``).
        best_mode: ``"max"`` (higher is better, the default) or ``"min"``.
        on_new_best: called with each new best result (before ``on_result``).
        stop_reward: ``(threshold, k)``: :attr:`should_stop` after ``k`` consecutive results
            whose ``best_metric`` is at or beyond ``threshold``.
        stop_patience: :attr:`should_stop` after this many results without a new best.
        deterministic: greedy actions (default), sampled (``False``) or the evaluator's default
            (``None``); see :class:`RolloutSettings`.
        seed: a non-negative int from which each episode's reset seed is derived by its slot
            and index (default 0: every evaluation sees the same episodes; different seeds
            share none, :mod:`syllabus_eval.rollout`); ``None``: unseeded.
        tasks: tasks assigned to episodes round robin, passed as the reset option ``"task"``.
        suites: ``{name: [tasks]}``: each evaluation runs every suite on the same snapshot,
            each with its own ``num_episodes``, reported under ``eval/<name>/...`` (per task
            inside each), with ``eval/generalization_gap`` (``train`` minus ``test`` mean
            return) when both are given. Instead of ``tasks``. Rank results by a suite's
            metric then, e.g. ``best_metric="eval/test/reward"``.
        set_task: ``set_task(env, task)``, called before each reset instead of the option.
        success_key: the info key giving an episode's success at its last step.
        info_keys: ``{key: "last" | "sum" | "mean" | "max" | "min"}``: info entries reduced
            over each episode, reported as ``eval/info/<key>`` (and per task and suite; how
            many episodes lacked one as ``.../missing``) and on each record's ``info``.
        ci: the confidence level of the intervals every mean gets (bootstrap for returns,
            Wilson for success rates; seeded by ``seed``); ``None``: none.
        video_dir: a folder: each evaluation records ``video_episodes`` episodes per task (or
            per evaluation without tasks; per suite) from ``env.render()`` (make the envs with
            ``render_mode="rgb_array"``) and writes them there as MP4 (GIF without ffmpeg),
            named by suite, task, step and return; they are listed on ``result.videos``. Needs
            ``pip install 'syllabus-eval[video]'``.
        video_episodes: episodes recorded per task (default 1).
        video_select: which: ``"first"`` (in slot order), ``"best"`` or ``"worst"`` return.
        video_max_frames: the most frames of one video (default 500); a longer episode's
            video stops there, with a warning.
        interchangeable_slots: declare the env slots alike, so that each slot's last quarter
            of episodes may run on whichever env is free (the floating tail: evaluations end
            sooner). Default ``False``: every episode runs on its own slot's env, which is
            exact whatever the envs are (see :class:`RolloutSettings`).
        vectorization_mode: ``"sync"`` (our env pool, in the runner's thread) or ``"async"``
            (a Gymnasium ``AsyncVectorEnv``).
        device: the evaluation device (default: the evaluator's; in workers: that of the
            evaluator ``evaluator_fn`` builds).
        progress: show a tqdm progress bar during blocking :meth:`evaluate` calls.
        env_fn: *process, ray.* The env factory the workers call (default: ``make_env``); it
            is sent with cloudpickle, as Gymnasium's ``AsyncVectorEnv`` sends env factories:
            a function, class, ``functools.partial``, lambda or closure, with what it captures.
            A ``VectorEnv`` factory fits ``num_workers=1`` only.
        evaluator_fn: *process, ray.* Builds the evaluator in each worker, on an agent of the
            training agent's architecture; each evaluation loads the snapshot of the weights
            into it. Sent like ``env_fn`` (so are ``init_fn`` and ``set_task``). Default: the
            workers get ``evaluator`` itself; give one for agents whose copy does not pickle.
        init_fn: *process, ray.* Called first in each worker, before the env and evaluator are
            built (simulators that must start first, env variables, devices).
        num_workers: *process, ray.* Workers that split the env slots of each evaluation
            (contiguous blocks, at most ``num_envs``); the merged records equal those of one
            worker, and with greedy actions the metrics equal the thread backend's. Default 1.
        max_restarts: *process, ray.* Workers that die during an evaluation are restarted
            and their share run again, at most this many times per evaluation (default 2);
            then the evaluation fails with :class:`EvaluationError`.
        timeout: *process, ray.* Seconds an evaluation's episodes may take (re-runs after
            restarts included; workers that start before it are not counted); a slower one
            fails with ``TimeoutError`` as its cause, and its workers are killed and restarted
            for the next one. Default ``None``: no limit.
        address: *ray.* The Ray cluster to connect to when Ray is not initialized yet
            (default: start Ray locally). A runner shuts down only the Ray it started.
        num_cpus: *ray.* CPUs each actor reserves (default 1).
        num_gpus: *ray.* GPUs each actor reserves (default 0).
        ray_kwargs: *ray.* Further ``ray.init`` arguments, when the runner starts Ray.

    Raises:
        ValueError: for bad arguments, and envs whose spaces do not fit the agent (for
            process and Ray workers: exceptions raised while they start, with the worker's
            traceback as their cause).
        ImportError: ``backend="ray"`` without Ray installed.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env | gym.vector.VectorEnv] | gym.Env | gym.vector.VectorEnv,
        evaluator: AgentQueries | None = None,
        num_envs: int | None = None,
        num_episodes: int = 20,
        max_steps: int | None = None,
        backend: str = "auto",
        busy_policy: str | None = None,
        on_result: Callback | Sequence[Callback] | None = None,
        metrics_fn: MetricsFn | None = None,
        *,
        eval_every: int | None = None,
        save_best: str | os.PathLike | None = None,
        best_metric: str = "eval/reward",
        best_mode: str = "max",
        on_new_best: Callback | None = None,
        stop_reward: tuple[float, int] | None = None,
        stop_patience: int | None = None,
        deterministic: bool | None = True,
        seed: int | None = 0,
        tasks: list[Any] | None = None,
        suites: Mapping[str, Sequence[Any]] | None = None,
        set_task: Callable[[gym.Env, Any], None] | None = None,
        success_key: str = "success",
        info_keys: Mapping[str, str] | None = None,
        ci: float | None = 0.95,
        video_dir: str | os.PathLike | None = None,
        video_episodes: int = 1,
        video_select: str = "first",
        video_max_frames: int = 500,
        interchangeable_slots: bool = False,
        vectorization_mode: str = "sync",
        device: str | torch.device | None = None,
        progress: bool = False,
        env_fn: Callable[[], gym.Env | gym.vector.VectorEnv] | None = None,
        evaluator_fn: Callable[[], Any] | None = None,
        init_fn: Callable[[], Any] | None = None,
        num_workers: int | None = None,
        max_restarts: int | None = None,
        timeout: float | None = None,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        ray_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        make_env, num_envs = _env_source(make_env, num_envs, backend)
        if evaluator is None:
            if evaluator_fn is None or backend in ("thread", "auto"):
                raise ValueError("evaluator: expected an Evaluator; only backend='process' or "
                                 "'ray' goes without one, building it in each worker from "
                                 "evaluator_fn, got None")
        elif not isinstance(evaluator, AgentQueries):
            raise bad_argument("evaluator", "an Evaluator (an object with get_action, "
                               "get_value and get_action_and_value)", evaluator)
        self.schedule = None if eval_every is None else EvalSchedule(eval_every)
        if busy_policy is None:
            busy_policy = "error" if self.schedule is None else "skip"
        if busy_policy not in BUSY_POLICIES:
            raise ValueError(f"busy_policy: expected one of {', '.join(map(repr, BUSY_POLICIES))}"
                             f", got {busy_policy!r}")
        if metrics_fn is not None and not callable(metrics_fn):
            raise bad_argument("metrics_fn", "a callable or None", metrics_fn)
        self.tracker = ResultTracker(on_result, save_best=save_best, best_metric=best_metric,
                                     best_mode=best_mode, on_new_best=on_new_best,
                                     stop_reward=stop_reward, stop_patience=stop_patience)
        if ci is not None:
            check_number("ci", ci, 0.0, 1.0, low_open=True, high_open=True)
        self.video_dir = video_dir
        video = VideoSettings(video_episodes, video_select, video_max_frames)  # checked
        if video_dir is None:
            if video != VideoSettings():
                raise ValueError("video_dir: expected a folder for the videos that "
                                 "video_episodes, video_select or video_max_frames describe, "
                                 "got None")
            video = None
        else:
            if not isinstance(video_dir, (str, os.PathLike)):
                raise bad_argument("video_dir", "a folder path or None", video_dir)
            video_support()  # a clear error now, without the video extra
        self.plan = _plan(suites, tasks, num_episodes=num_episodes, max_steps=max_steps,
                          deterministic=deterministic, seed=seed, success_key=success_key,
                          info_keys=info_keys, video=video,
                          interchangeable_slots=interchangeable_slots)
        _check_ranking(self.tracker, suites, evaluator)
        self.busy_policy = busy_policy
        self.metrics_fn = metrics_fn
        self.progress = progress
        self.ci = ci
        self._skipped = 0  # triggers dropped by busy_policy="skip"
        self._warned_cut = False  # whether max_steps cutting episodes was reported
        self._last_job: Job | None = None  # the latest evaluation triggered
        # Only the worker options that were given: each backend refuses those it does not take.
        options = {name: value for name, value in (
            ("env_fn", env_fn), ("evaluator_fn", evaluator_fn), ("init_fn", init_fn),
            ("num_workers", num_workers), ("max_restarts", max_restarts), ("timeout", timeout),
            ("address", address), ("num_cpus", num_cpus), ("num_gpus", num_gpus),
            ("ray_kwargs", ray_kwargs)) if value is not None}
        self._backend = create_backend(
            backend, make_env, evaluator, num_envs, self.plan,
            vectorization_mode=vectorization_mode, set_task=set_task, device=device, **options)
        self._evaluator = evaluator
        self._jobs = JobQueue(self._run, self._backend.close)

    @property
    def on_result(self) -> list[Callback]:
        """The callbacks each result is given (a list; append to it to add one)."""
        return self.tracker.callbacks

    # --- triggering --------------------------------------------------------------------------

    def evaluate(self, weights: Weights = None, step: int | None = None, *,
                 obs_norm: Any = None) -> EvalResult:
        """Evaluate now and return the result (blocking).

        Runs on the runner's thread like every evaluation. While a background evaluation is
        pending it raises ``RuntimeError``, unless ``busy_policy="queue"``: then it runs
        after the pending ones. A failed evaluation raises :class:`EvaluationError`.

        Args:
            weights: the agent's weights (a module or a state dict); ``None``: the training
                agent the evaluator was built on, as it is now.
            step: the training step, carried by the result (``eval/step``).
            obs_norm: the training envs (or their statistics) whose observation normalisation
                the agent was trained behind: read now, applied frozen to the evaluation
                envs' own ``NormalizeObservation`` (:mod:`syllabus_eval.evaluation.normalization`).
        """
        job = self._submit(weights, step, obs_norm, blocking=True, busy_policy=self.busy_policy)
        return self._jobs.outcome(job)

    def trigger_eval(self, weights: Weights = None, step: int | None = None, *,
                     obs_norm: Any = None) -> bool:
        """Start an evaluation in the background; the weights (and ``obs_norm``, as in
        :meth:`evaluate`) are snapshotted now.

        Returns:
            ``True`` if it was started or queued, ``False`` if skipped (``busy_policy="skip"``).

        Raises:
            RuntimeError: an evaluation is pending and ``busy_policy="error"``.
        """
        return self._submit(weights, step, obs_norm, blocking=False,
                            busy_policy=self.busy_policy) is not None

    def maybe_trigger(self, weights: Weights = None, step: int | None = None, *,
                      obs_norm: Any = None) -> bool:
        """:meth:`trigger_eval` when an evaluation is due at ``step`` (``eval_every``).

        Due when ``step`` has crossed a multiple of ``eval_every`` since the last due step
        (never ``step % eval_every == 0``); several multiples crossed at once give one
        evaluation, at ``step``. A due evaluation that finds the runner busy follows
        ``busy_policy`` (by default, with a schedule, it is skipped and counted in
        :attr:`skipped`). Costs one comparison when nothing is due: call it every step.

        Returns:
            Whether an evaluation was started or queued.
        """
        schedule = self.schedule
        if type(step) is int and schedule is not None and step < schedule.next_due:
            return False  # the common case, first: a training loop asks every step
        if schedule is None:
            raise ValueError("eval_every: maybe_trigger needs a schedule, "
                             "EvalRunner(..., eval_every=N); got None")
        step = _checked_step(step, "an int: the training step (env steps so far)")
        if not schedule.due(step):
            return False
        return self.trigger_eval(weights, step, obs_norm=obs_norm)

    def final_eval(self, weights: Weights = None, step: int | None = None, *,
                   obs_norm: Any = None) -> EvalResult:
        """One blocking evaluation of the last policy, at the end of training (TorchRL #4415).

        It runs after the evaluations still pending, whatever ``busy_policy`` says. When the
        latest evaluation was triggered at this very ``step`` on the same module, with no
        optimizer step since (SB3, for one, updates after the rollout whose last step
        triggered), and on the same observation statistics, that one is the final
        evaluation: it is waited for and returned (and no longer returned by :meth:`poll`).
        A state dict cannot be told apart from others, so it is always evaluated.
        """
        last = self._last_job
        if last is not None and self._evaluated_already(last, weights, step, obs_norm):
            self._jobs.claim(last)
            return self._jobs.outcome(last)
        job = self._submit(weights, step, obs_norm, blocking=True, busy_policy="queue")
        return self._jobs.outcome(job)

    # --- results -----------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Whether an evaluation is queued or running."""
        return self._jobs.pending

    def poll(self) -> EvalResult | None:
        """The oldest background result not yet returned; ``None`` while it runs (or if none).

        Raises:
            EvaluationError: that evaluation failed; the original exception is its cause.
        """
        return self._jobs.poll()

    def wait(self, timeout: float | None = None) -> EvalResult | None:
        """Block until the oldest background evaluation not yet returned is done; return it.

        Args:
            timeout: seconds to wait at most; ``None``: no limit.

        Returns:
            Its result, or ``None`` if no background evaluation is left to return.

        Raises:
            TimeoutError: it is still running after ``timeout`` seconds (it goes on).
            EvaluationError: it failed; the original exception (and traceback) is its cause.
        """
        return self._jobs.wait(timeout)

    @property
    def skipped(self) -> int:
        """Triggers dropped because an evaluation was pending (``busy_policy="skip"``)."""
        return self._skipped

    @property
    def should_stop(self) -> bool:
        """Whether ``stop_reward`` or ``stop_patience`` says training may stop."""
        return self.tracker.should_stop

    @property
    def best(self) -> float | None:
        """The best ``best_metric`` so far (``None`` before the first result)."""
        return self.tracker.best

    def state_dict(self) -> dict[str, Any]:
        """The schedule, the best result and the stopping counters, to resume a run with
        :meth:`load_state_dict` (plain numbers: JSON or ``torch.save`` will do). Evaluations
        still pending are not in it: take it after :meth:`wait` to include them."""
        return {"schedule": None if self.schedule is None else self.schedule.state_dict(),
                "skipped": self._skipped, "results": self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Carry on from :meth:`state_dict` of an earlier runner (a resumed run)."""
        if not isinstance(state, Mapping) or not {"schedule", "skipped", "results"} <= set(
                state):
            raise bad_argument("state", "what EvalRunner.state_dict() returned", state)
        skipped = check_count("state['skipped']", state["skipped"], 0)
        if state["schedule"] is not None and self.schedule is None:
            raise ValueError(f"eval_every: the state carries a schedule {state['schedule']}; "
                             "build this runner with eval_every= to resume it, or set "
                             "state['schedule'] to None to leave it behind")
        if state["schedule"] is not None:
            self.schedule.load_state_dict(state["schedule"])
        self.tracker.load_state_dict(state["results"])
        self._skipped = skipped

    # --- lifecycle ---------------------------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop: the running evaluation ends at its next env step, queued ones are cancelled.

        Their :meth:`wait` raises :class:`EvaluationError` caused by
        :class:`EvaluationCancelled`. Process and Ray workers busy with the running evaluation
        are killed, idle ones closed (each within seconds). Safe to call twice.

        Returns:
            ``True`` once the runner's thread has ended and the envs are closed (the workers
            gone); ``False`` if the thread was still inside an env step or agent query after
            ``timeout`` seconds (it ends, and closes the envs, when that call returns).
        """
        return self._jobs.shutdown(timeout)

    def __enter__(self) -> EvalRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # --- on the caller's thread, then on the runner's ----------------------------------------

    def _submit(self, weights: Weights, step: int | None, obs_norm: Any, *, blocking: bool,
                busy_policy: str) -> Job | None:
        if step is not None:
            step = _checked_step(step, "an int (the training step) or None")
        job = self._jobs.submit(lambda: self._snapshot(weights, step, obs_norm, not blocking),
                                blocking, busy_policy)
        if job is None:
            self._skipped += 1
        else:
            module = self._module_of(weights)
            job.source = None if module is None else weakref.ref(module)
            self._last_job = job
        return job

    def _module_of(self, weights: Weights) -> nn.Module | None:
        """The module a snapshot of ``weights`` reads (``None``: a state dict, or none)."""
        if weights is None and isinstance(self._evaluator, WeightedAgentQueries):
            weights = self._evaluator.training_agent
        return unwrap_compiled(weights) if isinstance(weights, nn.Module) else None

    def _evaluated_already(self, last: Job, weights: Weights, step: int | None,
                           obs_norm: Any) -> bool:
        """Whether ``last`` evaluated what a snapshot of these arguments would hold now."""
        module = self._module_of(weights)
        if step is None or last.step != step or module is None or last.source is None:
            return False
        if last.source() is not module or last.snapshot.version != weight_source(module).steps:
            return False
        if obs_norm is None or last.snapshot.obs_norm is None:
            return obs_norm is None and last.snapshot.obs_norm is None
        return read_obs_norm(obs_norm) == last.snapshot.obs_norm

    def _snapshot(self, weights: Weights, step: int | None, obs_norm: Any = None,
                  background: bool = False) -> Snapshot:
        """The weights (and observation statistics) as they are now, where the backend
        evaluates them (the evaluation device, or a process backend's shared memory)."""
        return self._backend.snapshot(self._evaluator, weights, step, obs_norm,
                                      background=background)

    def _run(self, job: Job, stop: threading.Event) -> EvalResult:
        try:
            return self._evaluate(job, stop)
        finally:
            self._backend.release(job.snapshot)  # after the checkpoint that may read it

    def _evaluate(self, job: Job, stop: threading.Event) -> EvalResult:
        bar = None
        if job.blocking and self.progress:
            bar = tqdm(total=sum(settings.num_episodes for settings in self.plan),
                       desc="evaluation", unit="episode", leave=False)
        try:
            start = time.perf_counter()
            records = self._backend.run(job.snapshot, stop, bar and (lambda _: bar.update()),
                                        not job.blocking)
            settings = self.plan[0]
            videos = [] if settings.video is None else write_videos(
                records, self.video_dir, settings.video, job.step)
            records = without_clips(records)
            result = summarize(records, step=job.step, elapsed=time.perf_counter() - start,
                               metrics_fn=self.metrics_fn, ci=self.ci, seed=settings.seed,
                               info_keys=settings.info_keys)
        finally:
            if bar is not None:
                bar.close()
        cut = sum(record.cut for record in records)
        if cut and not self._warned_cut:
            self._warned_cut = True  # once per runner: every evaluation reports it as a metric
            warnings.warn(f"max_steps={settings.max_steps} cut {cut} of {len(records)} episodes "
                          "short (counted as eval/max_steps_cut): their returns are partial; "
                          "pass max_steps=None to run episodes to the env's own end",
                          RuntimeWarning, stacklevel=2)
        result.weights_version = job.snapshot.version
        result.videos = videos
        self.tracker.take(result, job.snapshot)
        return result


def _checked_step(step: Any, expected: str) -> int:
    """``step`` as a plain int: a NumPy counter would reach checkpoints and JSON."""
    if isinstance(step, bool) or not isinstance(step, Integral):
        raise bad_argument("step", expected, step)
    return int(step)


# Metrics an evaluation without suites reports, which suites report as eval/<suite>/...
_UNSUITED = ("eval/reward", "eval/wrapped_reward", "eval/success", "eval/episode_length",
             "eval/task/", "eval/info/")


def _check_ranking(tracker: ResultTracker, suites: Mapping[str, Any] | None,
                   evaluator: AgentQueries | None) -> None:
    """What ranking results needs, checked now rather than after every evaluation has run."""
    if not tracker.ranks:
        return
    metric = tracker.best_metric
    if suites is not None and metric.startswith(_UNSUITED):
        suite = next(iter(suites), "test") if isinstance(suites, Mapping) else "test"
        raise ValueError(f"best_metric: with suites, expected a suite's metric such as "
                         f"'eval/{suite}/reward' (or 'eval/generalization_gap' with "
                         f"best_mode='min'), got {metric!r}")
    if tracker.save_best is not None and evaluator is not None and (
            not isinstance(evaluator, WeightedAgentQueries) or evaluator.agent is None):
        raise ValueError(f"save_best: expected an evaluator whose agent has weights to save, "
                         f"got {describe(evaluator)}")


def _plan(suites: Mapping[str, Sequence[Any]] | None, tasks: Sequence[Any] | None,
          **settings: Any) -> tuple[RolloutSettings, ...]:
    """The settings of each suite (one, without suites), checked."""
    if suites is None:
        return (RolloutSettings(tasks=tasks, **settings),)
    if tasks is not None:
        raise bad_argument("tasks", "None with suites (each suite names its tasks)", tasks)
    if not isinstance(suites, Mapping) or not suites:
        raise bad_argument("suites", "a non-empty dict {suite name: [tasks]}", suites)
    plan = []
    for name, suite_tasks in suites.items():
        try:
            plan.append(RolloutSettings(tasks=suite_tasks, suite=name, **settings))
        except ArgumentError as error:
            if error.argument != "tasks":
                raise
            raise error.renamed(f"suites[{name!r}]") from None
    return tuple(plan)


def _env_source(make_env: Any, num_envs: int | None, backend: str) -> tuple[Any, int]:
    """The env factory and the number of slots: an env instance becomes a factory of itself
    (thread backend only), whose size is the number of slots."""
    if num_envs is not None:
        check_count("num_envs", num_envs)
    if not isinstance(make_env, (gym.Env, gym.vector.VectorEnv)):
        return make_env, 8 if num_envs is None else int(num_envs)
    if backend not in ("thread", "auto"):
        raise bad_argument("make_env", f"an env factory for backend={backend!r}, whose workers "
                           "build their own envs (e.g. lambda: gym.make(...), or "
                           "functools.partial(gym.make, ...)); an env instance runs with "
                           "backend='thread' only", make_env)
    size = make_env.num_envs if isinstance(make_env, gym.vector.VectorEnv) else 1
    if num_envs is not None and num_envs != size:
        raise bad_argument("num_envs", f"{size}, the size of the env instance given as "
                           "make_env (one Env is one slot: pass a factory for more)", num_envs)
    return GivenEnvs(make_env), size
