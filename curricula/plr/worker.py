"""PLR's scoring worker: a thread that batches experience, queries the agent and scores segments.

Usage (what :class:`~syllabus_eval.curricula.PrioritizedLevelReplay` does with it)::

    worker = ScoringWorker(evaluator, table, task_space, strategy="value_l1", gamma=0.999,
                           gae_lambda=0.95, num_steps=256, batch_size=256, batch_wait=0.02,
                           queue_size=4096)
    worker.put(Experience("reset", env_id=0, task="a", obs=obs))   # from any env's thread
    worker.put_many(records)                                        # a batch: one hand-over
    worker.flush()                                                  # all put so far is scored
    worker.close()

Records wait in a bounded queue, in the chunks they were put in (a hosted curriculum's client
batch is one chunk: one lock and one wake-up, not one per record). The worker thread takes up to
``batch_size`` records at a time (waiting up to ``batch_wait`` seconds for a batch to fill) and
asks the evaluator for the value (and, for the policy strategies, the action distribution) of
their observations in one batched query. For a recurrent agent that is one sequence query
(:class:`~syllabus_eval.SequenceQueries`): each env's records in the batch are its sequence
(shorter ones padded, their lengths given), its recurrent state carried from its previous
observation through them and restarted at each episode start; agents without sequence queries
get one query per step depth. Then it walks each env's records in order, cutting its stream into
segments: an episode, or ``num_steps`` steps of a longer one. Every finished segment is scored
and updates its task's score in the :class:`~syllabus_eval.curricula.plr.scores.TaskScores`
table. :meth:`ScoringWorker.put` blocks while the queue is full (back-pressure: stepping slows
to the scoring rate; no experience is dropped).

Only finite numbers are scored (issue #19): a NaN or inf reward, a non-finite value or policy
score from the agent (an inf observation gives one) or a segment score that overflows fails the
worker with a ``ValueError`` naming the env, its task and the number, and the table keeps what it
had.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from syllabus_eval.errors import describe
from syllabus_eval.query.advantages import gae
from syllabus_eval.query.protocols import AgentQueries, SequenceQueries, is_recurrent

from ..background import POLL_S, BackgroundThread
from ..curriculum import Experience
from ..task_space import DiscreteTaskSpace
from .scores import POLICY_SCORES, TD_SCORES, VALUE_SCORES, TaskScores, one_step_td_errors

# () -> (state_dict, version) of weights pushed since the last call, or None: nothing new.
PullWeights = Callable[[], "tuple[Mapping[str, torch.Tensor], int | None] | None"]


@dataclass(slots=True)
class _Segment:
    """The open segment of one env's stream: ``T`` steps need ``T + 1`` observations."""

    task: Any
    values: list[float]  # V(s_0 .. s_t)
    terms: list[float]  # per-observation policy scores (policy strategies)
    rewards: list[float]  # r_0 .. r_{t-1}


