"""Evaluation throughput and its cost to training, measured side by side in one process.

Usage::

    python benchmarks/bench_rollout.py            # about five minutes on 2 CPU cores
    python benchmarks/bench_rollout.py --quick    # a smoke run

1. Counted env steps per second of ``EvalRunner.evaluate`` against a hand-written loop over
   the same envs with the same policy, as a user would write it. Each workload runs 8 envs;
   the runner counts the steps of its episodes (exact per-env quotas, each env's on its own
   env, tail included; and with the opt-in floating tail), the hand loop every sub-env step
   it takes (autoreset steps excluded) until its ``N``-th episode ends.

   - CartPole, CleanRL's ``ppo.py`` agent (untrained: short episodes, where resets and
     per-step bookkeeping weigh most), 200 episodes, greedy and sampled actions; the hand loop
     is CleanRL's ``SyncVectorEnv`` of ``gym.make`` envs, the runner gets the env factory.
   - The same on Gymnasium's native ``CartPoleVectorEnv`` (``gym.make_vec``), handed to both.
   - An Atari-shaped workload: CleanRL's ``ppo_atari.py`` CNN on ``[4, 84, 84]`` uint8
     frames (episodes of 10 to 30 steps, no emulator), 64 episodes, greedy: the forward
     dominates, so the fixed per-step cost shows at its smallest.
   - The default confidence intervals (``ci=0.95``, bootstrap) against ``ci=None``, which the
     rows above use: the cost of the intervals on a short evaluation.
   - TorchRL's ``Evaluator`` (when installed), set up as TorchRL recommends: a ``GymWrapper``
     around a ``SyncVectorEnv`` without autoreset, trajectories concatenated.
   - SB3's ``evaluate_policy`` (when installed) on a ``DummyVecEnv`` of the same envs with the
     same greedy policy, CartPole and the CNN: time to a finished evaluation of as many
     episodes (per-env quotas, as ours), counted as ours.

   Rounds alternate between contenders; each ratio is the median of the per-round ratios, with
   their range (min-max).
2. A CleanRL-style PPO training loop (``PPOTrainer``) on CartPole that evaluates every other
   iteration: its wall-clock time with the evaluations in the background (``trigger_eval``)
   as a ratio against the same evaluations run inline (``evaluate``), and each against no
   evaluation.

Only ratios are printed: absolute figures on a shared machine say little.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved, ppo_seconds, ratio_text  # noqa: E402

from syllabus_eval import (
    EnvSpec,
    EpisodeSettings,
    EvalRunner,  # noqa: E402
    EvalSchedule,
)
from syllabus_eval.adapters import CleanRLEvaluator  # noqa: E402
from syllabus_eval.demo.agents import CNNAgent, MLPAgent  # noqa: E402
from syllabus_eval.demo.ppo import IterationStats, PPOTrainer  # noqa: E402
from syllabus_eval.results.report import format_table  # noqa: E402

NUM_ENVS = 8
MAX_STEPS = 500
Act = Callable[[np.ndarray], np.ndarray]  # a hand loop's policy: observations -> actions


def make_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


class AtariShaped(gym.Env):
    """Frames of Atari's shape after CleanRL's wrappers (uint8 ``[4, 84, 84]``), 6 actions,
    episodes of 10 to 30 steps: an Atari evaluation's forward passes without an emulator."""

    observation_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    action_space = spaces.Discrete(6)
    frames = np.random.default_rng(0).integers(0, 256, (16, 4, 84, 84), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(10, 31))
        return self.frames[0], {}

    def step(self, action: Any):
        self.t += 1
        return self.frames[self.t % 16], 1.0, self.t >= self.length, False, {}


