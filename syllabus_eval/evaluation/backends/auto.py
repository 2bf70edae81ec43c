"""The ``"auto"`` backend, the default: blocking evaluations here, background ones in a worker.

Usage::

    runner = EvalRunner(make_env, evaluator, schedule=EvalSchedule(every=10_000))  # "auto"
    runner.maybe_trigger(agent, step=step)   # the first one starts a worker process
    runner.final_eval(agent, step=step)      # blocking: in the runner's thread, at full speed

A background evaluation in the runner's thread shares the interpreter with training: on two
cores it left a CleanRL PPO loop at 0.33x its speed (issue #22). So background evaluations run
in one worker process of the ``"process"`` backend (:mod:`.process`:
nice 15, one torch thread, the evaluator's own copy sent once, weights through shared memory),
launched at the first one; a runner that only evaluates blocking never starts it. The worker
takes seconds to start (it imports torch): background evaluations due meanwhile run in the
runner's thread, so that the first results come as soon as they did, and the first one after
the worker reported ready runs there. Blocking
evaluations (``evaluate``, ``final_eval``) run in the runner's thread as the ``"thread"``
backend runs them: they are what the caller waits for, and a worker would only add the hand-over.

Background evaluations stay in the runner's thread instead, with one warning that says why and
what would change it, when a worker cannot do them:

* the main script runs its training without ``if __name__ == "__main__":`` (a spawned worker
  would run it again; :mod:`~syllabus_eval.evaluation.backends.main_guard`);
* ``envs`` is an env instance, which a worker cannot build;
* the env factory, the evaluator's copy or the task hook does not pickle;
* the worker fails to start (e.g. an env registered only in this process).

``backend="thread"`` keeps every evaluation in the runner's thread, without the warning;
``backend=ProcessBackend(...)`` gives the worker options (``num_workers``, ``timeout``, ...)
and raises what keeps workers from starting.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

from syllabus_eval.evaluation.backend_settings import BackendSettings, ProcessBackend
from syllabus_eval.evaluation.backends.base import Backend, LocalEpisodes
from syllabus_eval.evaluation.backends.main_guard import unguarded_main
from syllabus_eval.evaluation.backends.process import ProcessEngine
from syllabus_eval.evaluation.backends.thread import ThreadEngine
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.query.protocols import AgentQueries
from syllabus_eval.rollout import EnvSpec, EpisodeRecord, RolloutSettings

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AutoEngine(Backend):
    """Blocking evaluations in a :class:`ThreadEngine`, background ones in a
    :class:`ProcessEngine` launched at the first (module docs)."""

    def __init__(self, envs: EnvSpec, evaluator: AgentQueries,
                 plan: tuple[RolloutSettings, ...], *, device: str | torch.device | None = None,
                 settings: BackendSettings | None = None) -> None:
        super().__init__(envs, evaluator, plan, device=device, settings=settings)
        self.thread = ThreadEngine(envs, evaluator, plan, device=device)
        self.weights_device = self.thread.weights_device
        self._evaluator, self._plan, self._device = evaluator, plan, device
        self.process: ProcessEngine | None = None  # once its worker has started
        self._starting: ProcessEngine | None = None  # its worker launched, not yet ready
        # Where background evaluations go: None until the first, then "process" or "thread".
        self.background: str | None = None
        self._lock = threading.Lock()

    @property
    def episodes(self) -> LocalEpisodes:
        """The runner thread's agent and envs (blocking evaluations, and the fallback)."""
        return self.thread.episodes

    def snapshot(self, evaluator: AgentQueries | None, weights: Any, step: int | None = None,
                 obs_norm: Any = None, *, background: bool = False) -> Snapshot:
        if not background:
            return self.thread.snapshot(evaluator, weights, step, obs_norm)
        with self._lock:
            if self.background is None:  # the first: decided on the thread that triggers,
                self._choose()           # whose stack tells whether the script is guarded
        process = self.process
        if process is not None:  # its worker is up: the weights go through shared memory
            return process.snapshot(evaluator, weights, step, obs_norm, background=True)
        return self.thread.snapshot(evaluator, weights, step, obs_norm)

    def _choose(self) -> None:
        """What can be told on the triggering thread, cheaply: the rest (pickling, starting
        the worker) is up to the runner's thread, in :meth:`_advance`."""
        if self.envs.given:
            self._stay("envs is an env instance, which a worker process cannot build",
                       "Pass an env factory (e.g. lambda: gym.make(...)) to evaluate in a "
                       "worker process.", _caller_level())
            return
        script = unguarded_main()
        if script is not None:
            self._stay(f"the main script {script} runs without `if __name__ == \"__main__\":`"
                       ", and a worker process would run it again",
                       "Put the training code under that guard to evaluate in a worker process.",
                       _caller_level())
            return
        self.background = "process"

    def run(self, snapshot: Snapshot, stop: threading.Event,
            on_episode: Callable[[EpisodeRecord], None] | None,
            background: bool) -> list[EpisodeRecord]:
        if background and self.process is None and self.background == "process":
            self._advance()
        if background and self.process is not None:
            return self.process.run(snapshot, stop, on_episode, background)
        return self.thread.run(snapshot, stop, on_episode, background)

    def _advance(self) -> None:
        """Launch the worker at the first background evaluation and take it once it reports
        ready (on the runner's thread, without waiting: until then, a few seconds, background
        evaluations run here); or stay here for good if it cannot start."""
        try:
            if self._starting is None:
                self._starting = ProcessEngine(self.envs, self._evaluator, self._plan,
                                               device=self._device, settings=ProcessBackend(),
                                               start_workers=False)
                self._starting.launch()
            if self._starting.started(wait=False):
                self.process, self._starting = self._starting, None
        except Exception as error:
            starting, self._starting = self._starting, None
            if starting is None:  # what the worker needs does not pickle
                self._stay(f"a worker process cannot be given what it needs ({error})")
                return
            starting.close()
            self._stay(f"its worker process failed to start ({type(error).__name__}: {error})",
                       "backend='process' raises this error, with the worker's traceback.")

    def _stay(self, why: str, fix: str = "", stacklevel: int = 2) -> None:
        """Background evaluations stay in the runner's thread, said once (module docs)."""
        self.background = "thread"
        warnings.warn(
            f"EvalRunner: background evaluations run in the runner's thread, where they slow "
            f"training down (they share the interpreter with it), because {why}. "
            f"{fix + ' ' if fix else ''}Pass backend='thread' to choose the thread without "
            "this warning.", RuntimeWarning, stacklevel=stacklevel)

    def release(self, snapshot: Snapshot) -> None:
        if self.process is not None:
            self.process.release(snapshot)

    def close(self) -> None:
        try:
            self.thread.close()
        finally:
            for process in (self.process, self._starting):
                if process is not None:
                    process.close()


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning of :meth:`AutoEngine._stay`, called by the
    caller of this function, at the first frame outside this package: the user's line."""
    frame, level = sys._getframe(1), 2  # the caller's frame is stacklevel 2 for _stay
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1
