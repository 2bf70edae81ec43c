"""Background evaluations during Stable-Baselines3's ``model.learn()``.

Usage::

    from stable_baselines3 import PPO
    from syllabus_eval import EnvSpec, EvalRunner, EvalSchedule, SaveBest
    from syllabus_eval.adapters import SB3Evaluator
    from syllabus_eval.integrations.sb3 import EvalRunnerCallback

    model = PPO("MlpPolicy", "CartPole-v1")
    runner = EvalRunner(EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=8),
                        SB3Evaluator(model), num_episodes=20,
                        schedule=EvalSchedule(every=10_000),
                        callbacks=SaveBest("runs/best.pt"))
    model.learn(100_000, callback=EvalRunnerCallback(runner))   # evaluations meanwhile
    runner.shutdown()

The callback asks ``runner.maybe_trigger(model.policy, step=num_timesteps)`` after every
rollout step: evaluations are scheduled in env steps (``num_timesteps``), never in callback
calls, whose count depends on the number of envs (SB3 #1474). They run in the background
(SB3's own ``EvalCallback`` blocks training while it evaluates); their results land in SB3's
logger (``eval/...`` at the result's step) and in the runner's ``callbacks``. When the model
trains behind ``VecNormalize``, its observation statistics are read with the weights at every
trigger and frozen into the evaluation envs, which must normalise as ``VecNormalize`` does:
build them with :func:`normalized_like`. At the end of ``learn`` the last policy is evaluated
(``runner.final_eval``); ``runner.should_stop`` (``StopOnReward``, ``StopOnNoImprovement``
among the runner's callbacks) stops training early.

Stable-Baselines3 is an optional dependency: ``pip install 'syllabus-eval[sb3]'``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np

from syllabus_eval.errors import EvaluationError, bad_argument
from syllabus_eval.evaluation.normalization import MissingNormalization
from syllabus_eval.evaluation.runner import EvalRunner
from syllabus_eval.results.metrics import EvalResult

try:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecNormalize
except ImportError as error:  # pragma: no cover - the extra is installed by `make test`
    raise ImportError("syllabus_eval.integrations.sb3 needs Stable-Baselines3: "
                      "pip install 'syllabus-eval[sb3]'") from error



class EvalRunnerCallback(BaseCallback):
    """Runs an :class:`~syllabus_eval.EvalRunner` on its schedule while SB3 trains.

    Args:
        runner: a runner with ``schedule=EvalSchedule(every=N)`` (env steps) and an evaluator
            of the model's policy (``SB3Evaluator(model)``, or ``evaluator_fn`` for process
            and Ray workers).
        obs_norm: ``"auto"``: the model's ``VecNormalize`` observation statistics, if it has
            one that normalises observations; ``None``: none; or any ``obs_norm`` source.
        final_eval: evaluate the last policy when ``learn`` ends.
        stop: end training when ``runner.should_stop``.
        verbose: SB3's verbosity; 1 prints each result's mean return.

    Attributes:
        results: every result that landed, in order (the final one last).
    """

    def __init__(self, runner: EvalRunner, *, obs_norm: Any = "auto", final_eval: bool = True,
                 stop: bool = True, verbose: int = 0) -> None:
        super().__init__(verbose)
        if not isinstance(runner, EvalRunner):
            raise bad_argument("runner", "an EvalRunner", runner)
        if runner.schedule.every is None:
            raise bad_argument("runner", "an EvalRunner with a schedule, EvalRunner(..., "
                               "schedule=EvalSchedule(every=N env steps))", runner)
        self.runner = runner
        self.obs_norm = obs_norm
        self.final_eval = final_eval
        self.stop = stop
        self.results: list[EvalResult] = []

    def _on_step(self) -> bool:
        with self._sb3_advice():
            # One comparison while nothing is due: the statistics are looked up only then.
            if self.num_timesteps >= self.runner.schedule.next_due:
                self.runner.maybe_trigger(self.model.policy, step=self.num_timesteps,
                                          obs_norm=self._obs_norm())
            self._take_results()
        return not (self.stop and self.runner.should_stop)

    def _on_training_end(self) -> None:
        with self._sb3_advice():
            if self.final_eval:
                final = self.runner.final_eval(self.model.policy, step=self.num_timesteps,
                                               obs_norm=self._obs_norm())
                while (result := self.runner.wait()) is not None:  # the pending ones first
                    self._land(result)
                if not self.results or self.results[-1] is not final:
                    self._land(final)
            else:
                self._take_results()

    @contextlib.contextmanager
    def _sb3_advice(self) -> Iterator[None]:
        """An evaluation that failed for want of normalising evaluation envs, re-raised with
        advice that works for SB3: the generic one (the training script's env factory) does
        not, since VecNormalize wraps the training VecEnv, outside any env factory."""
        try:
            yield
        except EvaluationError as error:
            vec_normalize = self._obs_norm()
            if not isinstance(vec_normalize, VecNormalize) or not _lacks_wrapper(error):
                raise
            raise EvaluationError(
                "obs_norm: the model trains behind VecNormalize, but the evaluation "
                "envs do not normalise observations (no gymnasium.wrappers.NormalizeObservation "
                "to take its statistics); VecNormalize wraps the training VecEnv, outside any "
                "env factory, so build the evaluation envs with syllabus_eval.integrations.sb3."
                "normalized_like(model.get_vec_normalize_env(), make_env), which normalises as "
                "VecNormalize does") from error

    def _obs_norm(self) -> Any:
        if self.obs_norm != "auto":
            return self.obs_norm
        vec_normalize = self.model.get_vec_normalize_env()
        return vec_normalize if vec_normalize is not None and vec_normalize.norm_obs else None

    def _take_results(self) -> None:
        while (result := self.runner.poll()) is not None:  # raises a failed evaluation
            self._land(result)

    def _land(self, result: EvalResult) -> None:
        self.results.append(result)
        for name, value in result.items():
            self.logger.record(name, float(value))
        self.logger.dump(step=result.step if result.step is not None else self.num_timesteps)
        if self.verbose:
            print(f"evaluation at step {result.step}: return {result.get('eval/reward')}")


def _lacks_wrapper(error: BaseException) -> bool:
    """Whether ``error``, or an exception it came from, is the evaluation envs' want of a
    ``NormalizeObservation`` (a worker's comes back pickled, with its type)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, MissingNormalization):
            return True
        seen = seen.__cause__
    return False


def normalized_like(vec_normalize: VecNormalize, make_env: Callable[[], gym.Env]
                    ) -> _NormalizedLike:
    """An evaluation env factory whose envs normalise observations as ``vec_normalize`` does
    (``gymnasium.wrappers.NormalizeObservation`` with its ``epsilon``, then clipped to
    ``[-clip_obs, clip_obs]``), ready to take its statistics through ``obs_norm``."""
    if not isinstance(vec_normalize, VecNormalize):
        raise bad_argument("vec_normalize", "a stable_baselines3 VecNormalize", vec_normalize)
    if not vec_normalize.norm_obs or vec_normalize.norm_obs_keys:
        raise bad_argument("vec_normalize", "a VecNormalize that normalises whole Box "
                           "observations (norm_obs=True, no norm_obs_keys)", vec_normalize)
    return _NormalizedLike(make_env, float(vec_normalize.epsilon),
                           float(vec_normalize.clip_obs))


class _NormalizedLike:
    """``make_env`` with VecNormalize's observation normalisation (picklable for workers)."""

    def __init__(self, make_env: Callable[[], gym.Env], epsilon: float, clip: float) -> None:
        self.make_env, self.epsilon, self.clip = make_env, epsilon, clip

    def __call__(self) -> gym.Env:
        env = gym.wrappers.NormalizeObservation(self.make_env(), epsilon=self.epsilon)
        return gym.wrappers.TransformObservation(
            env, lambda obs: np.clip(obs, -self.clip, self.clip).astype(np.float32),
            env.observation_space)
