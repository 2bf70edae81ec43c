"""PLR's cost to training, and its scoring throughput, measured side by side in one process.

Usage::

    python benchmarks/bench_plr.py                 # about a minute on 2 CPU cores
    python benchmarks/bench_plr.py --rounds 5 --iterations 20
    python benchmarks/bench_plr.py --quick         # a smoke run

A CleanRL-style PPO loop (:class:`~syllabus_eval.demo.ppo.PPOTrainer`: MLPAgent on CartPole, 4 envs,
128 steps per rollout, 4 epochs of 4 minibatches of real Adam steps) runs in three set-ups,
interleaved round by round so that drift hits them alike:

- ``plain``: the envs as they are (the baseline);
- ``domain randomization``: each env wrapped, drawing a pole length at every reset;
- ``PLR``: the same wrapper feeding a PrioritizedLevelReplay whose worker thread scores every
  step with ``get_value`` on a copy of the training agent while the loop trains.

All three run with torch's default intra-op threads and again with one: on few cores the
worker's queries and the training loop's intra-op threads compete for the same cores. Then
the worker's scoring capacity: recorded CartPole episodes pushed into PLR as fast as one
thread can, timed until every step is scored (feedforward and recurrent agents: the recurrent
one scores whole segments, one ``get_value_sequence`` query per batch); the weights do not
change meanwhile, so it is an upper bound. It is measured in rounds interleaved with the plain
loop at one thread, its baseline. Everything is reported as env steps per second and as
ratios to the plain loop of the same round, median (min-max) over rounds. One round of each
set-up runs first, untimed, as a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved, ppo_seconds, ratio_text  # noqa: E402

from syllabus_eval.adapters import CleanRLEvaluator  # noqa: E402
from syllabus_eval.curricula import (  # noqa: E402
    Curriculum,
    CurriculumWrapper,
    DomainRandomization,
    Experience,
    PrioritizedLevelReplay,
)
from syllabus_eval.demo.agents import LSTMAgent, MLPAgent  # noqa: E402
from syllabus_eval.demo.ppo import PPOConfig, PPOTrainer  # noqa: E402
from syllabus_eval.report import format_table  # noqa: E402

POLE_LENGTHS = [0.25, 0.35, 0.5, 0.7, 1.0, 1.4]  # CartPole's half-length is 0.5
NUM_ENVS = 4
CONFIG = PPOConfig()  # CleanRL ppo.py's CartPole defaults: 128 steps, 4 epochs of 4 minibatches


def set_pole(env: gym.Env, task: float) -> None:
    env.unwrapped.length = task
    env.unwrapped.polemass_length = env.unwrapped.masspole * task


def make_envs(curriculum: Curriculum | None) -> gym.vector.SyncVectorEnv:
    if curriculum is None:
        return gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * NUM_ENVS)
    return gym.vector.SyncVectorEnv(
        [lambda: CurriculumWrapper(gym.make("CartPole-v1"), curriculum, set_task=set_pole)]
        * NUM_ENVS)


def train(agent: MLPAgent, envs: gym.vector.VectorEnv, iterations: int, seed: int) -> float:
    """Env steps per second of ``iterations`` PPO iterations (rollout + update)."""
    seconds = ppo_seconds(PPOTrainer(envs, agent, CONFIG, seed=seed), iterations)
    envs.close()
    return iterations * CONFIG.num_steps * NUM_ENVS / seconds


def record_episodes(steps: int) -> list[Experience]:
    """CartPole episodes played with random actions, as the wrapper streams them, 8 envs."""
    envs = [gym.make("CartPole-v1") for _ in range(8)]
    rng = np.random.default_rng(0)
    records, obs = [], []
    for i, env in enumerate(envs):
        obs.append(env.reset(seed=i)[0])
        records.append(Experience("reset", i, POLE_LENGTHS[i % len(POLE_LENGTHS)], obs[i]))
    while len(records) < steps:
        for i, env in enumerate(envs):
            o, reward, terminated, truncated, _ = env.step(int(rng.integers(2)))
            records.append(Experience("step", i, obs=o, reward=reward, terminated=terminated,
                                      truncated=truncated))
            if terminated or truncated:
                records.append(Experience("reset", i, rng.choice(POLE_LENGTHS),
                                          env.reset()[0]))
    return records


def scoring_capacity(make_evaluator: Callable[[], object], records: list[Experience]) -> float:
    """Env steps scored per second when the worker never waits for experience."""
    steps = sum(record.kind == "step" for record in records)
    plr = PrioritizedLevelReplay(POLE_LENGTHS, make_evaluator(), queue_size=len(records) + 1)
    start = time.perf_counter()
    for record in records:
        plr.observe(record)
    plr.close()  # returns once every step is scored
    elapsed = time.perf_counter() - start
    assert sum(plr.scored_steps().values()) == steps
    return steps / elapsed


def compare(rounds: int, iterations: int, probe: gym.vector.VectorEnv
            ) -> dict[str, tuple[float, str]]:
    """Per set-up (and the steps PLR scored during its runs): the median env steps/s and its
    per-round ratios to the plain loop, which cancel drift between rounds."""

    def plain(round_: int) -> float:
        return train(MLPAgent(probe), make_envs(None), iterations, round_)

    def domain_randomization(round_: int) -> float:
        return train(MLPAgent(probe), make_envs(DomainRandomization(POLE_LENGTHS)), iterations,
                     round_)

    def with_plr(round_: int) -> tuple[float, float]:
        """Training steps/s, and steps scored per second until PLR has scored them all."""
        agent = MLPAgent(probe)
        with PrioritizedLevelReplay(POLE_LENGTHS, CleanRLEvaluator(agent), seed=round_) as plr:
            start = time.perf_counter()
            rate = train(agent, make_envs(plr), iterations, round_)
        elapsed = time.perf_counter() - start  # with scoring the last records
        return rate, sum(plr.scored_steps().values()) / elapsed

    runs = interleaved({"plain": plain, "domain randomization": domain_randomization,
                        "PLR": with_plr}, rounds)
    rates = {"plain": runs["plain"], "domain randomization": runs["domain randomization"],
             "PLR": [rate for rate, _ in runs["PLR"]],
             "PLR scored": [scored for _, scored in runs["PLR"]]}
    return {name: (statistics.median(values), ratio_text(values, rates["plain"]))
            for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=8, help="PPO iterations per run")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one round of one iteration, fewer records to score")
    args = parser.parse_args()
    rounds, iterations = (1, 1) if args.quick else (args.rounds, args.iterations)
    torch.manual_seed(0)
    probe = make_envs(None)
    default_threads = torch.get_num_threads()
    compare(1, 1, probe)  # warm-up: first calls, allocations, the OS's caches
    results = {}
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        results[threads] = compare(rounds, iterations, probe)
    records = record_episodes(4_000 if args.quick else 40_000)
    capacity = interleaved({  # torch threads: 1, as left above
        "plain": lambda round_: train(MLPAgent(probe), make_envs(None), iterations, round_),
        "MLPAgent": lambda _: scoring_capacity(lambda: CleanRLEvaluator(MLPAgent(probe)),
                                               records),
        "LSTMAgent": lambda _: scoring_capacity(
            lambda: CleanRLEvaluator(LSTMAgent(probe), is_lstm=True), records[:len(records) // 4]),
    }, rounds)
    probe.close()

    print(f"PPO on CartPole ({NUM_ENVS} envs x {CONFIG.num_steps} steps, "
          f"{CONFIG.update_epochs}x{CONFIG.num_minibatches} Adam steps per iteration), "
          f"{rounds} interleaved rounds: median env steps/s, median ratio to the plain loop of "
          "the same round\n")
    rows = [[threads, "PLR worker, steps scored" if name == "PLR scored" else f"training, {name}",
             f"{rate:,.0f}", ratio]
            for threads, rates in results.items() for name, (rate, ratio) in rates.items()]
    print(format_table(rows, ["torch threads", "set-up", "env steps/s", "vs plain"]))
    print("\nPLR worker capacity (records queued up front, torch threads: 1; the weights do "
          "not change meanwhile, so no copies: an upper bound) against the plain loop at 1 "
          f"thread ({statistics.median(capacity['plain']):,.0f} env steps/s), {rounds} "
          "interleaved rounds\n")
    print(format_table([[agent, f"{statistics.median(rates):,.0f}",
                         ratio_text(rates, capacity["plain"])]
                        for agent, rates in capacity.items() if agent != "plain"],
                       ["agent", "steps/s", "vs plain"]))


if __name__ == "__main__":
    main()
