"""What the transports share: the curriculum's side in the process that hosts it
(:class:`CurriculumHost`), and the learner's handle on it (:class:`HostedServer`).

Usage (what a transport does with them)::

    spec = pack_factories(curriculum_fn, init_fn)       # the learner's side, once
    host = CurriculumHost.from_spec(spec)               # in the hosting process
    tasks = host.exchange(records, draws=8, open_envs=set())   # a client's batch
    outcome = attempt(host.call, "task_scores", (), {}) # Outcome: a value or a RemoteFailure
    outcome.unwrap()                                    # back on the learner's side

A hosted curriculum fails the way PLR does: a failure of the curriculum (its scoring worker) is
raised to every env through its client, and to the learner once, by the first server method
that meets it or else by :meth:`HostedServer.close`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
import torch
from torch import nn

from syllabus_eval.errors import CurriculumError, RemoteFailure, bad_argument, check_count
from syllabus_eval.query.weights import versioned_snapshot

from ..curriculum import Experience, TaskSource
from .client import HostedClient

# What the server keeps from the curriculum when it closes, to answer after the host is gone.
FINALS = ("task_scores", "scored_steps", "distribution")


@dataclass(frozen=True)
class Outcome:
    """What a call on the host returns: its value, or the failure it raised (never raised
    there, so that no transport wraps it in errors of its own)."""

    value: Any = None
    failure: RemoteFailure | None = None

    def unwrap(self) -> Any:
        if self.failure is not None:
            raise self.failure.exception(CurriculumError, "the hosted curriculum")
        return self.value


def attempt(fn: Callable[..., Any], *args: Any) -> Outcome:
    try:
        return Outcome(fn(*args))
    except Exception as error:
        return Outcome(failure=RemoteFailure.of(error))


def pack_factories(curriculum_fn: Callable[[], Any], init_fn: Callable[[], Any] | None
                   ) -> bytes:
    """The factories as cloudpickle bytes (lambdas and closures travel with what they hold)."""
    for name, fn in (("curriculum_fn", curriculum_fn), ("init_fn", init_fn)):
        if fn is not None and not callable(fn):
            raise bad_argument(name, "a function that takes no arguments", fn)
    if curriculum_fn is None:
        raise bad_argument("curriculum_fn", "a function that builds the curriculum", None)
    try:
        return cloudpickle.dumps((curriculum_fn, init_fn))
    except Exception as error:
        raise ValueError(f"curriculum_fn: expected a factory that can be pickled (it is built "
                         f"in another process), but pickling it failed: {error!r}; capture "
                         "no open env, lock or training agent in it") from None


class CurriculumHost:
    """The curriculum in the process that hosts it (a worker process, a Ray actor, or this one).

    Thread-safe as far as the curriculum is: clients' batches may come from several threads.
    """

    def __init__(self, curriculum_fn: Callable[[], Any], init_fn: Callable[[], Any] | None
                 ) -> None:
        if init_fn is not None:
            init_fn()  # before the curriculum: devices, env variables, imports
        curriculum = curriculum_fn()
        if not isinstance(curriculum, TaskSource):
            raise bad_argument("curriculum_fn", "a factory returning a curriculum (sample(k), "
                               "observe(experience), wants_experience)", curriculum)
        self.curriculum = curriculum
        self.wants_experience = bool(curriculum.wants_experience)
        self.failure: RemoteFailure | None = None  # the curriculum's, first seen
        self.owner_told = False  # a server method raised it to the learner
        self._following = False
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: bytes) -> CurriculumHost:
        return cls(*cloudpickle.loads(spec))

    def exchange(self, records: Sequence[Experience], draws: int, open_envs: set[Hashable]
                 ) -> list:
        """Draw ``draws`` tasks, then hand a client's records to the curriculum, in order.

        The draw comes first: a client waiting for tasks should not wait for its records too
        (a draw is ahead of its use anyway). ``observe`` blocks while the curriculum is behind
        (PLR's full queue): the back-pressure that reaches the client. ``open_envs`` tracks
        the streams the client left open.
        """
        observe_batch = getattr(self.curriculum, "observe_batch", None)
        try:
            tasks = self.curriculum.sample(draws) if draws else []
            if callable(observe_batch):
                observe_batch(records)  # one hand-over (PLR: one lock, one wake-up)
            else:
                for record in records:
                    self.curriculum.observe(record)
            for record in records:
                if record.kind == "reset":
                    open_envs.add(record.env_id)
                elif record.kind == "close":
                    open_envs.discard(record.env_id)
            return tasks
        except CurriculumError as error:
            self._failed(error)
            raise

    def abandon(self, env_ids: set[Hashable]) -> None:
        """Close the streams of a client that went away without closing them (its process
        died): their open segments are scored as if truncated there."""
        for env_id in list(env_ids):
            with suppress(Exception):  # a closed or failed curriculum: nothing to score
                self.curriculum.observe(Experience("close", env_id))
        env_ids.clear()

    def call(self, name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
             ) -> Any:
        """A public method of the curriculum (``task_scores``, ``flush``, ...)."""
        method = None if name.startswith("_") else getattr(self.curriculum, name, None)
        if name == "flush" and method is None:
            return None  # nothing in the background to wait for
        if not callable(method):
            raise bad_argument("name", f"a public method of {type(self.curriculum).__name__}",
                               name)
        try:
            return method(*args, **(kwargs or {}))
        except CurriculumError as error:
            self._failed(error)
            self.owner_told = True
            raise

    def health(self) -> str | None:
        """The curriculum's failure, if it failed (a background worker's, looked at now)."""
        check = getattr(self.curriculum, "_check", None)
        if self.failure is None and callable(check):
            try:
                check()
            except Exception as error:
                self._failed(error)
        return None if self.failure is None else self.failure.summary

    def take_weights(self, pull: Callable[[], Any], layout: Mapping[str, tuple[int, ...]]
                     ) -> None:
        """Check that weights of ``layout`` fit the curriculum's agent; the first time, have
        the curriculum load what ``pull()`` returns before each batch it scores."""
        self._check_fits(layout)
        with self._lock:
            if self._following:
                return
            sync = getattr(self.curriculum, "sync_weights_from", None)
            if not callable(sync):
                raise ValueError(f"weights: {type(self.curriculum).__name__} takes no weights "
                                 "(it has no sync_weights_from(pull), as PrioritizedLevelReplay "
                                 "has): it does not query the agent")
            sync(pull)
            self._following = True

    def _check_fits(self, layout: Mapping[str, tuple[int, ...]]) -> None:
        agent = getattr(getattr(self.curriculum, "evaluator", None), "agent", None)
        if not isinstance(agent, nn.Module):
            return  # nothing to compare with: the evaluator's load_weights will say
        expected = {name: tuple(t.shape) for name, t in agent.state_dict().items()}
        if expected == dict(layout):
            return
        missing = sorted(set(expected) - set(layout))
        unexpected = sorted(set(layout) - set(expected))
        shapes = [f"{name}: expected {expected[name]}, got {layout[name]}"
                  for name in expected if name in layout and expected[name] != layout[name]]
        raise ValueError(f"weights: do not fit the hosted {type(agent).__name__}: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}, shapes {shapes[:5]}")

    def close(self) -> Outcome:
        """Close the curriculum (PLR scores what it was given); its final tables, and the
        failure the learner has not been told of, if any."""
        failure = None
        close = getattr(self.curriculum, "close", None)
        if callable(close):
            try:
                close()
            except Exception as error:
                failure = RemoteFailure.of(error)
        if failure is None and self.failure is not None and not self.owner_told:
            failure = self.failure
        finals = {}
        for name in FINALS:
            method = getattr(self.curriculum, name, None)
            if callable(method):
                with suppress(Exception):
                    finals[name] = method()
        return Outcome(finals, failure)

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = RemoteFailure.of(error)


def weights_to_push(weights: nn.Module | Mapping[str, torch.Tensor], version: int | None
                    ) -> tuple[dict[str, torch.Tensor], int | None]:
    """A private CPU state dict of ``weights`` and its version: ``version`` if given, else a
    module's optimizer steps (as an evaluator's ``weights_version`` counts them), else
    ``None`` (the scorer's previous version + 1)."""
    if version is not None:
        version = check_count("version", version, 0)
    if not isinstance(weights, (nn.Module, Mapping)):
        raise bad_argument("weights", "an nn.Module or a state dict", weights)
    state_dict, steps = versioned_snapshot(weights, "cpu")
    return state_dict, steps if version is None else version


class HostedServer:
    """The learner's handle on a hosted curriculum; the transports implement the underscored
    methods. Methods raise :class:`~syllabus_eval.CurriculumError` once the host is gone."""

    client: Any

    def __init__(self) -> None:
        self._finals: dict[str, Any] | None = None  # kept at close
        self._closed = False
        self._gone_told = False  # a method raised that the host is gone

    def task_scores(self) -> dict[Hashable, float]:
        """``{task: score}`` of the hosted curriculum (after :meth:`close`: the final ones)."""
        return self._final_or_call("task_scores")

    def scored_steps(self) -> dict[Hashable, int]:
        """``{task: transitions scored}`` of the hosted curriculum."""
        return self._final_or_call("scored_steps")

    def distribution(self) -> np.ndarray:
        """The probability of each task for the next draw: ``[N]``."""
        return self._final_or_call("distribution")

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Any other public method of the hosted curriculum, by name."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed: its curriculum is gone")
        return self._call(name, args, kwargs, None)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the records sent before the call are scored: those this process's
        client holds, and those other clients shipped (a worker process also takes what
        reached its sockets first, and the departure of clients whose process ended).

        Clients in other processes or actors ship theirs in batches: at ``batch_records``,
        at each env's close, or on their own ``client.flush()``.
        """
        if self._closed:
            return  # close() scored everything, as PLR's does
        if isinstance(self.client, HostedClient):
            self.client.flush(timeout)
        self._call("flush", (timeout,), {}, timeout)

    def load_weights(self, weights: nn.Module | Mapping[str, torch.Tensor],
                     version: int | None = None) -> None:
        """Push weights (a module, read between optimizer steps, or a state dict) to the
        scorer: every batch it starts after this returns is scored with them, or newer ones.

        Args:
            weights: the learner's agent or its ``state_dict()``.
            version: reported as the scorer's ``weights_version``; default: a module's
                optimizer steps, or the previous version + 1 for a state dict.
        """
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed: its curriculum is gone")
        self._push(*weights_to_push(weights, version))

    def _final_or_call(self, name: str) -> Any:
        if self._finals is not None and name in self._finals:
            return self._finals[name]
        return self.call(name)

    def _host_gone(self, error: CurriculumError) -> CurriculumError:
        """``error`` (the host died), remembered as told: close() need not raise it again."""
        self._gone_told = True
        return error

    def _close_host(self, close: Callable[[], Outcome]) -> tuple[Outcome, Exception | None]:
        """What closing the host returned, or the error of a host found gone or silent (not
        raised again if a method already said it is gone)."""
        try:
            return close(), None
        except (CurriculumError, TimeoutError) as error:
            told = self._gone_told and isinstance(error, CurriculumError)
            return Outcome(), None if told else error

    def _finish(self, outcome: Outcome, error: Exception | None) -> None:
        """Keep the final tables; raise the failure nobody was told of, if any."""
        self._finals = outcome.value or {}
        if error is not None:
            raise error
        outcome.unwrap()

    def _close_client(self) -> None:
        if isinstance(self.client, HostedClient):
            with suppress(Exception):  # a dead host: close() reports it
                self.client.close()

    def _call(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any],
              timeout: float | None) -> Any:
        raise NotImplementedError

    def _push(self, state_dict: dict[str, torch.Tensor], version: int | None) -> None:
        raise NotImplementedError

    def __enter__(self) -> HostedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError
