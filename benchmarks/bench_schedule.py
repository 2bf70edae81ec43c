"""What asking the schedule every training step costs the training loop, side by side.

Usage::

    python benchmarks/bench_schedule.py            # about half a minute on 2 CPU cores
    python benchmarks/bench_schedule.py --quick    # a smoke run

A CleanRL-style collection loop (``ppo.py``'s inner loop: the agent's forward pass on 4
CartPole envs, then ``envs.step``) with ``runner.maybe_trigger(agent, step=global_step)`` after
every vector step, against the same loop without it, in interleaved rounds. No evaluation is
due during the measured steps (``eval_every`` beyond them), so the figure is the cost of asking.
Target: at most 1.01x.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved, median_ratio  # noqa: E402

from syllabus_eval import (
    EnvSpec,
    EvalRunner,  # noqa: E402
    EvalSchedule,
)
from syllabus_eval.adapters import CleanRLEvaluator  # noqa: E402
from syllabus_eval.demo.agents import MLPAgent  # noqa: E402
from syllabus_eval.results.report import format_table  # noqa: E402

NUM_ENVS = 4


def collect(envs: gym.vector.VectorEnv, agent: MLPAgent, steps: int,
            runner: EvalRunner | None) -> float:
    """Seconds for ``steps`` vector steps of CleanRL's collection loop."""
    obs, _ = envs.reset(seed=0)
    global_step = 0
    start = time.perf_counter()
    for _ in range(steps):
        with torch.no_grad():
            action, _, _, _ = agent.get_action_and_value(torch.Tensor(obs))
        obs, _, _, _, _ = envs.step(action.numpy())
        global_step += NUM_ENVS
        if runner is not None:
            runner.maybe_trigger(agent, step=global_step)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    quick = parser.parse_args().quick
    steps, rounds = (200, 3) if quick else (3000, 11)
    torch.set_num_threads(1)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * NUM_ENVS)
    agent = MLPAgent(envs)
    never_due = 10 * NUM_ENVS * steps * rounds  # beyond every step the rounds reach
    with EvalRunner(EnvSpec(lambda: gym.make("CartPole-v1"), num_envs=2), CleanRLEvaluator(agent),
                    num_episodes=2, schedule=EvalSchedule(every=never_due)) as runner:
        collect(envs, agent, steps // 10, runner)  # warm-up
        seconds = interleaved({"plain": lambda _: collect(envs, agent, steps, None),
                               "maybe_trigger": lambda _: collect(envs, agent, steps, runner)},
                              rounds)
        assert runner.skipped == 0 and not runner.pending
        calls = 200_000
        start = time.perf_counter()
        for step in range(calls):  # the call alone, against a step of the loop
            runner.maybe_trigger(agent, step=step)
        per_call = (time.perf_counter() - start) / calls
    envs.close()
    ratio = median_ratio(seconds["maybe_trigger"], seconds["plain"])
    ratios = sorted(m / p for m, p in zip(seconds["maybe_trigger"], seconds["plain"]))
    per_step = min(seconds["plain"]) / steps
    print(f"Schedule cost: CleanRL's collection loop, CartPole, {NUM_ENVS} envs, {steps} vector "
          f"steps per round, median of {rounds} interleaved rounds\n")
    print(format_table([["training loop with maybe_trigger every step / without",
                         f"{ratio:.3f}x", f"{ratios[0]:.3f}-{ratios[-1]:.3f}", "<= 1.01x"],
                        ["one maybe_trigger call / one step of the loop (fastest round)",
                         f"{per_call / per_step:.4f}x", "", ""]],
                       ["wall-clock time", "ratio", "min-max", "target"]))


if __name__ == "__main__":
    main()
