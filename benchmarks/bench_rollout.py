"""Evaluation throughput and its cost to training, measured side by side in one process.

Usage::

    python benchmarks/bench_rollout.py            # about three minutes on 2 CPU cores
    python benchmarks/bench_rollout.py --quick    # a smoke run

1. Env steps per second of ``EvalRunner.evaluate`` on CartPole, CleanRL's MLP agent acting
   greedily over 8 envs, as a ratio against a hand-written Gymnasium vector loop with the same
   policy over the same envs, CleanRL's ``SyncVectorEnv`` of ``gym.make`` envs (target: at
   least 0.9x), in Gymnasium's default ``NEXT_STEP`` autoreset mode (one extra step per
   episode, not counted) and in ``SAME_STEP`` mode (none); the same pair on Gymnasium's native
   ``CartPoleVectorEnv`` (what ``gym.make_vec`` builds, handed to the runner as a vector env);
   and against TorchRL's ``Evaluator`` (when installed), set up as TorchRL recommends: a
   ``GymWrapper`` around a ``SyncVectorEnv`` without autoreset, trajectories concatenated.
   The agent is untrained, so episodes are short (the mean length is printed) and resets
   weigh more than in a trained agent's evaluation. Rounds alternate between the contenders;
   each figure is the median over rounds of the ratio within a round.
2. A CleanRL-style PPO training loop (``PPOTrainer``) on CartPole that evaluates every other
   iteration: its wall-clock time with the evaluations in the background (``trigger_eval``)
   as a ratio against the same evaluations run inline (``evaluate``), and each against no
   evaluation.

Only ratios are printed: absolute figures on a shared machine say little.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved, median_ratio, ppo_seconds  # noqa: E402

from syllabus_eval import EvalRunner  # noqa: E402
from syllabus_eval.adapters import CleanRLEvaluator  # noqa: E402
from syllabus_eval.demo.agents import MLPAgent  # noqa: E402
from syllabus_eval.demo.ppo import IterationStats, PPOTrainer  # noqa: E402
from syllabus_eval.report import format_table  # noqa: E402

NUM_ENVS = 8
MAX_STEPS = 500


def make_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def new_agent(seed: int = 0) -> MLPAgent:
    torch.manual_seed(seed)
    probe = gym.make_vec("CartPole-v1", num_envs=1)
    agent = MLPAgent(probe)
    probe.close()
    return agent


# --- 1. throughput -------------------------------------------------------------------------


def runner_rate(runner: EvalRunner) -> float:
    start = time.perf_counter()
    result = runner.evaluate()
    return sum(r.length for r in result.episodes) / (time.perf_counter() - start)


def sync_cartpoles(autoreset_mode: gym.vector.AutoresetMode = gym.vector.AutoresetMode.NEXT_STEP
                   ) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([make_cartpole] * NUM_ENVS,  # CleanRL's ppo.py
                                    autoreset_mode=autoreset_mode)


def same_step_cartpoles() -> gym.vector.VectorEnv:
    return sync_cartpoles(gym.vector.AutoresetMode.SAME_STEP)


def native_cartpoles() -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=NUM_ENVS)  # CartPoleVectorEnv


def plain_loop_rate(agent: MLPAgent, steps: int,
                    make_vector_env: Callable[[], gym.vector.VectorEnv]) -> float:
    """A hand-written loop; in NEXT_STEP mode autoreset steps are done but not counted."""
    envs = make_vector_env()
    next_step = envs.metadata.get("autoreset_mode") == gym.vector.AutoresetMode.NEXT_STEP
    obs, _ = envs.reset(seed=0)
    autoreset = np.zeros(NUM_ENVS, dtype=bool)
    counted = 0
    start = time.perf_counter()
    while counted < steps:
        with torch.no_grad():
            action = agent.actor(torch.Tensor(obs)).argmax(dim=-1).numpy()  # [B]
        obs, _, terminated, truncated, _ = envs.step(action)
        counted += int((~autoreset).sum())
        if next_step:
            autoreset = terminated | truncated
    rate = counted / (time.perf_counter() - start)
    envs.close()
    return rate


def torchrl_contender(agent: MLPAgent, episodes: int) -> Callable[[], float] | None:
    try:
        from tensordict.nn import TensorDictModule
        from torchrl.collectors import Evaluator
        from torchrl.envs import GymWrapper
    except ImportError as error:
        print(f"TorchRL: skipped ({error}); `pip install torchrl tensordict` to compare")
        return None

    class Greedy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.agent = agent

        def forward(self, observation: torch.Tensor) -> torch.Tensor:
            return self.agent.actor(observation).argmax(dim=-1)

    policy = TensorDictModule(Greedy(), in_keys=["observation"], out_keys=["action"])
    def make_env() -> GymWrapper:  # TorchRL's preferred set-up: it resets sub-envs itself
        return GymWrapper(sync_cartpoles(gym.vector.AutoresetMode.DISABLED),
                          categorical_action_encoding=True)

    evaluator = Evaluator(make_env, policy, num_trajectories=episodes, max_steps=MAX_STEPS,
                          collector_kwargs={"traj_format": "cat"})

    def rate() -> float:
        start = time.perf_counter()
        metrics = evaluator.evaluate()
        steps = float(metrics["eval/episode_length"]) * float(metrics["eval/num_episodes"])
        return steps / (time.perf_counter() - start)

    rate.shutdown = evaluator.shutdown  # type: ignore[attr-defined]
    return rate


def throughput(rounds: int, episodes: int) -> None:
    agent = new_agent()
    evaluator = CleanRLEvaluator(agent, deterministic=True)
    runner = EvalRunner(make_cartpole, evaluator, num_envs=NUM_ENVS, num_episodes=episodes,
                        max_steps=MAX_STEPS)
    # The native env keeps its own 500-step limit: it cannot reset single sub-envs.
    native = EvalRunner(native_cartpoles, evaluator, num_envs=NUM_ENVS, num_episodes=episodes,
                        max_steps=None)
    episode_lengths = [r.length for r in runner.evaluate().episodes]  # warm-up, work size
    steps = sum(episode_lengths)
    native.evaluate()
    contenders: dict[str, Callable[[int], float]] = {
        "EvalRunner": lambda _: runner_rate(runner),
        "plain loop": lambda _: plain_loop_rate(agent, steps, sync_cartpoles),
        "plain loop same-step": lambda _: plain_loop_rate(agent, steps, same_step_cartpoles),
        "EvalRunner native": lambda _: runner_rate(native),
        "plain loop native": lambda _: plain_loop_rate(agent, steps, native_cartpoles),
    }
    torchrl = torchrl_contender(agent, episodes)
    if torchrl is not None:
        torchrl()  # warm-up: the first call builds its collector
        contenders["TorchRL"] = lambda _: torchrl()
    rates = interleaved(contenders, rounds)
    runner.shutdown()
    native.shutdown()
    if torchrl is not None:
        torchrl.shutdown()
    def ratio(name: str, baseline: str) -> float:
        return median_ratio(rates[name], rates[baseline])

    rows = [["EvalRunner.evaluate / plain loop, SyncVectorEnv of gym.make envs (NEXT_STEP)",
             f"{ratio('EvalRunner', 'plain loop'):.2f}x", ">= 0.9x"],
            ["EvalRunner.evaluate / the same plain loop in SAME_STEP mode",
             f"{ratio('EvalRunner', 'plain loop same-step'):.2f}x", ""],
            ["the same on the native CartPoleVectorEnv (NEXT_STEP)",
             f"{ratio('EvalRunner native', 'plain loop native'):.2f}x", ""]]
    if "TorchRL" in rates:
        rows.append(["EvalRunner.evaluate / TorchRL Evaluator (GymWrapper of a SyncVectorEnv)",
                     f"{ratio('EvalRunner', 'TorchRL'):.1f}x", ""])
    print(f"Throughput: CartPole, greedy untrained MLP agent, {NUM_ENVS} envs, {episodes} "
          f"episodes (~{steps} env steps, {statistics.mean(episode_lengths):.1f} per episode) "
          f"per evaluation, median of {rounds} rounds\n")
    print(format_table(rows, ["env steps per second", "ratio", "target"]) + "\n")


# --- 2. cost to training -------------------------------------------------------------------


def ppo_training(iterations: int, runner: EvalRunner | None, background: bool,
                 eval_every: int = 2) -> tuple[float, float]:
    """:class:`~syllabus_eval.demo.ppo.PPOTrainer` (CleanRL ``ppo.py``) on CartPole: 4 envs x 128
    steps, 4 epochs of 4 minibatches.

    Returns the training loop's seconds and the seconds until every evaluation is done.
    """
    envs = gym.make_vec("CartPole-v1", num_envs=4)
    trainer = PPOTrainer(envs, new_agent(1), seed=1)

    def evaluate(stats: IterationStats) -> None:
        if runner is None or (stats.iteration - 1) % eval_every:
            return
        if background:
            runner.trigger_eval(trainer.agent, step=stats.global_step)
        else:
            runner.evaluate(trainer.agent, step=stats.global_step)

    loop = ppo_seconds(trainer, iterations, after_update=evaluate)
    start = time.perf_counter()
    if runner is not None:
        while runner.wait() is not None:  # the evaluations still queued
            pass
    drained = loop + time.perf_counter() - start
    envs.close()
    return loop, drained


def training_cost(rounds: int, iterations: int, episodes: int) -> None:
    # The runner evaluates whatever weights it is handed; its evaluator is built on any agent
    # of the same shape.
    runner = EvalRunner(make_cartpole, CleanRLEvaluator(new_agent()), num_envs=NUM_ENVS,
                        num_episodes=episodes, max_steps=MAX_STEPS, busy_policy="queue")
    ppo_training(1, runner, background=False)  # warm-up
    # The three back to back in each round, so that each round's ratios compare.
    runs = interleaved({"alone": lambda _: ppo_training(iterations, None, background=False),
                        "inline": lambda _: ppo_training(iterations, runner, background=False),
                        "background": lambda _: ppo_training(iterations, runner,
                                                             background=True)}, rounds)
    runner.shutdown()
    loop = {name: [seconds for seconds, _ in values] for name, values in runs.items()}
    drained = [seconds for _, seconds in runs["background"]]
    rows = [["training loop, background / inline evaluations",
             median_ratio(loop["background"], loop["inline"])],
            ["slowdown, background evaluations", median_ratio(loop["background"], loop["alone"])],
            ["slowdown, inline evaluations", median_ratio(loop["inline"], loop["alone"])],
            ["background evaluations until the last result / inline evaluations",
             median_ratio(drained, loop["inline"])],
            ["slowdown, background evaluations, until the last result",
             median_ratio(drained, loop["alone"])]]
    print(f"Training cost: CleanRL PPO on CartPole, {iterations} iterations, an evaluation "
          f"({episodes} episodes, {NUM_ENVS} envs) every other iteration, median of {rounds} "
          "rounds; slowdown: over no evaluation\n")
    print(format_table([[name, f"{ratio:.2f}x"] for name, ratio in rows],
                       ["wall-clock time", "ratio"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets")
    quick = parser.parse_args().quick
    throughput(rounds=1 if quick else 7, episodes=40 if quick else 400)
    training_cost(rounds=1 if quick else 5, iterations=2 if quick else 12,
                  episodes=8 if quick else 200)


if __name__ == "__main__":
    main()