def new_agent(seed: int = 0) -> MLPAgent:
    """CleanRL ``ppo.py``'s CartPole agent, untrained, its weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return MLPAgent(gym.make_vec("CartPole-v1", num_envs=1))


# --- 1. throughput -------------------------------------------------------------------------


def hand_loop(envs: gym.vector.VectorEnv, act: Act, episodes: int) -> float:
    """Counted env steps per second of a hand-written loop: every sub-env step but NEXT_STEP
    autoreset steps, until its ``episodes``-th episode ends (CleanRL's evaluation loops)."""
    obs, _ = envs.reset(seed=0)
    autoreset = np.zeros(envs.num_envs, dtype=bool)
    counted = finished = 0
    start = time.perf_counter()
    while finished < episodes:
        with torch.no_grad():
            action = act(obs)
        obs, _, terminated, truncated, _ = envs.step(action)
        live = ~autoreset
        counted += int(live.sum())
        finished += int((live & (terminated | truncated)).sum())
        autoreset = terminated | truncated
    return counted / (time.perf_counter() - start)


def runner_rate(runner: EvalRunner) -> float:
    """Counted env steps per second of one ``evaluate()``: its episodes' steps."""
    start = time.perf_counter()
    result = runner.evaluate()
    return sum(r.length for r in result.episodes) / (time.perf_counter() - start)


def greedy_mlp(agent: MLPAgent) -> Act:
    return lambda obs: agent.actor(torch.Tensor(obs)).argmax(dim=-1).numpy()


def sampled_mlp(agent: MLPAgent) -> Act:
    return lambda obs: agent.get_action_and_value(torch.Tensor(obs))[0].numpy()


def greedy_cnn(agent: CNNAgent) -> Act:  # ppo_atari.py scales the frames inside its methods
    return lambda obs: agent.actor(agent.network(torch.Tensor(obs) / 255.0)).argmax(-1).numpy()


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
        envs = gym.vector.SyncVectorEnv([make_cartpole] * NUM_ENVS,
                                        autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        return GymWrapper(envs, categorical_action_encoding=True)

    evaluator = Evaluator(make_env, policy, num_trajectories=episodes, max_steps=MAX_STEPS,
                          collector_kwargs={"traj_format": "cat"})

    def rate() -> float:
        start = time.perf_counter()
        metrics = evaluator.evaluate()
        steps = float(metrics["eval/episode_length"]) * float(metrics["eval/num_episodes"])
        return steps / (time.perf_counter() - start)

    rate.shutdown = evaluator.shutdown  # type: ignore[attr-defined]
    return rate


def sb3_contender(act: Act, make_env: Callable[[], gym.Env], episodes: int
                  ) -> Callable[[], float] | None:
    """Counted env steps per second of SB3's ``evaluate_policy`` (per-env quotas, as ours) on
    a ``DummyVecEnv`` of the same envs with the same policy: its time to a finished
    evaluation, counted like ours."""
    try:
        from stable_baselines3.common.evaluation import evaluate_policy
        from stable_baselines3.common.vec_env import DummyVecEnv
    except ImportError as error:
        print(f"SB3: skipped ({error}); `pip install stable-baselines3` to compare")
        return None

    class Predictor:  # SB3's PolicyPredictor protocol, around the same greedy policy
        def predict(self, observation: np.ndarray, state: Any = None,
                    episode_start: Any = None, deterministic: bool = False
                    ) -> tuple[np.ndarray, None]:
            with torch.no_grad():
                return act(observation), None

    envs = DummyVecEnv([make_env] * NUM_ENVS)
    envs.seed(0)

    def rate() -> float:
        start = time.perf_counter()
        _, lengths = evaluate_policy(Predictor(), envs, n_eval_episodes=episodes,
                                     deterministic=True, return_episode_rewards=True,
                                     warn=False)
        return sum(lengths) / (time.perf_counter() - start)

    rate.close = envs.close  # type: ignore[attr-defined]
    return rate


def throughput(rounds: int, episodes: int, cnn_episodes: int) -> None:
    mlp = new_agent()
    torch.manual_seed(0)
    cnn = CNNAgent(gym.vector.SyncVectorEnv([AtariShaped]))
    sync_cartpoles = gym.vector.SyncVectorEnv([make_cartpole] * NUM_ENVS)  # CleanRL's ppo.py
    native = gym.make_vec("CartPole-v1", num_envs=NUM_ENVS)  # CartPoleVectorEnv
    sync_frames = gym.vector.SyncVectorEnv([AtariShaped] * NUM_ENVS)

    def runner(make_env: Callable[[], Any], agent: nn.Module, deterministic: bool = True,
               n: int = episodes, ci: float | None = None, max_steps: int | None = MAX_STEPS,
               floating: bool = False) -> EvalRunner:
        return EvalRunner(EnvSpec(make_env, num_envs=NUM_ENVS), CleanRLEvaluator(agent),
                          num_episodes=n,
                          episodes=EpisodeSettings(max_steps=max_steps, deterministic=deterministic,
                                                   ci=ci, interchangeable_slots=floating))

    # The native env keeps its own 500-step limit: it cannot reset single sub-envs.
    runners = {"greedy": runner(make_cartpole, mlp),
               "sampled": runner(make_cartpole, mlp, deterministic=False),
               "native": runner(native, mlp, max_steps=None),  # an instance: left open
               "cnn": runner(AtariShaped, cnn, n=cnn_episodes),
               "greedy floating": runner(make_cartpole, mlp, floating=True),
               "cnn floating": runner(AtariShaped, cnn, n=cnn_episodes, floating=True),
               "intervals": runner(make_cartpole, mlp, ci=0.95)}
    contenders: dict[str, Callable[[int], float]] = {
        name: lambda _, r=r: runner_rate(r) for name, r in runners.items()}
    contenders |= {
        "hand greedy": lambda _: hand_loop(sync_cartpoles, greedy_mlp(mlp), episodes),
        "hand sampled": lambda _: hand_loop(sync_cartpoles, sampled_mlp(mlp), episodes),
        "hand native": lambda _: hand_loop(native, greedy_mlp(mlp), episodes),
        "hand cnn": lambda _: hand_loop(sync_frames, greedy_cnn(cnn), cnn_episodes)}
    torchrl = torchrl_contender(mlp, episodes)
    if torchrl is not None:
        contenders["TorchRL"] = lambda _: torchrl()
    sb3 = {name: sb3_contender(act, make_env, n) for name, act, make_env, n in (
        ("SB3 greedy", greedy_mlp(mlp), make_cartpole, episodes),
        ("SB3 cnn", greedy_cnn(cnn), AtariShaped, cnn_episodes))}
    contenders |= {name: lambda _, rate=rate: rate() for name, rate in sb3.items()
                   if rate is not None}
    lengths = [r.length for r in runners["greedy"].evaluate().episodes]
    interleaved(contenders, 1)  # warm-up: first calls build envs, collectors, caches
    rates = interleaved(contenders, rounds)
    for r in runners.values():
        r.shutdown()
    if torchrl is not None:
        torchrl.shutdown()
    for rate in sb3.values():
        if rate is not None:
            rate.close()
    for envs in (sync_cartpoles, native, sync_frames):
        envs.close()

    def ratio(name: str, baseline: str) -> str:
        return ratio_text(rates[name], rates[baseline])

    rows = [
        [f"CartPole, greedy, {episodes} episodes: SyncVectorEnv of gym.make envs",
         ratio("greedy", "hand greedy"), ">= 0.95x"],
        ["CartPole, sampled actions, the same", ratio("sampled", "hand sampled"), ">= 0.95x"],
        ["CartPole, greedy, floating tail (interchangeable_slots=True)",
         ratio("greedy floating", "hand greedy"), ""],
        ["CartPole, greedy, native CartPoleVectorEnv", ratio("native", "hand native"),
         ">= 0.9x"],
        [f"Atari-shaped CNN (4x84x84 uint8), greedy, {cnn_episodes} episodes",
         ratio("cnn", "hand cnn"), ""],
        ["Atari-shaped CNN, greedy, floating tail", ratio("cnn floating", "hand cnn"), ""],
        ["CartPole greedy with the default intervals (ci=0.95) / ci=None",
         ratio("intervals", "greedy"), ""]]
    if "SB3 greedy" in rates:
        rows += [["CartPole greedy: EvalRunner / SB3 evaluate_policy (DummyVecEnv)",
                  ratio("greedy", "SB3 greedy"), ">= 1x"],
                 ["Atari-shaped CNN greedy: EvalRunner / SB3 evaluate_policy",
                  ratio("cnn", "SB3 cnn"), ">= 1x"]]
    if "TorchRL" in rates:
        rows.append(["CartPole greedy: EvalRunner / TorchRL Evaluator (GymWrapper)",
                     ratio_text(rates["greedy"], rates["TorchRL"], digits=1), ""])
    print(f"Throughput: counted env steps per second, {NUM_ENVS} envs, EvalRunner.evaluate "
          f"(ci=None unless said) / a hand-written loop over the same envs with the same policy, "
          f"median (min-max) of {rounds} rounds. CartPole episodes of the untrained agent: "
          f"{np.mean(lengths):.1f} steps on average (greedy)\n")
    print(format_table(rows, ["workload", "ratio", "target"]) + "\n")


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
    # of the same shape. The thread backend: what sharing the interpreter costs (the default
    # backend's cost is bench_backends.py's).
    runner = EvalRunner(EnvSpec(make_cartpole, num_envs=NUM_ENVS), CleanRLEvaluator(new_agent()),
                        num_episodes=episodes, backend="thread",
                        episodes=EpisodeSettings(max_steps=MAX_STEPS),
                        schedule=EvalSchedule(busy_policy="queue"))
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
             ratio_text(loop["background"], loop["inline"])],
            ["slowdown, background evaluations", ratio_text(loop["background"], loop["alone"])],
            ["slowdown, inline evaluations", ratio_text(loop["inline"], loop["alone"])],
            ["background evaluations until the last result / inline evaluations",
             ratio_text(drained, loop["inline"])],
            ["slowdown, background evaluations, until the last result",
             ratio_text(drained, loop["alone"])]]
    print(f"Training cost: CleanRL PPO on CartPole, {iterations} iterations, an evaluation "
          f"({episodes} episodes, {NUM_ENVS} envs) every other iteration, median (min-max) of "
          f"{rounds} rounds; slowdown: over no evaluation\n")
    print(format_table(rows, ["wall-clock time", "ratio"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets")
    quick = parser.parse_args().quick
    warnings.filterwarnings("ignore", module="torchrl")  # its set-up advice, every call
    # Several hundred episodes a round: shorter runs measure the machine more than the loop.
    throughput(rounds=1 if quick else 7, episodes=40 if quick else 600,
               cnn_episodes=8 if quick else 160)
    training_cost(rounds=1 if quick else 5, iterations=2 if quick else 12,
                  episodes=8 if quick else 200)


if __name__ == "__main__":
    main()
