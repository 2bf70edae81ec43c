"""Prioritized Level Replay (Jiang, Grefenstette, Rocktäschel, 2021): replay the tasks the agent
has the most to learn from, scored with the training agent's own estimates while it trains.

Usage::

    import gymnasium as gym
    from syllabus_eval.adapters import CleanRLEvaluator
    from syllabus_eval.curricula import CurriculumWrapper, PrioritizedLevelReplay

    evaluator = CleanRLEvaluator(agent)          # queries a private copy of the training agent
    with PrioritizedLevelReplay(200, evaluator, strategy="value_l1", seed=0) as plr:
        envs = gym.vector.SyncVectorEnv(
            [lambda: CurriculumWrapper(make_env(), plr) for _ in range(8)])
        ...                                      # train as usual; every reset samples from plr
        plr.task_scores()                        # {task: score} of the tasks scored so far

How experience flows: each environment's :class:`~syllabus_eval.curricula.CurriculumWrapper`
calls :meth:`PrioritizedLevelReplay.observe` with ``reset``/``step``/``close`` records, which
wait in a bounded queue. The worker thread takes up to ``batch_size`` records at a time
(waiting up to ``batch_wait`` seconds for a batch to fill), asks the evaluator for the value
(and, for the policy strategies, the action distribution) of their observations in one
batched query (for a recurrent agent: one query per step depth, each env's recurrent state
carried over from its previous observation and reset at each episode start), then walks each
env's records in order, cutting its stream into segments: an episode, or ``num_steps`` steps
of a longer one. Every finished segment is scored and updates its task's score. ``observe``
blocks while the queue is full (back-pressure: stepping slows to the scoring rate; no
experience is dropped).

On few cores, the worker's queries and the training loop's intra-op threads compete for the
same cores: for small agents, ``torch.set_num_threads(1)`` keeps PLR's cost to training low
(see ``benchmarks/bench_plr.py``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..advantages import gae
from ..errors import bad_argument, check_count, check_number, describe
from ..evaluator import AgentQueries
from ._util import BackgroundThread
from .curriculum import EXPERIENCE_KINDS, Curriculum, Experience
from .task_space import DiscreteTaskSpace

_STOP = object()  # queued by close(): the worker scores everything before it, then stops


# Value-based scores of a segment from its advantages [T] (PLR, Table 1).
_VALUE_SCORES: dict[str, Callable[[np.ndarray], float]] = {
    # (1/T) sum_t max(A_t, 0)
    "positive_value_loss": lambda advantages: float(np.maximum(advantages, 0.0).mean()),
    # (1/T) sum_t |A_t|
    "value_l1": lambda advantages: float(np.abs(advantages).mean()),
}


def _log_probabilities(extras: dict, strategy: str) -> torch.Tensor:
    """log pi(a | s_t) for every action, from the adapter's ``policy_logits``: ``[B, A]``."""
    logits = extras.get("policy_logits", extras.get("logits"))
    if logits is None:
        given = sorted(key for key in extras if key not in ("lstm_state", "weights_version"))
        raise ValueError(
            f"strategy={strategy!r} needs the policy's action distribution: expected "
            f"'policy_logits' in the evaluator's extras, got extras {given}; use an adapter "
            "that returns logits (e.g. MoolibEvaluator) or a value-based strategy "
            f"{sorted(_VALUE_SCORES)}"
        )
    return torch.log_softmax(logits.float(), dim=-1)


def _entropy(extras: dict, strategy: str) -> torch.Tensor:
    # -sum_a pi(a|s_t) log pi(a|s_t); CleanRL's adapter gives it directly.
    if "entropy" in extras:
        return extras["entropy"]
    log_probs = _log_probabilities(extras, strategy)
    return -(log_probs.exp() * log_probs).sum(-1)


def _least_confidence(extras: dict, strategy: str) -> torch.Tensor:
    # 1 - max_a pi(a|s_t)
    return 1.0 - _log_probabilities(extras, strategy).exp().max(-1).values


def _min_margin(extras: dict, strategy: str) -> torch.Tensor:
    # 1 - (P[1] - P[2]), the margin between the two most likely actions turned into a score that,
    # like the others, is high where the policy is unsure.
    top2 = _log_probabilities(extras, strategy).exp().topk(2, dim=-1).values  # [B, 2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


# Policy-based per-step scores from the query's extras, averaged over a segment (PLR, Table 1).
_POLICY_SCORES: dict[str, Callable[[dict, str], torch.Tensor]] = {
    "policy_entropy": _entropy,
    "least_confidence": _least_confidence,
    "min_margin": _min_margin,
}
STRATEGIES = (*_VALUE_SCORES, *_POLICY_SCORES)
SCORE_TRANSFORMS = ("rank", "power")
REPLAY_SCHEDULES = ("proportionate", "fixed")