class ScoringWorker:
    """The scoring thread of one PLR curriculum and the queue that feeds it (module docs).

    Args:
        evaluator: answers ``get_value`` (and ``get_action_and_value`` for the policy
            strategies); recurrent ones meet :class:`~syllabus_eval.RecurrentAgentQueries`.
        table: where segment scores go.
        task_space: the tasks, to index segments' tasks in ``table``.
        strategy, gamma, gae_lambda, num_steps, batch_size, batch_wait, queue_size: as
            :class:`~syllabus_eval.curricula.PrioritizedLevelReplay` documents them.

    The thread starts at construction. A failure in it is raised, as
    :class:`~syllabus_eval.CurriculumError` chained to the original, by :meth:`check` and by
    every method after it, except :meth:`put` of a ``close`` record (see there) and a
    :meth:`close` after it was reported.
    """

    def __init__(self, evaluator: AgentQueries, table: TaskScores,
                 task_space: DiscreteTaskSpace, *, strategy: str, gamma: float,
                 gae_lambda: float, num_steps: int, batch_size: int, batch_wait: float,
                 queue_size: int) -> None:
        self.evaluator = evaluator
        self.recurrent = is_recurrent(evaluator)
        self.table, self.task_space = table, task_space
        self.strategy, self.gamma, self.gae_lambda = strategy, gamma, gae_lambda
        self.num_steps, self.batch_size, self.batch_wait = num_steps, batch_size, batch_wait
        self._policy_score = POLICY_SCORES.get(strategy)
        self._lstm_dim = evaluator.lstm_batch_dim if self.recurrent else 1
        self._sequences = self.recurrent and isinstance(evaluator, SequenceQueries)
        # Set by PrioritizedLevelReplay.sync_weights_from: weights pushed from elsewhere.
        self.pull_weights: PullWeights | None = None

        # Thread state: the open segment and recurrent state of each env.
        self._segments: dict[Hashable, _Segment] = {}
        self._lstm: dict[Hashable, tuple[torch.Tensor, ...]] = {}

        # The queue: chunks of records, bounded by the records they hold.
        self.queue_size = queue_size
        self._chunks: deque[list[Experience]] = deque()
        self._waiting = 0  # records in the chunks
        self._stopping = False  # set by close(): score what is queued, then stop
        self._hurry = 0  # flush() calls waiting: take what is queued, full batch or not
        queue_lock = threading.Lock()  # guards the queue; its two conditions:
        self._filled = threading.Condition(queue_lock)  # the thread waits for records
        self._freed = threading.Condition(queue_lock)  # producers wait for room
        self._cond = threading.Condition()  # guards the counters below
        self._closed = False
        self._putting = 0  # put() calls between their closed-check and their put
        self._received = 0  # records queued
        self._processed = 0  # records the thread has finished with
        self._thread = BackgroundThread(self._run, "PrioritizedLevelReplay worker")

    # --- the callers' side -----------------------------------------------------------------------

    def put(self, experience: Experience) -> None:
        """Queue a checked record; blocks while the queue is full (see the curriculum's
        ``observe``).

        A ``close`` record never raises the thread's failure: the env is going away with
        nothing left to score, and raising from every env's ``close`` would stop a vector
        env at its first sub-env (issue #19). The failure stays for the next call that needs
        the worker, or for :meth:`close`.
        """
        self._put([experience], experience.kind == "close")

    def put_many(self, records: Sequence[Experience]) -> None:
        """Queue checked records, in order, as one chunk; blocks while the queue has no room
        for them (a chunk larger than the queue waits until it is empty). A chunk of only
        ``close`` records raises no failure (see :meth:`put`)."""
        if records:
            self._put(list(records), all(record.kind == "close" for record in records))

    def _put(self, chunk: list[Experience], closing: bool) -> None:
        with self._cond:
            if self._closed:
                if closing:
                    return  # envs closed after the curriculum: close() scored their segments
                raise RuntimeError("PrioritizedLevelReplay is closed: it takes no more "
                                   "experience")
            self._putting += 1
        queued = False
        try:
            if not closing:
                self._thread.check()
            queued = self._enqueue(chunk)
            if not closing:
                self._thread.check()  # it ended before taking the records: it failed
        finally:
            with self._cond:
                self._putting -= 1
                self._received += len(chunk) if queued else 0
                self._cond.notify_all()

    def _enqueue(self, chunk: list[Experience]) -> bool:
        """Append ``chunk`` once there is room; ``False`` if the thread ended first (a wait
        re-checks every few milliseconds, so a thread that died cannot leave it blocked)."""
        with self._freed:
            while self._waiting and self._waiting + len(chunk) > self.queue_size:
                if not self._thread.alive:
                    return False
                self._freed.wait(POLL_S)
            if not self._thread.alive:
                return False
            before = self._waiting
            self._chunks.append(chunk)
            self._waiting += len(chunk)
            # Wake the thread only where it may wait: for a first record, or for a full batch
            # (a wake-up per record would take the GIL from a training thread each time).
            if before == 0 or before < self.batch_size <= self._waiting:
                self._filled.notify()
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record put before this call has been scored (the thread takes
        what is queued at once, without waiting ``batch_wait`` for a full batch)."""
        with self._filled:
            self._hurry += 1
            self._filled.notify()
        try:
            with self._cond:
                target = self._received
                done = self._cond.wait_for(
                    lambda: self._processed >= target or self._thread.error is not None
                    or not self._thread.alive, timeout)
        finally:
            with self._filled:
                self._hurry -= 1
        self._thread.check()
        if not done:
            raise TimeoutError(f"flush: {target - self._processed} records still unscored "
                               f"after {timeout} s")

    def close(self) -> None:
        """Score everything put so far, then stop the thread (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._putting == 0)
        with self._filled:
            self._stopping = True
            self._filled.notify()
        self._thread.join()

    def check(self) -> None:
        """Raise the thread's failure, if it failed."""
        self._thread.check()

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                batch, stop = self._take_batch()
                if batch and self.pull_weights is not None:
                    self._load_pushed_weights()
                self._process(batch)
                with self._cond:
                    self._processed += len(batch)
                    self._cond.notify_all()
            for segment in self._segments.values():
                self._score(segment, terminated=False)
            self._segments.clear()
        finally:
            with self._cond:
                self._cond.notify_all()  # wake flush() callers, also when failing

    def _load_pushed_weights(self) -> None:
        # Before every batch, so that a batch started after a push is scored with it or newer.
        pushed = self.pull_weights()
        if pushed is not None:
            state_dict, version = pushed
            self.evaluator.load_weights(state_dict, version=version)

    def _take_batch(self) -> tuple[list[Experience], bool]:
        """Up to ``batch_size`` records, oldest first, and whether to stop after them."""
        with self._filled:
            self._filled.wait_for(lambda: self._waiting or self._stopping)
            # Up to batch_wait for a full batch: one query for many records.
            self._filled.wait_for(lambda: self._waiting >= self.batch_size or self._stopping
                                  or self._hurry, self.batch_wait)
            batch: list[Experience] = []
            while self._chunks and len(batch) < self.batch_size:
                chunk = self._chunks.popleft()
                room = self.batch_size - len(batch)
                if len(chunk) > room:
                    self._chunks.appendleft(chunk[room:])
                    chunk = chunk[:room]
                batch.extend(chunk)
            self._waiting -= len(batch)
            self._freed.notify_all()
            return batch, self._stopping and not self._chunks

    def _process(self, batch: list[Experience]) -> None:
        with_obs = [record for record in batch if record.kind != "close"]
        if not with_obs:
            values = terms = []
        elif self._sequences:
            values, terms = self._evaluate_sequences(with_obs)
        elif self.recurrent:
            values, terms = self._evaluate_recurrent(with_obs)
        else:
            values, terms, _ = self._query([record.obs for record in with_obs], None, None)
        outputs = iter(zip(values, terms))
        for record in batch:
            if record.kind == "close":
                segment = self._segments.pop(record.env_id, None)
                if segment is not None:
                    self._score(segment, terminated=False)
            else:
                self._advance(record, *next(outputs))
        for env_id, kind in {record.env_id: record.kind for record in batch}.items():
            if kind == "close":
                self._lstm.pop(env_id, None)

    def _evaluate_sequences(self, records: list[Experience]) -> tuple[list, list]:
        """One sequence query: each env's records in the batch as its ``[T, B]`` sequence
        (shorter ones padded with their last observation, and their lengths given), each from
        its carried state."""
        positions: dict[Hashable, list[int]] = {}
        for i, record in enumerate(records):
            positions.setdefault(record.env_id, []).append(i)
        env_ids = list(positions)
        lengths = [len(positions[env_id]) for env_id in env_ids]  # [B]
        steps = max(lengths)
        grid = [[records[i] for i in positions[env_id]] for env_id in env_ids]  # [B][T_b]
        states = [self._start_state(column[0]) for column in grid]
        lstm_state = tuple(torch.cat(parts, dim=self._lstm_dim) for parts in zip(*states))
        obs = _stack_time_major([[column[min(t, len(column) - 1)].obs for column in grid]
                                 for t in range(steps)])
        done = np.array([[float(t < len(column) and column[t].kind == "reset")
                          for column in grid] for t in range(steps)], dtype=np.float32)
        value, extras = self.evaluator.get_value_sequence(
            obs, lstm_state, done, lengths=lengths, policy=self._policy_score is not None)
        # [B][T] as Python floats: one conversion, not one per element
        value = torch.as_tensor(value).reshape(steps, len(env_ids)).float().cpu().T.tolist()
        term = None
        if self._policy_score is not None:
            flat = {key: item.flatten(0, 1) for key, item in extras.items()
                    if isinstance(item, torch.Tensor) and item.dim() >= 2}
            term = self._policy_score(flat, self.strategy).reshape(steps, -1).float().cpu(
                ).T.tolist()
        values, terms = [0.0] * len(records), [0.0] * len(records)
        next_state = extras.get("lstm_state")
        for j, env_id in enumerate(env_ids):
            for t, i in enumerate(positions[env_id]):
                values[i] = value[j][t]
                terms[i] = 0.0 if term is None else term[j][t]
            self._lstm[env_id] = tuple(part.narrow(self._lstm_dim, j, 1) for part in next_state)
        return values, terms

    def _start_state(self, record: Experience) -> tuple[torch.Tensor, ...]:
        """The recurrent state before ``record``: fresh at an episode start, else carried."""
        if record.kind == "reset":
            return self.evaluator.initial_lstm_state(1)
        if record.env_id not in self._lstm:
            raise _step_before_reset(record.env_id)
        return self._lstm[record.env_id]

    def _evaluate_recurrent(self, records: list[Experience]) -> tuple[list, list]:
        """Query depth by depth: the d-th records of all envs in one batch, in stream order."""
        positions: dict[Hashable, list[int]] = {}
        for i, record in enumerate(records):
            positions.setdefault(record.env_id, []).append(i)
        values, terms = [0.0] * len(records), [0.0] * len(records)
        for depth in range(max(map(len, positions.values()))):
            layer = [ids[depth] for ids in positions.values() if len(ids) > depth]
            states = [self._start_state(records[i]) for i in layer]  # reset: done = 1 below
            lstm_state = tuple(torch.cat(parts, dim=self._lstm_dim) for parts in zip(*states))
            done = torch.tensor([float(records[i].kind == "reset") for i in layer])  # [B]
            layer_values, layer_terms, next_state = self._query(
                [records[i].obs for i in layer], lstm_state, done)
            for j, i in enumerate(layer):
                values[i], terms[i] = layer_values[j], layer_terms[j]
                self._lstm[records[i].env_id] = tuple(
                    part.narrow(self._lstm_dim, j, 1) for part in next_state)
        return values, terms

    def _query(self, obs: list, lstm_state: Any, done: Any) -> tuple[list, list, Any]:
        """Values ``[B]`` and per-step policy scores ``[B]`` of a batch of observations."""
        if self._policy_score is None:
            value, extras = self.evaluator.get_value(obs, lstm_state, done)
        else:
            _, value, extras = self.evaluator.get_action_and_value(obs, lstm_state, done)
        value = torch.as_tensor(value)
        if value.numel() != len(obs):
            raise ValueError(f"evaluator.get_value: expected one value per observation "
                             f"([{len(obs)}, 1]), got {describe(value)}")
        values = value.reshape(-1).float().cpu().tolist()
        if self._policy_score is None:
            return values, [0.0] * len(obs), extras.get("lstm_state")
        terms = self._policy_score(extras, self.strategy).reshape(-1).float().cpu().tolist()
        return values, terms, extras.get("lstm_state")

    def _advance(self, record: Experience, value: float, term: float) -> None:
        """Extend the env's open segment by one record; score it when it ends."""
        env_id = record.env_id
        if record.kind == "reset":
            _require_finite(record, record.task, self.strategy, value, term)
            cut_short = self._segments.get(env_id)
            if cut_short is not None:  # reset mid-episode: score as truncated there
                self._score(cut_short, terminated=False)
            self._segments[env_id] = _Segment(record.task, [value], [term], [])
            return
        segment = self._segments.get(env_id)
        if segment is None:
            raise _step_before_reset(env_id)
        _require_finite(record, segment.task, self.strategy, value, term)
        segment.rewards.append(float(record.reward))
        segment.values.append(value)
        segment.terms.append(term)
        if record.terminated or record.truncated:
            self._score(segment, terminated=bool(record.terminated))
            del self._segments[env_id]
        elif len(segment.rewards) == self.num_steps:
            self._score(segment, terminated=False)
            self._segments[env_id] = _Segment(segment.task, [value], [term], [])

    def _score(self, segment: _Segment, terminated: bool) -> None:
        steps = len(segment.rewards)
        if steps == 0:
            return
        if self._policy_score is None:
            # V(s_T): bootstrapped where the segment was cut short (a time limit, num_steps,
            # a reset mid-episode), 0 only where s_T is terminal.
            bootstrap = 0.0 if terminated else segment.values[-1]
            if self.strategy in TD_SCORES:
                td_errors = one_step_td_errors(segment.rewards, segment.values[:-1], bootstrap,
                                               self.gamma)  # [T]
                score = TD_SCORES[self.strategy](td_errors)
            else:
                advantages = gae(segment.rewards, segment.values[:-1], bootstrap, self.gamma,
                                 self.gae_lambda)  # [T]
                score = VALUE_SCORES[self.strategy](advantages)
        else:
            score = float(np.mean(segment.terms[:-1]))  # s_0 .. s_{T-1}: where actions were taken
        if not math.isfinite(score):  # finite inputs can still overflow (rewards near 1e308)
            raise ValueError(f"the {self.strategy} score of a {steps}-step segment of task "
                             f"{segment.task!r} is {score}: its rewards or values overflow")
        self.table.record(self.task_space.index(segment.task), score, steps)


