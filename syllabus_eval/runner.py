"""Periodic evaluation of a training agent, blocking or in the background.

Usage::

    from syllabus_eval import EvalRunner
    from syllabus_eval.adapters import CleanRLEvaluator

    with EvalRunner(lambda: gym.make("CartPole-v1"), CleanRLEvaluator(agent), num_envs=8,
                    num_episodes=20, on_result=wandb.log) as runner:
        for step in range(total_steps):
            ...                                           # train
            if step % 10_000 == 0:
                runner.trigger_eval(agent, step=step)     # snapshot now, evaluate meanwhile
            if (result := runner.poll()) is not None:     # None while it runs
                print(result["eval/reward"])
        metrics = runner.evaluate(agent, step=step)       # blocking

Every evaluation, blocking or not, runs on the runner's own thread, one at a time, in trigger
order. The weights are snapshotted when the evaluation is triggered (never later) and put on
the evaluation device; training goes on meanwhile. Results are :class:`EvalResult`: the flat
metrics dict, with the per-episode records on ``.episodes`` and the trigger step on ``.step``.

With the ``"thread"`` backend the evaluation shares the GIL with training: a background
evaluation pauses a moment each env step so that the training thread gets the GIL back at once
(see :mod:`syllabus_eval.backends.thread`), and runs slower for it; blocking ones run at full
speed. Envs that are heavy in Python still take their share of the interpreter. The
``"process"`` and ``"ray"`` backends run the episodes in worker processes or Ray actors instead
(:mod:`syllabus_eval.backends.pool`): no GIL is shared, envs and evaluators are built there
from factories, one evaluation's env slots can be split over several workers, and workers that
die are restarted::

    runner = EvalRunner(make_env, evaluator, num_envs=8, backend="process",
                        evaluator_fn=make_evaluator, num_workers=2, timeout=600)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import gymnasium as gym
import torch
from torch import nn
from tqdm.auto import tqdm

from .backends import create_backend
from .errors import EvaluationCancelled, EvaluationError, bad_argument
from .protocols import AgentQueries
from .results import EvalResult, MetricsFn, summarize
from .rollout import RolloutSettings
from .snapshot import Snapshot, take_snapshot

logger = logging.getLogger(__name__)

BUSY_POLICIES = ("error", "queue", "skip")


@dataclass
class _Job:
    """One triggered evaluation."""

    snapshot: Snapshot  # taken at trigger time
    blocking: bool
    future: Future = field(default_factory=Future)

    @property
    def step(self) -> int | None:
        return self.snapshot.step


class EvalRunner:
    """Evaluates an agent periodically over vectorized envs, with exact episode counts.

    Args:
        make_env: returns one ``gymnasium.Env`` (``num_envs`` copies are made) or a whole
            ``VectorEnv`` of ``num_envs`` sub-envs. Reward wrappers inside it count: leave
            reward shaping out to evaluate raw returns.
        evaluator: the agent's :class:`~syllabus_eval.Evaluator` (any object with its
            ``get_action``). Evaluations run on ``evaluator.detached(device)``, a private copy;
            with the process and Ray backends, on the ``evaluator_fn`` evaluators of the
            workers, and this one only gives the weights (when :meth:`evaluate` gets none).
        num_envs: env slots; slot ``i`` runs ``(num_episodes + i) // num_envs`` episodes.
        num_episodes: episodes per evaluation.
        max_steps: steps after which an episode is truncated; ``None``: the env's own limit.
        backend: where episodes run: ``"thread"`` (the runner's daemon thread),
            ``"process"`` (spawned worker processes) or ``"ray"`` (Ray actors; needs
            ``pip install 'syllabus-eval[ray]'``). The options below marked *process, ray*
            are refused by backends that do not take them.
        busy_policy: what :meth:`trigger_eval` does while an evaluation is pending:
            ``"error"`` raises ``RuntimeError``, ``"queue"`` runs it afterwards, ``"skip"``
            drops it and returns ``False``.
        on_result: called with each :class:`EvalResult`, on the runner's thread, before
            :meth:`wait` returns it. An exception it raises is logged, kept on
            ``result.on_result_error`` and does not stop the runner. The evaluation counts as
            pending until it returns.
        metrics_fn: ``metrics_fn(episodes) -> {name: number}``, extra metrics under ``eval/``.
        deterministic: greedy actions (default), sampled (``False``) or the evaluator's default
            (``None``); see :class:`RolloutSettings`.
        seed: slot ``i`` starts each evaluation reset with ``seed + i`` (default 0: every
            evaluation sees the same start states); ``None``: unseeded.
        tasks: tasks assigned to episodes round robin, passed as the reset option ``"task"``.
        set_task: ``set_task(env, task)``, called before each reset instead of the option.
        success_key: the info key giving an episode's success at its last step.
        vectorization_mode: ``"sync"`` (our env pool, in the runner's thread) or ``"async"``
            (a Gymnasium ``AsyncVectorEnv``).
        device: the evaluation device (default: the evaluator's; in workers: that of the
            evaluator ``evaluator_fn`` builds).
        progress: show a tqdm progress bar during blocking :meth:`evaluate` calls.
        env_fn: *process, ray.* The env factory the workers call (default: ``make_env``); it
            is sent with cloudpickle, as Gymnasium's ``AsyncVectorEnv`` sends env factories:
            a function, class, ``functools.partial``, lambda or closure, with what it captures.
            A ``VectorEnv`` factory fits ``num_workers=1`` only.
        evaluator_fn: *process, ray (required).* Builds the evaluator in each worker, on an
            agent of the training agent's architecture; each evaluation loads the snapshot of
            the weights into it. Sent like ``env_fn`` (so are ``init_fn`` and ``set_task``).
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
        make_env: Callable[[], gym.Env | gym.vector.VectorEnv],
        evaluator: AgentQueries,
        num_envs: int = 8,
        num_episodes: int = 20,
        max_steps: int | None = 1000,
        backend: str = "thread",
        busy_policy: str = "error",
        on_result: Callable[[EvalResult], Any] | None = None,
        metrics_fn: MetricsFn | None = None,
        *,
        deterministic: bool | None = True,
        seed: int | None = 0,
        tasks: list[Any] | None = None,
        set_task: Callable[[gym.Env, Any], None] | None = None,
        success_key: str = "success",
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
        if not isinstance(evaluator, AgentQueries):
            raise bad_argument("evaluator", "an Evaluator (an object with get_action, "
                               "get_value and get_action_and_value)", evaluator)
        if busy_policy not in BUSY_POLICIES:
            raise ValueError(f"busy_policy: expected one of {', '.join(map(repr, BUSY_POLICIES))}"
                             f", got {busy_policy!r}")
        for name, value in (("on_result", on_result), ("metrics_fn", metrics_fn)):
            if value is not None and not callable(value):
                raise bad_argument(name, "a callable or None", value)
        settings = RolloutSettings(num_episodes, max_steps, deterministic, seed, tasks,
                                   success_key)
        self.busy_policy = busy_policy
        self.on_result = on_result
        self.metrics_fn = metrics_fn
        self.progress = progress
        self.settings = settings
        # Only the worker options that were given: each backend refuses those it does not take.
        options = {name: value for name, value in (
            ("env_fn", env_fn), ("evaluator_fn", evaluator_fn), ("init_fn", init_fn),
            ("num_workers", num_workers), ("max_restarts", max_restarts), ("timeout", timeout),
            ("address", address), ("num_cpus", num_cpus), ("num_gpus", num_gpus),
            ("ray_kwargs", ray_kwargs)) if value is not None}
        self._backend = create_backend(
            backend, make_env, evaluator, num_envs, settings,
            vectorization_mode=vectorization_mode, set_task=set_task, device=device, **options)
        self._evaluator = evaluator
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._unclaimed: deque[_Job] = deque()  # background results not yet polled
        self._busy = 0  # evaluations queued or running
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- triggering --------------------------------------------------------------------------

    def evaluate(self, weights: nn.Module | Mapping[str, torch.Tensor] | None = None,
                 step: int | None = None) -> EvalResult:
        """Evaluate now and return the result (blocking).

        Runs on the runner's thread like every evaluation. While a background evaluation is
        pending it raises ``RuntimeError``, unless ``busy_policy="queue"``: then it runs
        after the pending ones. A failed evaluation raises :class:`EvaluationError`.

        Args:
            weights: the agent's weights (a module or a state dict); ``None``: the training
                agent the evaluator was built on, as it is now.
            step: the training step, carried by the result (``eval/step``).
        """
        job = self._submit(weights, step, blocking=True)
        wait_futures([job.future])
        return self._outcome(job)

    def trigger_eval(self, weights: nn.Module | Mapping[str, torch.Tensor] | None = None,
                     step: int | None = None) -> bool:
        """Start an evaluation in the background; the weights are snapshotted now.

        Returns:
            ``True`` if it was started or queued, ``False`` if skipped (``busy_policy="skip"``).

        Raises:
            RuntimeError: an evaluation is pending and ``busy_policy="error"``.
        """
        return self._submit(weights, step, blocking=False) is not None

    @property
    def pending(self) -> bool:
        """Whether an evaluation is queued or running."""
        with self._lock:
            return self._busy > 0

    def poll(self) -> EvalResult | None:
        """The oldest background result not yet returned; ``None`` while it runs (or if none).

        Raises:
            EvaluationError: that evaluation failed; the original exception is its cause.
        """
        with self._lock:
            if not self._unclaimed or not self._unclaimed[0].future.done():
                return None
            job = self._unclaimed.popleft()
        return self._outcome(job)

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
        with self._lock:
            if not self._unclaimed:
                return None
            job = self._unclaimed[0]
        if not wait_futures([job.future], timeout).done:
            raise TimeoutError(f"the evaluation triggered at step {job.step} is still running "
                               f"after {timeout}s")
        with self._lock:
            if self._unclaimed and self._unclaimed[0] is job:
                self._unclaimed.popleft()
        return self._outcome(job)

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
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stop.set()
        self._jobs.put(None)  # wakes the idle thread; jobs queued before it are cancelled
        if thread is None:
            self._backend.close()
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("EvalRunner.shutdown: the evaluation thread is still inside a call "
                           "after %ss; it will end when that call returns", timeout)
            return False
        return True

    def __enter__(self) -> EvalRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # --- the runner's thread -----------------------------------------------------------------

    def _submit(self, weights: Any, step: int | None, blocking: bool) -> _Job | None:
        if step is not None and (isinstance(step, bool) or not isinstance(step, Integral)):
            raise bad_argument("step", "an int (the training step) or None", step)
        with self._lock:
            self._check_open()
            if self._busy and self.busy_policy != "queue":
                if self.busy_policy == "skip" and not blocking:
                    return None
                raise RuntimeError(
                    f"EvalRunner: an evaluation is still pending (busy_policy="
                    f"{self.busy_policy!r}); wait() for it, or use busy_policy='queue'")
            self._busy += 1  # reserved before the snapshot, which may wait for a step
        try:
            job = _Job(self._snapshot(weights, step), blocking)
        except BaseException:
            with self._lock:
                self._busy -= 1
            raise
        with self._lock:
            if self._closed:  # shut down during the snapshot: its thread may be gone already
                self._busy -= 1
                self._check_open()
            if not blocking:
                self._unclaimed.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name="syllabus-eval-runner")
                self._thread.start()
            self._jobs.put(job)  # under the lock: before shutdown's stop signal, or not at all
        return job

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("EvalRunner: shut down; create a new runner to evaluate")

    def _snapshot(self, weights: Any, step: int | None) -> Snapshot:
        """The weights as they are now, on the evaluation device."""
        return take_snapshot(self._evaluator, weights, self._backend.weights_device, step)

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                if self._stop.is_set():
                    self._finish(job, error=EvaluationCancelled(
                        "the runner was shut down before this evaluation started"))
                else:
                    self._run(job)
            while (job := self._get_nowait()) is not None:  # triggered during shutdown
                self._finish(job, error=EvaluationCancelled("the runner was shut down"))
        finally:
            self._backend.close()

    def _get_nowait(self) -> _Job | None:
        try:
            return self._jobs.get_nowait()
        except queue.Empty:
            return None

    def _run(self, job: _Job) -> None:
        bar = None
        if job.blocking and self.progress:
            bar = tqdm(total=self.settings.num_episodes, desc="evaluation", unit="episode",
                       leave=False)
        try:
            start = time.perf_counter()
            records = self._backend.run(job.snapshot, self._stop,
                                        bar and (lambda _: bar.update()), not job.blocking)
            result = summarize(records, step=job.step, elapsed=time.perf_counter() - start,
                               metrics_fn=self.metrics_fn)
            result.weights_version = job.snapshot.version
        except BaseException as error:
            self._finish(job, error=error)
            return
        finally:
            if bar is not None:
                bar.close()
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception as error:
                result.on_result_error = error
                logger.exception("on_result raised for the evaluation at step %s; the runner "
                                 "goes on (the error is on result.on_result_error)", job.step)
        self._finish(job, result=result)

    def _finish(self, job: _Job, result: EvalResult | None = None,
                error: BaseException | None = None) -> None:
        with self._lock:
            self._busy -= 1  # before the future: whoever wait()s may trigger at once
        if error is not None:
            if not job.blocking and not isinstance(error, EvaluationCancelled):
                # A loop that only listens to on_result would otherwise not hear of it until
                # it next calls poll() or wait().
                logger.error("the background evaluation at step %s failed (poll() and wait() "
                             "raise it): %r", job.step, error)
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    def _outcome(self, job: _Job) -> EvalResult:
        error = job.future.exception()
        if error is not None:
            raise EvaluationError(f"the evaluation triggered at step {job.step} failed: "
                                  f"{error!r}") from error
        return job.future.result()

