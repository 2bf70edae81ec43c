"""The ``"thread"`` backend: episodes in the runner's own thread, beside training.

Usage::

    runner = EvalRunner(make_env, evaluator, backend="thread")   # or ThreadBackend()

The evaluation shares the GIL with training. A background evaluation pauses a moment before
each env step (``time.sleep(0)``): without it, each time the training thread releases the GIL
for a torch call it may wait up to ``sys.getswitchinterval()`` (5 ms) to get it back from the
episode loop, which slowed the benchmark's PPO loop about 4x; the pause lets it take the GIL
back at once, for a slower evaluation. Blocking evaluations run at full speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from syllabus_eval.evaluation.backend_settings import BackendSettings
from syllabus_eval.evaluation.backends.base import Backend, LocalEpisodes
from syllabus_eval.evaluation.snapshot import Snapshot
from syllabus_eval.query.protocols import AgentQueries
from syllabus_eval.rollout import EnvSpec, EpisodeRecord, RolloutSettings


class ThreadEngine(Backend):
    """Runs the episode loop in the runner's daemon thread, on a detached copy of the agent."""

    def __init__(self, envs: EnvSpec, evaluator: AgentQueries,
                 plan: tuple[RolloutSettings, ...], *, device: str | torch.device | None = None,
                 settings: BackendSettings | None = None) -> None:
        super().__init__(envs, evaluator, plan, device=device, settings=settings)
        self.episodes = LocalEpisodes(envs, evaluator, plan, device=device)
        self.weights_device = self.episodes.device

    def run(self, snapshot: Snapshot, stop: threading.Event,
            on_episode: Callable[[EpisodeRecord], None] | None,
            background: bool) -> list[EpisodeRecord]:
        return self.episodes.run(snapshot, _YieldingStop(stop) if background else stop,
                                 on_episode)

    def close(self) -> None:
        self.episodes.close()


class _YieldingStop:
    """The stop flag of a background evaluation: asking it lets the training thread have the
    GIL (module docs). The episode loop asks it once before every step."""

    __slots__ = ("_event",)

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def is_set(self) -> bool:
        time.sleep(0)
        return self._event.is_set()
