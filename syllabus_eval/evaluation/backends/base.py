"""The backend interface, and the episodes of some env slots that every backend runs.

Usage (backends are private strategies: the runner builds them by name)::

    backend = create_backend("thread", EnvSpec(make_env, num_envs=8), evaluator, [settings])
    snapshot = backend.snapshot(evaluator, agent, step=0, background=True)   # at trigger time
    records = backend.run(snapshot, stop, on_episode=None, background=True)
    backend.release(snapshot)
    backend.close()

:class:`Backend` is what the runner calls: ``snapshot`` on the thread that triggers, the rest
from the runner's own thread, one evaluation at a time;
:class:`LocalEpisodes` is an evaluation agent and the envs of some slots in one process, which
the thread backend holds for all slots and each process or Ray worker for its share.
"""

from __future__ import annotations

import abc
import logging
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import torch

from syllabus_eval.evaluation.backend_settings import BackendSettings
from syllabus_eval.evaluation.normalization import (
    ObsNormStats,
    apply_obs_norm,
    normalizes_observations,
)
from syllabus_eval.evaluation.snapshot import Snapshot, take_snapshot
from syllabus_eval.query.protocols import AgentQueries, WeightedAgentQueries
from syllabus_eval.query.weights import snapshot_state_dict
from syllabus_eval.rollout import (
    EnvPool,
    EnvSpec,
    EpisodeRecord,
    RolloutSettings,
    StopFlag,
    check_fit,
    run_episodes,
)

logger = logging.getLogger(__name__)


class Backend(abc.ABC):
    """Where one evaluation's episodes run; a subclass that lacks a method fails when built.

    Args:
        envs: how the envs are made (factory, slots, vectorization, task hook).
        evaluator: the evaluator whose weights are evaluated.
        plan: what each evaluation runs: the settings of each suite, in order.
        device: where the evaluation agent runs.
        settings: the description it was built from
            (:mod:`syllabus_eval.evaluation.backend_settings`).
    """

    #: where weight snapshots are put at trigger time
    weights_device: torch.device

    def __init__(self, envs: EnvSpec, evaluator: AgentQueries | None,
                 plan: tuple[RolloutSettings, ...], *, device: str | torch.device | None = None,
                 settings: BackendSettings | None = None) -> None:
        self.envs = envs

    def snapshot(self, evaluator: AgentQueries | None, weights: Any, step: int | None = None,
                 obs_norm: Any = None, *, background: bool = False) -> Snapshot:
        """The weights (and ``obs_norm``) as they are now, in the form :meth:`run` takes them
        (see :func:`~syllabus_eval.evaluation.snapshot.take_snapshot`): called on the thread that
        triggers, so it costs training what it copies."""
        return take_snapshot(evaluator, weights, self.weights_device, step, obs_norm)

    def release(self, snapshot: Snapshot) -> None:
        """The evaluation on ``snapshot`` is over (its result and callbacks too): what it held
        may be reused."""
        return  # backends whose snapshots hold nothing shared have nothing to free

    @abc.abstractmethod
    def run(self, snapshot: Snapshot, stop: threading.Event,
            on_episode: Callable[[EpisodeRecord], None] | None,
            background: bool) -> list[EpisodeRecord]:
        """The records of one evaluation on ``snapshot`` (in any order: results sort them).

        ``background``: training goes on meanwhile (``trigger_eval``), rather than waiting
        for the result (``evaluate``).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Free what the backend holds (envs, workers); bounded in time."""


