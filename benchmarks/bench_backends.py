"""What a background evaluation costs a training loop, per backend, and what a second worker gains.

Usage::

    python benchmarks/bench_backends.py            # about ten minutes on 2 cores
    python benchmarks/bench_backends.py --quick    # a smoke run

1. Training cost: CleanRL's PPO (:class:`~syllabus_eval.demo.ppo.PPOTrainer`, 4 CartPole envs x 128
   steps per iteration, MLP agent) triggers a background evaluation every other iteration
   (CartPole, 8 envs, greedy, one worker), with the ``"thread"``, ``"process"`` and ``"ray"``
   backends. Each figure is the training loop's wall-clock time as a ratio against the same
   loop without evaluation run just before it, and the same until the last evaluation is
   done; the order of the backends rotates from round to round, and each figure is the median
   over rounds.
2. Worker speed-up: a blocking evaluation on an env that sleeps 2 ms per step (a slow
   simulator), 8 envs, 16 episodes of at most 50 steps, with one worker and with two, for both
   worker backends: the ratio of their times (same episodes, same numbers).

Only ratios are printed, in one Markdown table: absolute figures on a shared machine say little.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import gymnasium as gym
from bench_rollout import MAX_STEPS, NUM_ENVS, make_cartpole, new_agent
from timing import ratio_text

from syllabus_eval import EvalRunner
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.demo.ppo import PPOConfig, PPOTrainer
from syllabus_eval.report import format_table

STEP_DELAY = 0.002  # seconds per step of the slow env
SLOW_MAX_STEPS = 50  # its episodes are cut there: each evaluation takes a second or two


def make_evaluator() -> CleanRLEvaluator:
    """Built in each worker; the weights come with every evaluation."""
    return CleanRLEvaluator(new_agent())


class SlowCartPole(gym.Wrapper):
    """CartPole whose steps take ``STEP_DELAY`` longer, like a simulator that waits on I/O."""

    def __init__(self) -> None:
        super().__init__(make_cartpole())

    def step(self, action: Any):
        time.sleep(STEP_DELAY)
        return self.env.step(action)


def start_ray() -> Any:
    try:
        import ray
    except ImportError:
        print("Ray: skipped (pip install 'syllabus-eval[ray]' to compare)")
        return None
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return ray


def worker_options(backend: str, **options: Any) -> dict[str, Any]:
    return {} if backend == "thread" else {"evaluator_fn": make_evaluator, **options}


# --- 1. cost to training ---------------------------------------------------------------------


def ppo_training(iterations: int, runner: EvalRunner | None,
                 eval_every: int = 2) -> tuple[float, float]:
    """PPO on CartPole; seconds of the training loop, and until every evaluation is done."""
    envs = gym.make_vec("CartPole-v1", num_envs=4)
    agent = new_agent(1)
    trainer = PPOTrainer(envs, agent, PPOConfig(), seed=1)
    batch = trainer.config.num_steps * envs.num_envs
    start = time.perf_counter()
    for stats in trainer.iterate(iterations * batch):
        if runner is not None and stats.iteration % eval_every == 1:
            runner.trigger_eval(agent, step=stats.global_step)
    loop = time.perf_counter() - start
    if runner is not None:
        while runner.wait() is not None:  # the evaluations still queued
            pass
    envs.close()
    return loop, time.perf_counter() - start


def training_cost(backends: list[str], rounds: int, iterations: int,
                  episodes: int) -> dict[str, tuple[str, str]]:
    """Per backend: (loop time, time until the last result), each over no evaluation, as
    ``median (min-max)`` over rounds."""
    runners = {backend: EvalRunner(make_cartpole, make_evaluator(), num_envs=NUM_ENVS,
                                   num_episodes=episodes, max_steps=MAX_STEPS,
                                   backend=backend, busy_policy="queue",
                                   **worker_options(backend))
               for backend in backends}
    ppo_training(1, None)  # warm-up
    for runner in runners.values():
        ppo_training(1, runner)
    times: dict[str, list[tuple[float, float, float]]] = {backend: [] for backend in backends}
    for round_ in range(rounds):
        # Each backend against a run without evaluation right before it, in an order that
        # rotates from round to round, so that drifts in the machine's speed cancel out.
        for backend in backends[round_ % len(backends):] + backends[:round_ % len(backends)]:
            alone, _ = ppo_training(iterations, None)
            loop, drained = ppo_training(iterations, runners[backend])
            times[backend].append((alone, loop, drained))
    for runner in runners.values():
        runner.shutdown()
    return {backend: (ratio_text([t[1] for t in values], [t[0] for t in values]),
                      ratio_text([t[2] for t in values], [t[0] for t in values]))
            for backend, values in times.items()}


# --- 2. a second worker ----------------------------------------------------------------------


def worker_speedup(backend: str, rounds: int, episodes: int) -> str:
    """Time of a slow-env evaluation with one worker over its time with two, per round."""
    agent = new_agent(2)
    # Half a CPU per Ray actor: the three actors of both runners fit in a 2-CPU Ray.
    options = {"num_cpus": 0.5} if backend == "ray" else {}
    runners = [EvalRunner(SlowCartPole, make_evaluator(), num_envs=NUM_ENVS,
                          num_episodes=episodes, max_steps=SLOW_MAX_STEPS, backend=backend,
                          **worker_options(backend, num_workers=workers, **options))
               for workers in (1, 2)]
    reference = [runner.evaluate(agent) for runner in runners]  # warm-up
    assert reference[0].episodes == reference[1].episodes
    seconds: list[list[float]] = [[], []]
    for _ in range(rounds):
        for times, runner in zip(seconds, runners):
            start = time.perf_counter()
            runner.evaluate(agent)
            times.append(time.perf_counter() - start)
    for runner in runners:
        runner.shutdown()
    return ratio_text(seconds[0], seconds[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets")
    quick = parser.parse_args().quick
    ray = start_ray()
    backends = ["thread", "process"] + (["ray"] if ray is not None else [])
    rounds, iterations, episodes = (1, 2, 8) if quick else (5, 12, 200)
    cost = training_cost(backends, rounds, iterations, episodes)
    speedup = {backend: worker_speedup(backend, 1 if quick else 5, 8 if quick else 16)
               for backend in backends[1:]}
    if ray is not None:
        ray.shutdown()
    print(f"Background evaluation during PPO on CartPole ({iterations} iterations, an "
          f"evaluation of {episodes} episodes on {NUM_ENVS} envs every other one; median (min-max) "
          f"of {rounds} rounds) and a slow-env evaluation ({STEP_DELAY * 1000:.0f} ms per step) "
          f"with 2 workers instead of 1; {os.cpu_count()} CPU cores")
    rows = [[backend, *cost[backend], speedup.get(backend, "-")]
            for backend in backends]
    print(format_table(rows, ["backend", "training loop / no evaluation",
                              "until the last result / no evaluation",
                              "slow env: 2 workers speed-up"]))


if __name__ == "__main__":
    main()
