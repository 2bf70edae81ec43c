"""Periodic evaluation of a training agent, blocking or in the background.

Usage::

    from syllabus_eval import EnvSpec, EvalRunner, EvalSchedule, SaveBest, StopOnReward
    from syllabus_eval.adapters import CleanRLEvaluator
    from syllabus_eval.results.loggers import JSONLinesLogger

    with EvalRunner(EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=8),
                    CleanRLEvaluator(agent), num_episodes=20,
                    schedule=EvalSchedule(every=10_000),
                    callbacks=[print, JSONLinesLogger("runs/eval.jsonl"),
                               SaveBest("runs/best.pt"), StopOnReward(475.0, times=3)]) as runner:
        for step in range(0, total_steps, num_envs):
            ...                                        # train
            runner.maybe_trigger(agent, step=step)     # every 10,000 env steps, meanwhile
            if runner.should_stop:
                break
        runner.final_eval(agent, step=step)            # the last policy, blocking

The runner is the facade of evaluation. Its arguments are typed parts a user can build, read
and log (dataclasses with a docstring per field): how envs are made (:class:`EnvSpec`), how
episodes run (:class:`EpisodeSettings`), where (the backend objects of
:mod:`.backend_settings`), when (:class:`EvalSchedule`), what happens to each result (the
callbacks of :mod:`.tracking`: :class:`SaveBest`, :class:`StopOnReward`,
:class:`StopOnNoImprovement`, any callable) and videos (:class:`VideoSettings`); all of them are
on record in ``runner.settings`` and on each result (``result.settings``). It composes a
backend (where episodes run, :mod:`.backends`), a job queue (the runner's thread: evaluations
one at a time, in trigger order, :mod:`.jobs`) and the tracker of results. The weights, and
the observation statistics given as ``obs_norm``, are snapshotted when the evaluation is
triggered (never later) and put on the evaluation device; training goes on meanwhile. Results
are :class:`EvalResult`: the flat metrics dict, with the per-episode records on ``.episodes``
and the trigger step on ``.step``.

By default (``backend="auto"``, :mod:`.backends.auto`) blocking evaluations run in the runner's
thread and background ones in a worker process launched at the first (those due while it
starts, seconds, run in the thread), which training barely feels; where a worker cannot run
them (a script without the ``if __name__ == "__main__":`` guard, an env instance, something
that does not pickle) they stay in the runner's thread, with one warning that says why. There
(``backend="thread"``) an evaluation shares the GIL with training: a background one pauses a
moment each env step so that the training thread gets the GIL back at once, and runs slower
for it. :class:`ProcessBackend` and :class:`RayBackend` run every evaluation in worker
processes or Ray actors (:mod:`.backends.pool`), which get the evaluator itself (its private
copy, pickled once) or build theirs with ``evaluator_fn``::

    runner = EvalRunner(EnvSpec(make_env, num_envs=8), evaluator,
                        backend=ProcessBackend(num_workers=2, timeout=600))

The keywords of the former flat signature (``eval_every=``, ``save_best=``, ``num_envs=``,
...) raise a ``TypeError`` that names their new home (:data:`.settings.MOVED`).
"""

from __future__ import annotations

import dataclasses
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

from syllabus_eval.errors import ArgumentError, bad_argument, check_count, check_flag
from syllabus_eval.evaluation.backends import (
    BackendKind,
    BackendSettings,
    as_backend,
    create_backend,
)
from syllabus_eval.evaluation.jobs import Job, JobQueue
from syllabus_eval.evaluation.normalization import read_obs_norm
from syllabus_eval.evaluation.schedule import BusyPolicy, EvalSchedule
from syllabus_eval.evaluation.settings import (
    build_plan,
    check_evaluator,
    check_ranking,
    of_type,
    record,
    refuse_moved,
)
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.evaluation.tracking import Callback, ResultTracker
from syllabus_eval.query.compiled import unwrap_compiled
from syllabus_eval.query.protocols import AgentQueries, WeightedAgentQueries
from syllabus_eval.query.weights import weight_source
from syllabus_eval.results.metrics import EvalResult, MetricsFn, summarize
from syllabus_eval.rollout import EnvSpec, EpisodeSettings
from syllabus_eval.rollout.video import VideoSettings, video_support, without_clips, write_videos

Weights = nn.Module | Mapping[str, torch.Tensor] | None
EnvSource = Callable[[], gym.Env | gym.vector.VectorEnv] | gym.Env | gym.vector.VectorEnv