class LocalEpisodes:
    """An evaluation agent and the envs of some slots, in this process.

    The envs are built (and checked against the agent) at construction, so that misfits fail
    early, and rebuilt after an evaluation that failed.

    Args:
        envs: how the envs of these slots are made (``envs.num_envs``: as many as ``slots``).
        evaluator: its detached copy (:meth:`~syllabus_eval.Evaluator.detached`) evaluates.
        plan: what each evaluation runs: the settings of each suite, in order.
        num_slots: the evaluation's slots in all (default: ``envs.num_envs``).
        slots: the global indices of the slots run here (default: all ``num_slots``).
        device: where the evaluation agent runs (default: the evaluator's device).
    """

    def __init__(self, envs: EnvSpec, evaluator: AgentQueries,
                 plan: tuple[RolloutSettings, ...], *, num_slots: int | None = None,
                 slots: Sequence[int] | None = None,
                 device: str | torch.device | None = None) -> None:
        # Evaluation runs on its own copy, which training never updates behind its back.
        weighted = isinstance(evaluator, WeightedAgentQueries)
        self.evaluator = evaluator.detached(device) if weighted else evaluator
        # A job without weights evaluates the evaluator's own (a worker's factory's): kept
        # here, since jobs with weights load theirs into the same agent. A copy, not
        # training_agent: a factory may have loaded other weights into its evaluator.
        self._own_weights = None
        if weighted and self.evaluator.agent is not None:
            self._own_weights = (snapshot_state_dict(self.evaluator.agent.state_dict(),
                                                     self.evaluator.device),
                                 self.evaluator.weights_version)
        self._loaded = False  # whether the agent holds weights other than its own
        self.device = torch.device(device if device is not None
                                   else self.evaluator.device if weighted else "cpu")
        self.envs = envs
        self.plan = plan
        self.num_slots = envs.num_envs if num_slots is None else num_slots
        self.slots = list(range(self.num_slots)) if slots is None else list(slots)
        # Whether the envs' NormalizeObservation statistics are no longer a fresh env's: frozen
        # from an earlier evaluation's obs_norm, or moved while one ran without it.
        self._norm_used = False
        self._norm_warned = False
        self._owns_envs = not envs.given  # an instance stays the caller's
        self._envs: EnvPool | gym.vector.VectorEnv | None = self._build_envs()

    def _build_envs(self) -> EnvPool | gym.vector.VectorEnv:
        envs = self.envs.make()
        try:
            check_fit(self.evaluator, envs, self.plan[0].deterministic)
            self._normalizes = normalizes_observations(envs)
        except BaseException:
            self._close_envs(envs)
            raise
        self._norm_used = False
        return envs

    def _close_envs(self, envs: EnvPool | gym.vector.VectorEnv) -> None:
        """Close ``envs`` unless they are the caller's instance; a failure is only logged."""
        if self._owns_envs:
            try:
                envs.close()
            except Exception:
                logger.exception("closing the evaluation envs failed")

    def load(self, weights: Mapping[str, torch.Tensor] | None, version: int | None) -> None:
        """The weights the next episodes run on (``None``: the evaluator's own)."""
        if weights is not None:
            self.evaluator.load_weights(weights, version)
            self._loaded = True
        elif self._loaded and self._own_weights is not None:
            self.evaluator.load_weights(*self._own_weights)
            self._loaded = False

    def run(self, snapshot: Snapshot, stop: StopFlag | None,
            on_episode: Callable[[EpisodeRecord], None] | None = None, *,
            loaded: bool = False) -> list[EpisodeRecord]:
        """The records of this share of one evaluation, each suite of the plan in turn (see
        :func:`~syllabus_eval.run_episodes`), on the snapshot's weights (``loaded``: put in
        with :meth:`load` already)."""
        if not loaded:
            self.load(snapshot.weights, snapshot.version)
        if self._envs is None:
            self._envs = self._build_envs()
        try:
            self._normalize(snapshot.obs_norm)
            return [record for settings in self.plan for record in run_episodes(
                self.evaluator, self._envs, settings, slots=self.slots,
                num_slots=self.num_slots, stop=stop, on_episode=on_episode)]
        except BaseException:
            self.close()  # an env may have broken mid-episode: build fresh ones next time
            raise

    def _normalize(self, stats: ObsNormStats | None) -> None:
        """The snapshot's observation statistics into the envs, frozen. Without any, envs
        that normalise get fresh statistics of their own, as a new runner's would (nothing
        carries over from an earlier evaluation), and a warning (once): those move while they
        evaluate."""
        if stats is not None:
            apply_obs_norm(self._envs, stats)  # without a wrapper to take them: a clear error
        elif self._normalizes and self._norm_used:
            if not self._owns_envs:
                raise ValueError(
                    "obs_norm: expected the training statistics again: an earlier evaluation "
                    "changed the NormalizeObservation statistics of the env instance given as "
                    "envs (froze given ones, or moved its own), and an instance cannot be "
                    "rebuilt fresh; pass obs_norm= to every evaluation, or an env factory as "
                    "envs, got None")
            self.close()
            self._envs = self._build_envs()
        self._norm_used = self._normalizes
        if stats is None and self._normalizes and not self._norm_warned:
            self._norm_warned = True
            warnings.warn(
                "the evaluation envs normalise observations (NormalizeObservation) with "
                "statistics of their own, fresh at each evaluation and moving while it runs: "
                "pass the training envs as obs_norm= when triggering evaluations "
                "(CleanRL PR #556)", RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        envs, self._envs = self._envs, None
        if envs is not None:
            self._close_envs(envs)
