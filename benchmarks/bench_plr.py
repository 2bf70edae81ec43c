"""PLR's cost to training, and its scoring throughput, measured side by side in one process.

Usage::

    python benchmarks/bench_plr.py                 # about a minute on 2 CPU cores
    python benchmarks/bench_plr.py --rounds 5 --iterations 20

A CleanRL-style PPO loop (``ppo.py``: MLPAgent on CartPole, 4 envs, 128 steps per rollout,
4 epochs of 4 minibatches of real Adam steps) runs in three set-ups, interleaved round by
round so that drift hits them alike:

- ``plain``: the envs as they are (the baseline);
- ``domain randomization``: each env wrapped, drawing a pole length at every reset;
- ``PLR``: the same wrapper feeding a PrioritizedLevelReplay whose worker thread scores every
  step with ``get_value`` on a copy of the training agent while the loop trains.

All three run with torch's default intra-op threads and again with one: on few cores the
worker's queries and the training loop's intra-op threads compete for the same cores. Then
the worker's scoring capacity: recorded CartPole episodes pushed into PLR as fast as one
thread can, timed until every step is scored (feedforward and recurrent agents). Everything
is reported as env steps per second and as ratios to the plain loop.
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

from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.agents import LSTMAgent, MLPAgent
from syllabus_eval.curricula import (
    Curriculum,
    CurriculumWrapper,
    DomainRandomization,
    Experience,
    PrioritizedLevelReplay,
)

POLE_LENGTHS = [0.25, 0.35, 0.5, 0.7, 1.0, 1.4]  # CartPole's half-length is 0.5
NUM_ENVS, NUM_STEPS, EPOCHS, MINIBATCHES = 4, 128, 4, 4  # CleanRL ppo.py's CartPole defaults


def set_pole(env: gym.Env, task: float) -> None:
    env.unwrapped.length = task
    env.unwrapped.polemass_length = env.unwrapped.masspole * task


def make_envs(curriculum: Curriculum | None) -> gym.vector.SyncVectorEnv:
    if curriculum is None:
        return gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * NUM_ENVS)
    return gym.vector.SyncVectorEnv(
        [lambda: CurriculumWrapper(gym.make("CartPole-v1"), curriculum, set_task=set_pole)]
        * NUM_ENVS)


def ppo_update(agent: nn.Module, optimizer: torch.optim.Optimizer, obs, actions, log_probs,
               advantages, returns) -> None:
    """CleanRL ppo.py's update: clipped surrogate, value loss, entropy bonus."""
    batch = len(obs)
    for _ in range(EPOCHS):
        order = torch.randperm(batch)
        for index in order.split(batch // MINIBATCHES):
            _, new_log_prob, entropy, value = agent.get_action_and_value(obs[index],
                                                                         actions[index])
            ratio = (new_log_prob - log_probs[index]).exp()
            adv = advantages[index]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
            value_loss = 0.5 * (value.view(-1) - returns[index]).pow(2).mean()
            loss = policy_loss - 0.01 * entropy.mean() + 0.5 * value_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
            optimizer.step()


def train(agent: nn.Module, envs: gym.vector.VectorEnv, iterations: int, seed: int) -> float:
    """Env steps per second of ``iterations`` PPO iterations (rollout + update)."""
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
    obs_buf = torch.zeros((NUM_STEPS, NUM_ENVS, 4))  # [T, B, obs]
    act_buf = torch.zeros((NUM_STEPS, NUM_ENVS), dtype=torch.long)  # [T, B]
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros((NUM_STEPS, NUM_ENVS)) for _ in range(4))
    obs, _ = envs.reset(seed=seed)
    next_obs, next_done = torch.Tensor(obs), torch.zeros(NUM_ENVS)
    start = time.perf_counter()
    for _ in range(iterations):
        for t in range(NUM_STEPS):
            obs_buf[t], done_buf[t] = next_obs, next_done
            with torch.no_grad():
                action, log_prob, _, value = agent.get_action_and_value(next_obs)
            act_buf[t], logp_buf[t], val_buf[t] = action, log_prob, value.view(-1)
            obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            rew_buf[t] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = torch.Tensor(obs)
            next_done = torch.as_tensor(np.logical_or(terminated, truncated), dtype=torch.float32)
        with torch.no_grad():  # GAE, gamma 0.99, lambda 0.95
            next_value = agent.get_value(next_obs).view(-1)
            advantages, last = torch.zeros_like(rew_buf), 0.0
            for t in reversed(range(NUM_STEPS)):
                not_done = 1.0 - (next_done if t == NUM_STEPS - 1 else done_buf[t + 1])
                following = next_value if t == NUM_STEPS - 1 else val_buf[t + 1]
                delta = rew_buf[t] + 0.99 * following * not_done - val_buf[t]
                last = delta + 0.99 * 0.95 * not_done * last
                advantages[t] = last
        ppo_update(agent, optimizer, obs_buf.view(-1, 4), act_buf.view(-1), logp_buf.view(-1),
                   advantages.view(-1), (advantages + val_buf).view(-1))
    elapsed = time.perf_counter() - start
    envs.close()
    return iterations * NUM_STEPS * NUM_ENVS / elapsed


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
            ) -> dict[str, tuple[float, float]]:
    """Per set-up (and the steps PLR scored during its runs): the median env steps/s and the
    median of its per-round ratios to the plain loop, which cancels drift between rounds."""
    rates: dict[str, list[float]] = {"plain": [], "domain randomization": [], "PLR": [],
                                     "PLR scored": []}
    for round_ in range(rounds):
        for name in ("plain", "domain randomization", "PLR"):
            agent = MLPAgent(probe)
            if name == "PLR":
                with PrioritizedLevelReplay(POLE_LENGTHS, CleanRLEvaluator(agent),
                                            seed=round_) as plr:
                    start = time.perf_counter()
                    rates[name].append(train(agent, make_envs(plr), iterations, round_))
                elapsed = time.perf_counter() - start  # with scoring the last records
                rates["PLR scored"].append(sum(plr.scored_steps().values()) / elapsed)
            else:
                curriculum = DomainRandomization(POLE_LENGTHS) if name != "plain" else None
                rates[name].append(train(agent, make_envs(curriculum), iterations, round_))
    return {name: (statistics.median(values),
                   statistics.median(v / p for v, p in zip(values, rates["plain"])))
            for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=8, help="PPO iterations per run")
    args = parser.parse_args()
    torch.manual_seed(0)
    probe = make_envs(None)
    default_threads = torch.get_num_threads()
    results = {}
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        results[threads] = compare(args.rounds, args.iterations, probe)
    records = record_episodes(40_000)
    capacity = {
        "MLPAgent": scoring_capacity(lambda: CleanRLEvaluator(MLPAgent(probe)), records),
        "LSTMAgent": scoring_capacity(lambda: CleanRLEvaluator(LSTMAgent(probe), is_lstm=True),
                                      records[:8000]),
    }
    probe.close()

    print(f"PPO on CartPole ({NUM_ENVS} envs x {NUM_STEPS} steps, {EPOCHS}x{MINIBATCHES} Adam "
          f"steps per iteration), {args.rounds} interleaved rounds: median env steps/s, "
          "median ratio to the plain loop of the same round")
    for threads, rates in results.items():
        print(f"\ntorch threads: {threads}{'':<24}{'env steps/s':>12}{'vs plain':>10}")
        for name, (rate, ratio) in rates.items():
            label = "PLR worker, steps scored" if name == "PLR scored" else f"training, {name}"
            print(f"{label:<40}{rate:>12,.0f}{ratio:>10.2f}")
    plain = results[1]["plain"][0]
    print(f"\nPLR worker capacity (records queued up front, torch threads: 1)\n"
          f"{'':<40}{'steps/s':>12}{'vs plain':>10}")
    for agent, rate in capacity.items():
        print(f"{agent:<40}{rate:>12,.0f}{rate / plain:>10.2f}")


if __name__ == "__main__":
    main()
