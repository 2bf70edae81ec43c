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
calls :meth:`PrioritizedLevelReplay.observe` with ``reset``/``step``/``close`` records; the
scoring worker (:mod:`~syllabus_eval.curricula.plr.worker`) batches them, queries the agent
and scores each finished segment into the score table
(:mod:`~syllabus_eval.curricula.plr.scores`), from which :meth:`~PrioritizedLevelReplay.sample`
draws. ``observe`` blocks while the worker's queue is full (back-pressure: stepping slows to
the scoring rate; no experience is dropped).

On few cores, the worker's queries and the training loop's intra-op threads compete for the
same cores: for small agents, ``torch.set_num_threads(1)`` keeps PLR's cost to training low
(see ``benchmarks/bench_plr.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import gymnasium as gym
import numpy as np

from syllabus_eval.errors import bad_argument, check_count, check_number
from syllabus_eval.query.protocols import AgentQueries

from ..curriculum import EXPERIENCE_KINDS, Curriculum, Experience
from ..task_space import DiscreteTaskSpace
from .robust import RobustReplay, check_robust_settings
from .scores import REPLAY_SCHEDULES, SCORE_TRANSFORMS, STRATEGIES, TaskScores
from .worker import PullWeights, ScoringWorker


class PrioritizedLevelReplay(Curriculum):
    """Prioritized Level Replay over a discrete task space, scored by a worker thread.

    Args:
        task_space: a :class:`DiscreteTaskSpace`, a number of tasks or a sequence of tasks.
        evaluator: any object with the Evaluator's query methods
            (:class:`~syllabus_eval.AgentQueries`). Recurrent ones (``is_lstm=True``) also
            need ``initial_lstm_state(batch_size)``.
        strategy: the score of a segment: ``"value_l1"`` (mean absolute GAE, the paper's
            best), ``"positive_value_loss"`` (mean positive GAE), ``"gae"`` (mean signed GAE),
            ``"one_step_td_error"`` (mean absolute one-step TD error), ``"policy_entropy"``,
            ``"least_confidence"`` or ``"min_margin"``. The last two need ``policy_logits`` in
            the evaluator's extras; entropy takes ``entropy`` or ``policy_logits``.
        gamma: discount factor of the GAE: the one the agent's value was trained with. A
            value trained with a smaller one (say 0.99 against the default 0.999) leaves a
            TD error of about ``(gamma - gamma_agent) V`` at every step that is not the
            episode's last, so long episodes, those of a solved time-limited task most,
            score highest.
        gae_lambda: lambda of the GAE.
        score_transform: PLR Eq. 1's h, over the seen tasks: ``"rank"`` (h = 1 / rank),
            ``"power"`` (h = score, + 1e-3 when ``staleness_coef`` is 0, as in the paper's
            code), ``"softmax"`` (P_S ∝ exp(score / beta)), ``"eps_greedy"`` (the best task
            1 - 0.05, and 0.05 spread over all tasks), ``"max"`` (the best) or ``"constant"``
            (uniform). Rank and power are the paper's; rank keeps the top task's share
            whatever the gap between scores (with beta 0.5 on 5 tasks, 0.68 of P_S).
        temperature: beta of PLR Eq. 1: P_S ∝ h^(1/beta); higher is more uniform.
        staleness_coef: rho of PLR Eq. 3, the weight of the staleness distribution.
        replay_prob: p, the probability of replaying a seen task while unseen tasks remain,
            under the ``"fixed"`` schedule (the paper's code's 1 - nu).
        replay_schedule: ``"proportionate"`` replays with probability the fraction of tasks
            seen (the paper's), ``"fixed"`` with p.
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
        seed: seeds the sampler (and, in robust mode, the evaluation episodes' resets).
        robust: Robust PLR (PLR⊥, Jiang et al. 2021, :mod:`~syllabus_eval.curricula.plr.robust`):
            unscored tasks are scored by PLR's own evaluation episodes of the current policy,
            on envs from ``env_fn``, in a background thread; :meth:`sample` returns only
            replays of scored tasks (a "new task" decision of ``replay_schedule`` queues a
            task for evaluation instead), waiting for the first score if none is in yet.
            Training experience of replayed tasks updates their scores as in PLR.
        env_fn: robust mode only, and then required: returns one new gymnasium Env, which
            plays tasks given as ``reset(options={"task": task})`` (or through ``set_task``).
        set_task: robust mode: optional ``set_task(env, task)`` called before each
            evaluation reset, for envs that take their task another way.
        num_eval_envs: robust mode: envs that evaluate queued tasks side by side.
        first_score_timeout: robust mode: seconds :meth:`sample` waits for the first scored
            task before raising ``TimeoutError``.

    The worker thread starts at construction. :meth:`close` (or leaving a ``with`` block)
    scores every record observed before it, scores the open segments as if truncated there,
    and stops the worker. A failure in the worker is raised, as
    :class:`~syllabus_eval.CurriculumError` chained to the original exception, from the next
    :meth:`observe`, :meth:`sample` or :meth:`flush` (every time), or else from :meth:`close`;
    ``observe`` of a ``close`` record never raises it, so that closing a vector env of
    :class:`~syllabus_eval.curricula.CurriculumWrapper` s closes every env.

    Only finite numbers enter the score table. A NaN or inf reward, a non-finite value or
    policy score from the agent (an inf observation gives one; so do weights gone NaN) or a
    segment score that overflows is an error, not a skipped segment: it fails the worker
    (``ValueError`` naming the env, its task and the number, chained to the
    ``CurriculumError``) and the table keeps the scores it had. Skipping would bias the
    scores without a sign, and a NaN reward poisons the training loop too, which needs to
    stop. :meth:`update_score` refuses a non-finite score at once with ``ValueError``.
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
        robust: bool = False,
        env_fn: Callable[[], gym.Env] | None = None,
        set_task: Callable[[gym.Env, object], None] | None = None,
        num_eval_envs: int = 4,
        first_score_timeout: float = 60.0,
    ) -> None:
        super().__init__(task_space, seed=seed)
        check_robust_settings(robust, env_fn, set_task, num_eval_envs, first_score_timeout)
        if not isinstance(evaluator, AgentQueries):
            raise bad_argument("evaluator", "an object with the Evaluator's methods "
                               "(get_action, get_value, get_action_and_value)", evaluator)
        for name, value, valid in (("strategy", strategy, STRATEGIES),
                                   ("score_transform", score_transform, SCORE_TRANSFORMS),
                                   ("replay_schedule", replay_schedule, REPLAY_SCHEDULES)):
            if value not in valid:
                raise bad_argument(name, f"one of {list(valid)}", value)
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
        self._table = TaskScores(len(self.task_space), self._lock, self.score_alpha)
        self._worker = ScoringWorker(
            evaluator, self._table, self.task_space, strategy=strategy, gamma=self.gamma,
            gae_lambda=self.gae_lambda, num_steps=self.num_steps, batch_size=self.batch_size,
            batch_wait=self.batch_wait, queue_size=check_count("queue_size", queue_size))
        self.recurrent = self._worker.recurrent
        self.robust = bool(robust)
        self._robust: RobustReplay | None = None
        if robust:
            try:
                self._robust = RobustReplay(
                    self, env_fn, set_task=set_task, num_eval_envs=num_eval_envs,
                    first_score_timeout=first_score_timeout, seed=seed)
            except BaseException:
                self._worker.close()  # a bad env_fn leaves no thread behind
                raise

    # --- producers -----------------------------------------------------------------------------

    def observe(self, experience: Experience) -> None:
        """Queue one record of an environment's stream for the worker (thread-safe).

        Blocks while ``queue_size`` records wait (back-pressure); raises the worker's failure
        if it failed, and ``RuntimeError`` once closed. ``close`` records raise neither: after
        :meth:`close` they are ignored (it already scored what their envs played), after a
        failure too (their envs have nothing left to score; the failure is raised elsewhere).
        """
        self._check_record(experience)
        if self._robust is not None and experience.kind != "close":
            self._robust.check()
        self._worker.put(experience)  # the rollout loop's path: one record, no batch around it

    def observe_batch(self, records: Sequence[Experience]) -> None:
        """Queue records of environments' streams, in order, in one hand-over to the worker
        (what a hosted curriculum does with each client batch): as :meth:`observe` of each,
        but one lock and one wake-up for all. A batch of only ``close`` records raises no
        failure."""
        for experience in records:
            self._check_record(experience)
        if self._robust is not None and any(record.kind != "close" for record in records):
            self._robust.check()
        self._worker.put_many(records)

    def _check_record(self, experience: Experience) -> None:
        if not isinstance(experience, Experience):
            raise bad_argument("experience", "an Experience record", experience)
        if experience.kind not in EXPERIENCE_KINDS:
            raise bad_argument("experience.kind", f"one of {list(EXPERIENCE_KINDS)}",
                               experience.kind)
        if not isinstance(experience.env_id, Hashable):
            raise bad_argument("experience.env_id", "a hashable env id", experience.env_id)
        if experience.kind == "reset":
            self.task_space.index(experience.task, "experience.task")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record observed before this call has been scored (in robust
        mode, first every evaluation queued before it: ``timeout`` covers both).

        Raises:
            CurriculumError: the worker (or the evaluation thread) failed.
            TimeoutError: ``timeout`` seconds passed first.
        """
        if self._robust is not None:
            timeout = self._robust.flush(timeout)
        self._worker.flush(timeout)

    def close(self) -> None:
        """Score everything observed so far, then stop the worker (idempotent). In robust
        mode, first stop the evaluation thread (an evaluation under way is cut short and
        scored as truncated there) and close its envs."""
        try:
            if self._robust is not None:
                self._robust.close()
        finally:
            self._worker.close()

    def sync_weights_from(self, pull: PullWeights) -> None:
        """Score with weights pushed from elsewhere rather than the evaluator's own sync.

        Before each batch the worker calls ``pull()``; what it returns, ``(state_dict,
        version)``, is loaded with ``evaluator.load_weights(state_dict, version=version)``
        (``None``: nothing new). A batch that starts after a push reached ``pull`` is thus
        scored with those weights or newer ones. The hosted curricula
        (:class:`~syllabus_eval.curricula.LocalCurriculumServer`,
        :class:`~syllabus_eval.curricula.RayCurriculumServer`) call this in the process that
        hosts PLR; weights that do not fit the evaluator fail the worker.
        """
        if not callable(pull):
            raise bad_argument("pull", "a callable returning (state_dict, version) or None",
                               pull)
        if (not callable(getattr(self.evaluator, "load_weights", None))
                or getattr(self.evaluator, "agent", True) is None):
            raise bad_argument("evaluator", "an evaluator with weights to replace "
                               "(load_weights, and an agent), to take pushed weights",
                               self.evaluator)
        self._worker.pull_weights = pull

    # --- scores and sampling ---------------------------------------------------------------------

    def update_score(self, task: Hashable, score: float) -> None:
        """Record a score for ``task`` computed elsewhere, as the worker does for a segment."""
        self._table.record(self.task_space.index(task), check_number("score", score, -np.inf),
                           0)

    def task_scores(self) -> dict[Hashable, float]:
        """``{task: S}`` for every task scored so far."""
        table = self._table
        with self._lock:
            return {self.task_space.tasks[i]: float(table.scores[i])
                    for i in np.flatnonzero(table.seen)}

    def scored_steps(self) -> dict[Hashable, int]:
        """``{task: transitions scored}`` for every task with scored transitions."""
        table = self._table
        with self._lock:
            return {self.task_space.tasks[i]: int(table.steps[i])
                    for i in np.flatnonzero(table.steps)}

    def replay_distribution(self) -> np.ndarray:
        """P_replay over the tasks (PLR Eq. 3), 0 for unseen tasks: ``[N]``."""
        return self._table.replay_distribution(self.score_transform, self.temperature,
                                               self.staleness_coef)

    def sample(self, k: int = 1) -> list:
        """``k`` tasks to play, each drawn independently (robust mode: replays of scored
        tasks only, see the class docs)."""
        if self._robust is not None:
            return self._robust.sample(k)
        return super().sample(k)

    def distribution(self) -> np.ndarray:
        """The probability of each task for the next draw: ``[N]`` (robust mode: the replay
        distribution, since every training draw is a replay).

        PLR first decides to replay (a seen task, from P_replay) or not (an unseen task,
        uniformly); this is that two-stage draw as one mixture.
        """
        if self._robust is not None:
            return self._robust.distribution()
        return self._plr_distribution()

    def _plr_distribution(self) -> np.ndarray:
        # PLR's two-stage draw as one mixture; robust mode reads its replay decision from it.
        return self._table.distribution(self.score_transform, self.temperature,
                                        self.staleness_coef, self.replay_prob,
                                        self.replay_schedule)

    def _sampled(self, index: int) -> None:
        self._table.drawn(index)

    def _check(self) -> None:
        self._worker.check()
        if self._robust is not None:
            self._robust.check()