@dataclass(slots=True)
class _Segment:
    """The open segment of one env's stream: ``T`` steps need ``T + 1`` observations."""

    task: Any
    values: list[float]  # V(s_0 .. s_t)
    terms: list[float]  # per-observation policy scores (policy strategies)
    rewards: list[float]  # r_0 .. r_{t-1}


class PrioritizedLevelReplay(Curriculum):
    """Prioritized Level Replay over a discrete task space, scored by a worker thread.

    Args:
        task_space: a :class:`DiscreteTaskSpace`, a number of tasks or a sequence of tasks.
        evaluator: any object with the Evaluator's query methods
            (:class:`~syllabus_eval.AgentQueries`). Recurrent ones (``is_lstm=True``) also
            need ``initial_lstm_state(batch_size)``.
        strategy: the score of a segment: ``"value_l1"`` (mean absolute GAE, the paper's
            best), ``"positive_value_loss"`` (mean positive GAE), ``"policy_entropy"``,
            ``"least_confidence"`` or ``"min_margin"``. The last two need ``policy_logits`` in
            the evaluator's extras; entropy takes ``entropy`` or ``policy_logits``.
        gamma: discount factor of the GAE.
        gae_lambda: lambda of the GAE.
        score_transform: ``"rank"`` (h = 1 / rank) or ``"power"`` (h = score), PLR Eq. 1.
        temperature: beta of PLR Eq. 1: P_S ∝ h^(1/beta); higher is more uniform.
        staleness_coef: rho of PLR Eq. 3, the weight of the staleness distribution.
        replay_prob: p, the probability of replaying a seen task while unseen tasks remain.
        replay_schedule: ``"proportionate"`` replays with probability min(p, fraction of
            tasks seen), ``"fixed"`` with p.
        score_alpha: a new segment score S updates a task's score as
            ``(1 - alpha) * old + alpha * S`` (1: the latest score, as in the paper).
        num_steps: the longest segment; longer episodes are scored every ``num_steps`` steps,
            bootstrapping from the value of the observation they stop at. It plays the part of
            the rollout length in the paper's code, where each rollout scores the piece of an
            episode it saw: each piece updates the task's score when it ends, the last one too
            however short (``score_alpha < 1`` averages pieces instead).
        batch_size: the most records the worker takes for one batched query.
        batch_wait: seconds the worker waits, after a first record, for more to fill its
            batch: a query per few records would cost the training loop more time (the
            worker's Python code holds the GIL) than a query per batch.
        queue_size: the most records waiting; :meth:`observe` blocks while it is full.
        seed: seeds the sampler.

    The worker thread starts at construction. :meth:`close` (or leaving a ``with`` block)
    scores every record observed before it, scores the open segments as if truncated there,
    and stops the worker. A failure in the worker is raised, as
    :class:`~syllabus_eval.EvaluationError` chained to the original exception, from the next
    :meth:`observe`, :meth:`sample`, :meth:`flush` or :meth:`close`.
    """

    wants_experience = True

    def __init__(
        self,
        task_space: DiscreteTaskSpace | int | Sequence[Hashable],
        evaluator: AgentQueries,
        *,
        strategy: str = "value_l1",
        gamma: float = 0.999,
        gae_lambda: float = 0.95,
        score_transform: str = "rank",
        temperature: float = 0.1,
        staleness_coef: float = 0.1,
        replay_prob: float = 0.95,
        replay_schedule: str = "proportionate",
        score_alpha: float = 1.0,
        num_steps: int = 256,
        batch_size: int = 256,
        batch_wait: float = 0.02,
        queue_size: int = 4096,
        seed: int | None = None,
    ) -> None:
        super().__init__(task_space, seed=seed)
        if not isinstance(evaluator, AgentQueries):
            raise bad_argument("evaluator", "an object with the Evaluator's methods "
                               "(get_action, get_value, get_action_and_value)", evaluator)
        for name, value, valid in (("strategy", strategy, STRATEGIES),
                                   ("score_transform", score_transform, SCORE_TRANSFORMS),
                                   ("replay_schedule", replay_schedule, REPLAY_SCHEDULES)):
            if value not in valid:
                raise bad_argument(name, f"one of {list(valid)}", value)
        self.recurrent = bool(getattr(evaluator, "is_lstm", False))
        if self.recurrent and not callable(getattr(evaluator, "initial_lstm_state", None)):
            raise bad_argument("evaluator", "initial_lstm_state(batch_size) on a recurrent "
                               "evaluator (is_lstm=True)", evaluator)
        self.evaluator = evaluator
        self.strategy = strategy
        self.gamma = check_number("gamma", gamma, 0.0, 1.0)
        self.gae_lambda = check_number("gae_lambda", gae_lambda, 0.0, 1.0)
        self.score_transform = score_transform
        self.temperature = check_number("temperature", temperature, 0.0, low_open=True)
        self.staleness_coef = check_number("staleness_coef", staleness_coef, 0.0, 1.0)
        self.replay_prob = check_number("replay_prob", replay_prob, 0.0, 1.0)
        self.replay_schedule = replay_schedule
        self.score_alpha = check_number("score_alpha", score_alpha, 0.0, 1.0, low_open=True)
        self.num_steps = check_count("num_steps", num_steps)
        self.batch_size = check_count("batch_size", batch_size)
        self.batch_wait = check_number("batch_wait", batch_wait, 0.0)
        self._policy_score = _POLICY_SCORES.get(strategy)
        self._lstm_dim = getattr(evaluator, "lstm_batch_dim", 1)

        count = len(self.task_space)
        self._scores = np.zeros(count)  # S_i
        self._seen = np.zeros(count, dtype=bool)
        self._steps = np.zeros(count, dtype=np.int64)  # transitions scored per task
        self._draws = 0  # c: tasks drawn so far
        self._last_drawn = np.zeros(count, dtype=np.int64)  # C_i: c when task i was last drawn

        # Worker-thread state: the open segment and recurrent state of each env.
        self._segments: dict[Hashable, _Segment] = {}
        self._lstm: dict[Hashable, tuple[torch.Tensor, ...]] = {}

        self._queue: queue.Queue = queue.Queue(check_count("queue_size", queue_size))
        self._cond = threading.Condition()  # guards the counters below
        self._closed = False
        self._putting = 0  # observe() calls between their closed-check and their put
        self._received = 0  # records queued
        self._processed = 0  # records the worker has finished with
        self._worker = BackgroundThread(self._run, "PrioritizedLevelReplay worker")

    # --- producers -----------------------------------------------------------------------------

    def observe(self, experience: Experience) -> None:
        """Queue one record of an environment's stream for the worker (thread-safe).

        Blocks while ``queue_size`` records wait (back-pressure); raises the worker's failure
        if it failed, and ``RuntimeError`` once closed (``close`` records are then ignored:
        :meth:`close` already scored what their envs played).
        """
        if not isinstance(experience, Experience):
            raise bad_argument("experience", "an Experience record", experience)
        if experience.kind not in EXPERIENCE_KINDS:
            raise bad_argument("experience.kind", f"one of {list(EXPERIENCE_KINDS)}",
                               experience.kind)
        if not isinstance(experience.env_id, Hashable):
            raise bad_argument("experience.env_id", "a hashable env id", experience.env_id)
        if experience.kind == "reset":
            self.task_space.index(experience.task, "experience.task")
        with self._cond:
            if self._closed:
                if experience.kind == "close":
                    return  # an env closed after the curriculum: close() scored its segment
                raise RuntimeError("PrioritizedLevelReplay is closed: it takes no more "
                                   "experience")
            self._putting += 1
        queued = False
        try:
            self._worker.check()
            queued = self._worker.feed(self._queue, experience)
            self._worker.check()  # it ended before taking the record: it failed
        finally:
            with self._cond:
                self._putting -= 1
                self._received += queued
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record observed before this call has been scored.

        Raises:
            EvaluationError: the worker failed.
            TimeoutError: ``timeout`` seconds passed first.
        """
        with self._cond:
            target = self._received
            done = self._cond.wait_for(
                lambda: self._processed >= target or self._worker.error is not None
                or not self._worker.alive, timeout)
        self._worker.check()
        if not done:
            raise TimeoutError(f"flush: {target - self._processed} records still unscored "
                               f"after {timeout} s")

    def close(self) -> None:
        """Score everything observed so far, then stop the worker (idempotent)."""
        with self._cond:
            first = not self._closed
            self._closed = True
            self._cond.wait_for(lambda: self._putting == 0)
        if first:
            self._worker.feed(self._queue, _STOP)
        self._worker.join()

    # --- scores and sampling ---------------------------------------------------------------------

    def update_score(self, task: Hashable, score: float) -> None:
        """Record a score for ``task`` computed elsewhere, as the worker does for a segment."""
        self._record(self.task_space.index(task), check_number("score", score, -np.inf), 0)

    def task_scores(self) -> dict[Hashable, float]:
        """``{task: S}`` for every task scored so far."""
        with self._lock:
            return {self.task_space.tasks[i]: float(self._scores[i])
                    for i in np.flatnonzero(self._seen)}

    def scored_steps(self) -> dict[Hashable, int]:
        """``{task: transitions scored}`` for every task with scored transitions."""
        with self._lock:
            return {self.task_space.tasks[i]: int(self._steps[i])
                    for i in np.flatnonzero(self._steps)}

    def replay_distribution(self) -> np.ndarray:
        """P_replay over the tasks (PLR Eq. 3), 0 for unseen tasks: ``[N]``."""
        with self._lock:
            replay = np.zeros(len(self.task_space))
            seen = np.flatnonzero(self._seen)
            if len(seen) == 0:
                return replay
            scores = self._scores[seen]
            if self.score_transform == "rank":
                # h(S_i) = 1 / rank(S_i) among the seen tasks, rank 1 the highest score (ties
                # keep task-space order).
                order = np.argsort(-scores, kind="stable")
                ranks = np.empty(len(seen))
                ranks[order] = np.arange(1, len(seen) + 1)
                h = 1.0 / ranks
            else:
                h = np.maximum(scores, 0.0)  # h(S_i) = S_i
            if h.max() > 0:
                h = h / h.max()  # the same P_S, without overflow in h^(1/beta)
            # Eq. 1: P_S(l_i) = h(S_i)^(1/beta) / sum_j h(S_j)^(1/beta)
            p_score = _normalized(h ** (1.0 / self.temperature))
            # Eq. 2: P_C(l_i) = (c - C_i) / sum_j (c - C_j)
            p_stale = _normalized((self._draws - self._last_drawn[seen]).astype(np.float64))
            # Eq. 3: P_replay = (1 - rho) P_S + rho P_C
            replay[seen] = ((1.0 - self.staleness_coef) * p_score
                            + self.staleness_coef * p_stale)
            return replay

    def distribution(self) -> np.ndarray:
        """The probability of each task for the next draw: ``[N]``.

        PLR first decides to replay (a seen task, from P_replay) or not (an unseen task,
        uniformly); this is that two-stage draw as one mixture.
        """
        with self._lock:
            count, seen = len(self.task_space), int(self._seen.sum())
            unseen = np.zeros(count) if seen == count else (~self._seen) / (count - seen)
            if seen == 0:
                return unseen
            replay = 1.0
            if seen < count:
                replay = self.replay_prob
                if self.replay_schedule == "proportionate":
                    replay = min(replay, seen / count)
            return replay * self.replay_distribution() + (1.0 - replay) * unseen

    def _sampled(self, index: int) -> None:
        self._draws += 1
        self._last_drawn[index] = self._draws

    def _check(self) -> None:
        self._worker.check()

    def _record(self, index: int, score: float, steps: int) -> None:
        with self._lock:
            if self._seen[index]:
                score = (1.0 - self.score_alpha) * self._scores[index] + self.score_alpha * score
            self._scores[index] = score
            self._seen[index] = True
            self._steps[index] += steps

    # --- the worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                batch, stop = self._take_batch()
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

    def _take_batch(self) -> tuple[list[Experience], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        if self._queue.qsize() < self.batch_size - 1:
            # One sleep rather than a wake-up per record: each wake-up takes the GIL from the
            # training thread.
            time.sleep(self.batch_wait)
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _process(self, batch: list[Experience]) -> None:
        with_obs = [record for record in batch if record.kind != "close"]
        if not with_obs:
            values = terms = []
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

    def _evaluate_recurrent(self, records: list[Experience]) -> tuple[list, list]:
        """Query depth by depth: the d-th records of all envs in one batch, in stream order."""
        positions: dict[Hashable, list[int]] = {}
        for i, record in enumerate(records):
            positions.setdefault(record.env_id, []).append(i)
        values, terms = [0.0] * len(records), [0.0] * len(records)
        for depth in range(max(map(len, positions.values()))):
            layer = [ids[depth] for ids in positions.values() if len(ids) > depth]
            states = []
            for i in layer:
                record = records[i]
                if record.kind == "reset":  # episode start: fresh state, and done = 1 below
                    states.append(self.evaluator.initial_lstm_state(1))
                elif record.env_id in self._lstm:
                    states.append(self._lstm[record.env_id])
                else:
                    raise _step_before_reset(record.env_id)
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
            cut_short = self._segments.get(env_id)
            if cut_short is not None:  # reset mid-episode: score as truncated there
                self._score(cut_short, terminated=False)
            self._segments[env_id] = _Segment(record.task, [value], [term], [])
            return
        segment = self._segments.get(env_id)
        if segment is None:
            raise _step_before_reset(env_id)
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
            bootstrap = 0.0 if terminated else segment.values[-1]
            advantages = gae(segment.rewards, segment.values[:-1], bootstrap, self.gamma,
                             self.gae_lambda)  # [T]
            score = _VALUE_SCORES[self.strategy](advantages)
        else:
            score = float(np.mean(segment.terms[:-1]))  # s_0 .. s_{T-1}: where actions were taken
        self._record(self.task_space.index(segment.task), score, steps)


def _normalized(weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    return weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))


def _step_before_reset(env_id: Hashable) -> ValueError:
    return ValueError(f"experience: env {env_id!r} sent a step before a reset (every episode, "
                      "and every stream after a terminal step, starts with a reset record)")
