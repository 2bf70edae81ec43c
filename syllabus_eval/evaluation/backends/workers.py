"""What travels between the runner's side of a worker pool and its workers, and the workers'
side of it.

Usage (a worker's main loop, as the process and Ray backends write it)::

    episodes, report = set_up(spec, slots)          # report: Event(READY) or Event(FAILED)
    send(report)
    for order in orders:                             # JobOrder per evaluation
        send(run_job(episodes, order, JobStop(cancelled, order.job)))   # Event(DONE | ERROR)

**The protocol.** The runner's side hands a worker a :class:`JobOrder`; a worker reports
:class:`Event` records of an :class:`EventKind`: ``READY`` or ``FAILED`` once started, then for
each job ``EPISODE`` records (when streamed) and ``DONE`` or ``ERROR``. The runner's side adds
``DIED`` for a worker that is gone. An exception travels as a
:class:`~syllabus_eval.errors.RemoteFailure`, which raises it again on the runner's side
with the worker's traceback as its cause. A job whose weights wait in shared memory carries
only their ticket (``snapshot.shared``); ``run_job`` reads them from the worker's
:class:`~syllabus_eval.evaluation.backends.shared.SharedWeights` into its agent.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import gymnasium as gym
import torch

from syllabus_eval.errors import EvaluationError, RemoteFailure, bad_argument
from syllabus_eval.evaluation.backends.base import LocalEpisodes
from syllabus_eval.evaluation.backends.shared import SharedWeights
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.query.protocols import AgentQueries
from syllabus_eval.rollout import EnvSpec, EpisodeRecord, RolloutSettings


class EventKind(enum.Enum):
    """What a worker reports (module docs); ``data`` of the :class:`Event` in brackets."""

    READY = "ready"  # started (its pid)
    FAILED = "failed"  # could not start (a RemoteFailure)
    EPISODE = "episode"  # an episode of a streamed job ended (its EpisodeRecord)
    DONE = "done"  # a job's episodes are over (their records)
    ERROR = "error"  # a job raised (a RemoteFailure)
    DIED = "died"  # added on the runner's side: the worker is gone (why, as text)


class Event(NamedTuple):
    """One report of a worker: its kind, the job it is about (``None``: none) and its data."""

    kind: EventKind
    job: int | None = None
    data: Any = None


@dataclass(frozen=True)
class JobOrder:
    """What the runner's side hands every worker for one evaluation."""

    job: int
    snapshot: Snapshot
    stream: bool  # report each episode as it ends (EventKind.EPISODE)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker builds its share of the evaluation from (pickled once, for every worker)."""

    envs: EnvSpec  # the runner's: the slots in all, and how envs are made
    env_fn: Callable[[], Any] | None  # the workers' own factory, where given
    evaluator_fn: Callable[[], Any]
    init_fn: Callable[[], Any] | None
    plan: tuple[RolloutSettings, ...]
    device: str | torch.device | None

    @property
    def given_env_fn(self) -> bool:
        return self.env_fn is not None

    @property
    def factory(self) -> Callable[[], Any]:
        return self.envs.make_env if self.env_fn is None else self.env_fn

    def build(self, slots: Sequence[int]) -> LocalEpisodes:
        if self.init_fn is not None:
            self.init_fn()  # before anything else: simulators, env variables, devices
        evaluator = self.evaluator_fn()
        if not isinstance(evaluator, AgentQueries):
            raise bad_argument("evaluator_fn", "a factory returning an Evaluator (an object "
                               "with get_action, get_value and get_action_and_value)",
                               evaluator)
        num_envs, env_fn = self.envs.num_envs, self.factory
        if len(slots) != num_envs:  # a share: its env slots are built one by one
            env_fn = partial(_one_env, env_fn, len(slots), num_envs)
        share = dataclasses.replace(self.envs, factory=env_fn, num_envs=len(slots))
        return LocalEpisodes(share, evaluator, self.plan, num_slots=num_envs, slots=slots,
                             device=self.device)


def _one_env(env_fn: Callable[[], Any], share: int, num_envs: int) -> Any:
    env = env_fn()
    if isinstance(env, gym.vector.VectorEnv):
        env.close()
        raise ValueError(f"num_workers: expected 1 when the env factory returns a VectorEnv "
                         f"(it cannot be split between workers), got more: this worker's "
                         f"share is {share} of the {num_envs} env slots")
    return env


class JobStop:
    """The ``stop`` flag of one job in a worker: set once the runner cancels that job."""

    def __init__(self, cancelled: Any, job: int) -> None:
        self.cancelled = cancelled  # .value: the last job cancelled
        self.job = job

    def is_set(self) -> bool:
        return self.cancelled.value == self.job


def set_up(spec: bytes, slots: Sequence[int]) -> tuple[LocalEpisodes | None, Event]:
    """Worker side: build a share from the pickled spec; the episodes and the report."""
    try:
        return pickle.loads(spec).build(slots), Event(EventKind.READY, None, os.getpid())
    except BaseException as error:
        return None, Event(EventKind.FAILED, None, RemoteFailure.of(error))


def run_job(episodes: LocalEpisodes, order: JobOrder, stop: JobStop,
            on_episode: Callable[[EpisodeRecord], None] | None = None,
            shared: SharedWeights | None = None) -> Event:
    """Worker side: run one job on this share; the report. A snapshot whose weights wait in
    shared memory (``snapshot.shared``) is read from ``shared``, the buffer this worker was
    started with, straight into its agent."""
    try:
        snapshot = order.snapshot
        if snapshot.shared is not None:
            if shared is None:
                raise EvaluationError("the job's weights are in shared memory, which this "
                                      "worker was not given")
            shared.load(snapshot.shared, partial(episodes.load, version=snapshot.version))
        return Event(EventKind.DONE, order.job, episodes.run(
            snapshot, stop, on_episode, loaded=snapshot.shared is not None))
    except BaseException as error:
        return Event(EventKind.ERROR, order.job, RemoteFailure.of(error))


class ShippedEvaluator:
    """The ``evaluator_fn`` of a pool given none: the runner's evaluator itself, its private
    copy pickled once (Gymnasium sends env factories the same way), and unpickled in the worker
    when called, after ``init_fn``."""

    def __init__(self, pickled: bytes) -> None:
        self.pickled = pickled

    def __call__(self) -> Any:
        return pickle.loads(self.pickled)
