"""Evaluation throughput and its cost to training, measured side by side in one process.

Usage::

    python benchmarks/bench_rollout.py            # about a minute
    python benchmarks/bench_rollout.py --quick    # a smoke run

1. Env steps per second of ``EvalRunner.evaluate`` on CartPole, CleanRL's MLP agent acting
   greedily over 8 envs, as a ratio against a hand-written Gymnasium vector loop with the same
   policy over the same envs, CleanRL's ``SyncVectorEnv`` of ``gym.make`` envs (target: at
   least 0.9x); the same pair on Gymnasium's native ``CartPoleVectorEnv`` (what
   ``gym.make_vec`` builds, handed to the runner as a vector env); and against TorchRL's
   ``Evaluator`` (when installed). Rounds alternate between the contenders; each figure is
   the median over rounds.
2. A CleanRL-style PPO training loop on CartPole that evaluates every other iteration: its
   wall-clock time with the evaluations in the background (``trigger_eval``) as a ratio
   against the same evaluations run inline (``evaluate``), and each against no evaluation.

Only ratios are printed: absolute figures on a shared machine say little.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from syllabus_eval import EvalRunner
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.agents import MLPAgent

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


def sync_cartpoles() -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([make_cartpole] * NUM_ENVS)  # CleanRL's ppo.py


def native_cartpoles() -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=NUM_ENVS)  # CartPoleVectorEnv


def plain_loop_rate(agent: MLPAgent, steps: int,
                    make_vector_env: Callable[[], gym.vector.VectorEnv]) -> float:
    """A hand-written NEXT_STEP loop: autoreset steps are done but not counted as env steps."""
    envs = make_vector_env()
    obs, _ = envs.reset(seed=0)
    autoreset = np.zeros(NUM_ENVS, dtype=bool)
    counted = 0
    start = time.perf_counter()
    while counted < steps:
        with torch.no_grad():
            action = agent.actor(torch.Tensor(obs)).argmax(dim=-1).numpy()  # [B]
        obs, _, terminated, truncated, _ = envs.step(action)
        counted += int((~autoreset).sum())
        autoreset = terminated | truncated
    rate = counted / (time.perf_counter() - start)
    envs.close()
    return rate


def torchrl_contender(agent: MLPAgent, episodes: int) -> Callable[[], float] | None:
    try:
        from tensordict.nn import TensorDictModule
        from torchrl.collectors import Evaluator
        from torchrl.envs import GymEnv, SerialEnv
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
    evaluator = Evaluator(
        lambda: SerialEnv(NUM_ENVS, lambda: GymEnv("CartPole-v1",
                                                   categorical_action_encoding=True)),
        policy, num_trajectories=episodes, max_steps=MAX_STEPS)

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
    steps = sum(r.length for r in runner.evaluate().episodes)  # warm-up, and the work size
    native.evaluate()
    contenders: dict[str, Callable[[], float]] = {
        "EvalRunner": lambda: runner_rate(runner),
        "plain loop": lambda: plain_loop_rate(agent, steps, sync_cartpoles),
        "EvalRunner native": lambda: runner_rate(native),
        "plain loop native": lambda: plain_loop_rate(agent, steps, native_cartpoles),
    }
    torchrl = torchrl_contender(agent, episodes)
    if torchrl is not None:
        torchrl()  # warm-up: the first call builds its collector
        contenders["TorchRL"] = torchrl
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, measure in contenders.items():
            rates[name].append(measure())
    runner.shutdown()
    native.shutdown()
    if torchrl is not None:
        torchrl.shutdown()
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"Throughput: CartPole, greedy MLP agent, {NUM_ENVS} envs, {episodes} episodes "
          f"(~{steps} env steps) per evaluation, median of {rounds} rounds")
    print(f"  EvalRunner.evaluate / plain loop, SyncVectorEnv of gym.make envs: "
          f"{median['EvalRunner'] / median['plain loop']:.2f}x (target >= 0.9x)")
    print(f"  the same on the native CartPoleVectorEnv:                  "
          f"{median['EvalRunner native'] / median['plain loop native']:.2f}x")
    if "TorchRL" in median:
        print(f"  EvalRunner.evaluate / TorchRL Evaluator (SerialEnv):       "
              f"{median['EvalRunner'] / median['TorchRL']:.1f}x")


# --- 2. cost to training -------------------------------------------------------------------


def ppo_training(iterations: int, runner: EvalRunner | None, background: bool,
                 eval_every: int = 2) -> tuple[float, float]:
    """CleanRL ``ppo.py`` on CartPole (4 envs x 128 steps, 4 epochs of 4 minibatches).

    Returns the training loop's seconds and the seconds until every evaluation is done.
    """
    num_envs, num_steps, epochs, minibatches = 4, 128, 4, 4
    gamma, lam, clip, batch = 0.99, 0.95, 0.2, 4 * 128
    envs = gym.make_vec("CartPole-v1", num_envs=num_envs)
    agent = new_agent(1)
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
    obs = torch.zeros((num_steps, num_envs, 4))
    actions = torch.zeros((num_steps, num_envs), dtype=torch.long)
    logprobs, rewards, dones, values = (torch.zeros((num_steps, num_envs)) for _ in range(4))
    next_obs = torch.Tensor(envs.reset(seed=1)[0])
    next_done = torch.zeros(num_envs)
    start = time.perf_counter()
    for iteration in range(iterations):
        for t in range(num_steps):
            obs[t], dones[t] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
            actions[t], logprobs[t], values[t] = action, logprob, value.flatten()
            next_obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            rewards[t] = torch.as_tensor(reward)
            next_obs = torch.Tensor(next_obs)
            next_done = torch.Tensor(terminated | truncated)
        with torch.no_grad():
            next_value = agent.get_value(next_obs).flatten()
            advantages = torch.zeros_like(rewards)
            last = 0
            for t in reversed(range(num_steps)):
                following = next_value if t == num_steps - 1 else values[t + 1]
                live = 1.0 - (next_done if t == num_steps - 1 else dones[t + 1])
                delta = rewards[t] + gamma * following * live - values[t]
                advantages[t] = last = delta + gamma * lam * live * last
            returns = advantages + values
        flat = (obs.reshape(batch, 4), actions.reshape(batch), logprobs.reshape(batch),
                advantages.reshape(batch), returns.reshape(batch))
        for _ in range(epochs):
            for index in torch.randperm(batch).chunk(minibatches):
                b_obs, b_actions, b_logprobs, b_adv, b_returns = (x[index] for x in flat)
                _, logprob, entropy, value = agent.get_action_and_value(b_obs, b_actions)
                ratio = (logprob - b_logprobs).exp()
                b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
                policy_loss = torch.max(-b_adv * ratio,
                                        -b_adv * ratio.clamp(1 - clip, 1 + clip)).mean()
                loss = (policy_loss + 0.5 * ((value.flatten() - b_returns) ** 2).mean()
                        - 0.01 * entropy.mean())
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
        if runner is not None and iteration % eval_every == 0:
            step = (iteration + 1) * batch
            if background:
                runner.trigger_eval(agent, step=step)
            else:
                runner.evaluate(agent, step=step)
    loop = time.perf_counter() - start
    if runner is not None:
        while runner.wait() is not None:  # the evaluations still queued
            pass
    envs.close()
    return loop, time.perf_counter() - start


def training_cost(rounds: int, iterations: int, episodes: int) -> None:
    # The runner evaluates whatever weights it is handed; its evaluator is built on any agent
    # of the same shape.
    runner = EvalRunner(make_cartpole, CleanRLEvaluator(new_agent()), num_envs=NUM_ENVS,
                        num_episodes=episodes, max_steps=MAX_STEPS, busy_policy="queue")
    ppo_training(1, runner, background=False)  # warm-up
    ratios: dict[str, list[float]] = {"background / inline": [], "background / alone": [],
                                      "inline / alone": [], "until the last result": []}
    for _ in range(rounds):  # the three back to back, so that each round's ratios compare
        alone, _ = ppo_training(iterations, None, background=False)
        inline, _ = ppo_training(iterations, runner, background=False)
        background, drained = ppo_training(iterations, runner, background=True)
        for name, ratio in zip(ratios, (background / inline, background / alone,
                                        inline / alone, drained / alone)):
            ratios[name].append(ratio)
    runner.shutdown()
    median = {name: statistics.median(values) for name, values in ratios.items()}
    print(f"Training cost: CleanRL PPO on CartPole, {iterations} iterations, an evaluation "
          f"({episodes} episodes, {NUM_ENVS} envs) every other iteration, median of {rounds} "
          "rounds")
    print(f"  training loop with background evaluations / with inline evaluations: "
          f"{median['background / inline']:.2f}x")
    print(f"  slowdown over no evaluation: background {median['background / alone']:.2f}x, "
          f"inline {median['inline / alone']:.2f}x (background, until the last result: "
          f"{median['until the last result']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny budgets")
    quick = parser.parse_args().quick
    throughput(rounds=1 if quick else 7, episodes=40 if quick else 400)
    training_cost(rounds=1 if quick else 5, iterations=2 if quick else 12,
                  episodes=8 if quick else 200)


if __name__ == "__main__":
    main()