class EvalRunner:
    """Evaluates an agent periodically over vectorized envs, with exact episode counts.

    Args:
        envs: how the envs are made: an :class:`EnvSpec` (factory, ``num_envs``,
            vectorization, ``set_task``), or what its ``factory`` takes, standing for
            ``EnvSpec(envs)`` (8 slots; an env instance: its own size). Slot ``i`` runs
            ``(num_episodes + i) // num_envs`` episodes, each on its own env.
        evaluator: the agent's :class:`~syllabus_eval.Evaluator` (any object with its query
            methods). Evaluations run on ``evaluator.detached(device)``, a private copy (in
            worker backends: that copy sent to them once, or what ``evaluator_fn`` builds
            there; with ``evaluator_fn`` it may be ``None``, TorchRL's ``policy_factory``).
        num_episodes: episodes per evaluation (per suite).
        episodes: how episodes run and are summarised (:class:`EpisodeSettings`: ``max_steps``,
            ``deterministic``, ``seed``, ``interchangeable_slots``, ``success_key``,
            ``info_keys``, ``ci``); default ``EpisodeSettings()``.
        tasks: tasks assigned to episodes round robin, passed as the reset option ``"task"``
            (or to the spec's ``set_task``).
        suites: ``{name: [tasks]}``: each evaluation runs every suite on the same snapshot,
            each with its own ``num_episodes``, reported under ``eval/<name>/...``, with
            ``eval/generalization_gap`` (``train`` minus ``test`` mean return) when both are
            given. Instead of ``tasks``. Rank results by a suite's metric then, e.g.
            ``SaveBest(path, metric="eval/test/reward")``.
        backend: where episodes run: ``"auto"`` (the default), ``"thread"``, ``"process"``,
            ``"ray"``, or one of those objects with options: :class:`AutoBackend`,
            :class:`ThreadBackend`, :class:`ProcessBackend` (``num_workers``,
            ``max_restarts``, ``timeout``, ``env_fn``, ``evaluator_fn``, ``init_fn``),
            :class:`RayBackend` (those, and ``address``, ``num_cpus``, ``num_gpus``,
            ``ray_kwargs``; needs ``pip install 'syllabus-eval[ray]'``).
        schedule: when :meth:`maybe_trigger` evaluates and what a trigger does while one is
            pending (:class:`EvalSchedule`: ``every``, ``busy_policy``, by default
            ``"skip"``); default ``EvalSchedule()``: no periodic evaluations.
        callbacks: a callable or a list of them, each given every :class:`EvalResult` on the
            runner's thread, in order, before :meth:`wait` returns it: loggers
            (:mod:`syllabus_eval.results.loggers`, ``wandb.log``), :class:`SaveBest`,
            :class:`StopOnReward`, :class:`StopOnNoImprovement`. An exception one raises is
            logged, kept on ``result.on_result_error`` and stops nothing; :attr:`should_stop`
            combines their ``should_stop``.
        video: record episodes from ``env.render()`` and write them to its ``folder``
            (:class:`VideoSettings`; envs made with ``render_mode="rgb_array"``); ``None``:
            none.
        metrics_fn: ``metrics_fn(episodes) -> {name: number}``, extra metrics under ``eval/``.
        device: the evaluation device (default: the evaluator's; in workers: that of the
            evaluator ``evaluator_fn`` builds).
        progress: show a tqdm progress bar during blocking :meth:`evaluate` calls.

    Raises:
        ValueError: for bad arguments (an :class:`~syllabus_eval.errors.ArgumentError` naming
            it), and envs whose spaces do not fit the agent (for worker backends: exceptions
            raised while they start, with the worker's traceback as their cause).
        TypeError: a keyword of the former flat signature, naming its new home.
        ImportError: a Ray backend without Ray installed.
    """

    @refuse_moved
    def __init__(self, envs: EnvSpec | EnvSource, evaluator: AgentQueries | None = None, *,
                 num_episodes: int = 20, episodes: EpisodeSettings | None = None,
                 tasks: Sequence[Any] | None = None,
                 suites: Mapping[str, Sequence[Any]] | None = None,
                 backend: str | BackendSettings = "auto",
                 schedule: EvalSchedule | None = None,
                 callbacks: Callback | Sequence[Callback] | None = None,
                 video: VideoSettings | None = None, metrics_fn: MetricsFn | None = None,
                 device: str | torch.device | None = None, progress: bool = False) -> None:
        self.backend = as_backend(backend)
        self.envs = envs if isinstance(envs, EnvSpec) else EnvSpec(envs)
        if self.envs.given and self.backend.kind not in (BackendKind.THREAD, BackendKind.AUTO):
            raise bad_argument("envs", f"an env factory for backend={str(self.backend.kind)!r},"
                               " whose workers build their own envs (e.g. lambda: gym.make(...)"
                               ", or functools.partial(gym.make, ...)); an env instance runs "
                               "with backend='thread' only", self.envs.factory)
        check_evaluator(evaluator, getattr(self.backend, "evaluator_fn", None))
        episodes = of_type("episodes", episodes, EpisodeSettings, EpisodeSettings())
        # A copy: its next_due is this runner's own.
        self.schedule = dataclasses.replace(of_type("schedule", schedule, EvalSchedule,
                                                    EvalSchedule()))
        self.video = of_type("video", video, VideoSettings)
        if self.video is not None:
            if self.video.folder is None:
                raise ArgumentError("video", "expected VideoSettings with a folder to write "
                                    "the videos to, got VideoSettings(folder=None)")
            video_support()  # a clear error now, without the video extra
        if metrics_fn is not None and not callable(metrics_fn):
            raise bad_argument("metrics_fn", "a callable or None", metrics_fn)
        check_flag("progress", progress)
        self.tracker = ResultTracker(callbacks)
        self.plan = build_plan(num_episodes, episodes, tasks=tasks, suites=suites,
                               video=self.video)
        check_ranking(self.tracker, suites, evaluator)
        self.episodes, self.metrics_fn, self.progress = episodes, metrics_fn, progress
        self._skipped = 0  # triggers dropped by busy_policy="skip"
        self._warned_cut = False  # whether max_steps cutting episodes was reported
        self._last_job: Job | None = None  # the latest evaluation triggered
        self._backend = create_backend(self.backend, self.envs, evaluator, self.plan,
                                       device=device)
        self._evaluator = evaluator
        self.settings: dict[str, Any] = record({
            "envs": self.envs, "num_episodes": num_episodes, "episodes": episodes,
            "tasks": tasks, "suites": suites, "backend": self.backend,
            "schedule": self.schedule, "callbacks": self.tracker.callbacks,
            "video": self.video, "metrics_fn": metrics_fn,
            "device": None if device is None else str(device)})
        self._jobs = JobQueue(self._run, self._backend.close)

    @property
    def evaluator(self) -> AgentQueries | None:
        """The evaluator given (evaluations run on its private copy)."""
        return self._evaluator

    @property
    def callbacks(self) -> list[Callback]:
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
        job = self._submit(weights, step, obs_norm, blocking=True,
                           busy_policy=self.schedule.busy_policy)
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
                            busy_policy=self.schedule.busy_policy) is not None

    def maybe_trigger(self, weights: Weights = None, step: int | None = None, *,
                      obs_norm: Any = None) -> bool:
        """:meth:`trigger_eval` when an evaluation is due at ``step`` (``schedule.every``).

        Due when ``step`` has crossed a multiple of ``every`` since the last due step (never
        ``step % every == 0``); several multiples crossed at once give one evaluation, at
        ``step``. A due evaluation that finds the runner busy follows the schedule's
        ``busy_policy`` (by default it is skipped and counted in :attr:`skipped`). Costs one
        comparison when nothing is due: call it every step.

        Returns:
            Whether an evaluation was started or queued.
        """
        next_due = self.schedule.next_due
        if type(step) is int and next_due is not None and step < next_due:
            return False  # the common case, first: a training loop asks every step
        step = _checked_step(step, "an int: the training step (env steps so far)")
        if not self.schedule.due(step):
            return False
        return self.trigger_eval(weights, step, obs_norm=obs_norm)

    def final_eval(self, weights: Weights = None, step: int | None = None, *,
                   obs_norm: Any = None) -> EvalResult:
        """One blocking evaluation of the last policy, at the end of training (TorchRL #4415).

        It runs after the evaluations still pending, whatever the ``busy_policy`` says. When the
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
        job = self._submit(weights, step, obs_norm, blocking=True,
                           busy_policy=BusyPolicy.QUEUE)
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
        """Whether a callback's ``should_stop`` (:class:`StopOnReward`,
        :class:`StopOnNoImprovement`, any with that attribute) says training may stop; once
        set, it stays set."""
        return self.tracker.should_stop

    @property
    def best(self) -> float | None:
        """The best value of the ranking metric so far (``"eval/reward"``, or that of the
        :class:`SaveBest` / :class:`StopOnNoImprovement` in ``callbacks``; ``None`` before the
        first result)."""
        return self.tracker.best

    def state_dict(self) -> dict[str, Any]:
        """The schedule, the best result and the stopping counters, to resume a run with
        :meth:`load_state_dict` (plain numbers: JSON or ``torch.save`` will do). Evaluations
        still pending are not in it: take it after :meth:`wait` to include them."""
        every = self.schedule.every
        return {"schedule": None if every is None else self.schedule.state_dict(),
                "skipped": self._skipped, "results": self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Carry on from :meth:`state_dict` of an earlier runner (a resumed run)."""
        if not isinstance(state, Mapping) or not {"schedule", "skipped", "results"} <= set(
                state):
            raise bad_argument("state", "what EvalRunner.state_dict() returned", state)
        skipped = check_count("state['skipped']", state["skipped"], 0)
        if state["schedule"] is not None and self.schedule.every is None:
            raise ArgumentError("schedule", f"the state carries a schedule {state['schedule']}"
                                "; build this runner with schedule=EvalSchedule(every=...) to "
                                "resume it, or set state['schedule'] to None to leave it "
                                "behind")
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
                busy_policy: BusyPolicy) -> Job | None:
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
                records, settings.video.folder, settings.video, job.step)
            records = without_clips(records)
            result = summarize(records, step=job.step, elapsed=time.perf_counter() - start,
                               metrics_fn=self.metrics_fn, ci=settings.ci, seed=settings.seed,
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
        result.settings = self.settings
        self.tracker.take(result, job.snapshot)
        return result


def _checked_step(step: Any, expected: str) -> int:
    """``step`` as a plain int: a NumPy counter would reach checkpoints and JSON."""
    if isinstance(step, bool) or not isinstance(step, Integral):
        raise bad_argument("step", expected, step)
    return int(step)