def _require_finite(record: Experience, task: Any, strategy: str, value: float, term: float
                    ) -> None:
    """Fail on a NaN or inf the segment would be scored with (issue #19): in the table it
    would turn the task's score NaN and, with the power transform, every draw uniform."""
    reward = float(record.reward)
    if math.isfinite(reward) and math.isfinite(value) and math.isfinite(term):
        return  # the common case: no message to build
    where = f"env {record.env_id!r} (task {task!r}) at a {record.kind}"
    if not math.isfinite(reward):
        raise ValueError(f"experience.reward: expected a finite number, got {reward} from "
                         f"{where}")
    for name, number in (("value", value), (f"{strategy} score", term)):
        if not math.isfinite(number):
            cause = ("its observation holds NaN or inf" if not _all_finite(record.obs)
                     else "the agent's weights or outputs are not finite")
            raise ValueError(f"the agent's {name} of the observation of {where} is {number}: "
                             f"{cause}")


def _all_finite(obs: Any) -> bool:
    """Whether every number of an observation (arrays, or dicts and tuples of them) is finite."""
    if isinstance(obs, dict):
        return all(_all_finite(item) for item in obs.values())
    if isinstance(obs, tuple):
        return all(_all_finite(item) for item in obs)
    array = np.asarray(obs)
    return not np.issubdtype(array.dtype, np.inexact) or bool(np.isfinite(array).all())


def _step_before_reset(env_id: Hashable) -> ValueError:
    return ValueError(f"experience: env {env_id!r} sent a step before a reset (every episode, "
                      "and every stream after a terminal step, starts with a reset record)")


def _stack_time_major(obs: list[list[Any]]) -> Any:
    """``[T][B]`` observations (arrays, or dicts of them) as ``[T, B, ...]`` arrays."""
    first = obs[0][0]
    if isinstance(first, dict):
        return {key: _stack_time_major([[item[key] for item in row] for row in obs])
                for key in first}
    return np.stack([np.stack([np.asarray(item) for item in row]) for row in obs])
