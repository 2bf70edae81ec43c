"""PLR's cost to training, its scoring throughput, and env actors on Ray with a hosted PLR.

Usage::

    python benchmarks/bench_plr.py                 # a few minutes on 2 CPU cores
    python benchmarks/bench_plr.py --rounds 8 --iterations 10
    python benchmarks/bench_plr.py --quick         # a smoke run
    python benchmarks/bench_plr.py --no-ray        # without the Ray part

A CleanRL-style PPO loop (:class:`~syllabus_eval.demo.ppo.PPOTrainer`: MLPAgent on CartPole, 4 envs,
128 steps per rollout, 4 epochs of 4 minibatches of real Adam steps) runs in four set-ups:

- ``plain``: the envs as they are (the baseline);
- ``domain randomization``: each env wrapped, drawing a pole length at every reset;
- ``PLR``: the same wrapper feeding a PrioritizedLevelReplay whose worker thread scores every
  step with ``get_value`` on a copy of the training agent while the loop trains;
- ``PLR, worker process``: the same PLR built in a :class:`LocalCurriculumServer`'s worker
  process, fed in batches, the agent's weights pushed through shared memory after every
  optimizer step.

The first three train side by side in one process, one PPO iteration (about 0.1 s) each in turn,
the order rotating: this machine's speed drifts (the same loop went from 81 to 98 ms per
iteration within a minute), and alternating at this grain cancels most of it: two identical
loops measured this way gave per-round ratios of 0.94-1.10 (median 1.01) over 20 rounds of 12
iterations, against 0.81-1.09 (median 0.96) for 7 rounds of whole runs back to back. The worker
process set-up's iteration ends once its curriculum has scored every batch the client shipped
(``server.call("flush")``): no scoring spills into another set-up's time, and PLR is charged the
wait for its last batch (about 0.5 ms per iteration here), which in training overlaps the next
rollout. The records still in the client's buffer ship with the loop's next records, in PLR's
own time, as in training (``server.flush()`` would also ship them: a partial batch, sent and
scored while training waits, that training never pays for). PLR in the training process cannot
train beside the others: while its worker thread lives, the intra-op threads its queries start
slowed every loop in the process (the plain loop to 0.4x its speed at two threads); it is
measured in whole runs, each closing its PLR, interleaved with whole plain runs. All of it runs
with torch's default intra-op threads and again with one. Then the worker's scoring capacity:
recorded CartPole episodes pushed into PLR as fast as one thread can, timed until every step is
scored (feedforward and recurrent agents: the recurrent one scores whole segments, one
``get_value_sequence`` query per batch); the weights do not change meanwhile, so it is an upper
bound. It is measured in rounds interleaved with the plain loop at one thread, its baseline.
Everything is reported as env steps per second and as ratios to the plain loop of the same
round, median (min-max) over rounds; the PLR set-ups trained side by side also as ratios to
domain randomization (the same wrapper, a curriculum that scores nothing).

Last, env actors on Ray (a local Ray on this machine): 1, 2 and 4 actors, each stepping 4
CartPole envs with random actions, plain or through CurriculumWrappers drawing from PLR hosted by
a :class:`RayCurriculumServer` (which scores every step); total env steps per second from the
first step to the last actor's end, median (min-max) over interleaved rounds, and the ratio of
the hosted to the plain set-up of the same round and actor count.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace

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
    LocalCurriculumServer,
    PrioritizedLevelReplay,
    RayCurriculumServer,
)
from syllabus_eval.demo.agents import LSTMAgent, MLPAgent  # noqa: E402
from syllabus_eval.demo.ppo import PPOConfig, PPOTrainer  # noqa: E402
from syllabus_eval.results.report import format_table  # noqa: E402

POLE_LENGTHS = [0.25, 0.35, 0.5, 0.7, 1.0, 1.4]  # CartPole's half-length is 0.5
NUM_ENVS = 4
# CartPole's spaces, for agents built where a curriculum is hosted (no env captured).
SPACES = SimpleNamespace(single_observation_space=gym.spaces.Box(-np.inf, np.inf, (4,)),
                         single_action_space=gym.spaces.Discrete(2))
CONFIG = PPOConfig()  # CleanRL ppo.py's CartPole defaults: 128 steps, 4 epochs of 4 minibatches
SIDE_BY_SIDE = ["plain", "domain randomization", "PLR, worker process"]


def set_pole(env: gym.Env, task: float) -> None:
    env.unwrapped.length = task
    env.unwrapped.polemass_length = env.unwrapped.masspole * task


def hosted_plr(seed: int) -> PrioritizedLevelReplay:
    """PLR as the worker process builds it: on its own MLPAgent, whose weights the pushes
    replace."""
    return PrioritizedLevelReplay(POLE_LENGTHS, CleanRLEvaluator(MLPAgent(SPACES)), seed=seed)


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


def compare(setups: list[str], rounds: int, iterations: int, probe: gym.vector.VectorEnv
            ) -> dict[str, tuple[float, str, str]]:
    """Per set-up of ``setups`` (``"plain"`` among them): the median env steps/s over rounds and
    its per-round ratios to the plain loop. The set-ups train side by side, one PPO
    iteration each in turn (the order rotating), so that the machine's drift hits them
    alike; a PLR set-up's iteration ends once its curriculum has scored all the client shipped
    (module docs), so no scoring spills into another set-up's time. A round is ``iterations``
    iterations of each. PLR set-ups also get their ratio to domain randomization's round."""
    agents = {name: MLPAgent(probe) for name in setups}
    with contextlib.ExitStack() as stack:
        builders = {
            "plain": lambda: None,
            "domain randomization": lambda: DomainRandomization(POLE_LENGTHS),
            "PLR, worker process": lambda: stack.enter_context(LocalCurriculumServer(
                partial(hosted_plr, 0), agent=agents["PLR, worker process"])),
        }
        curricula = {name: builders[name]() for name in setups}
        total = (rounds * iterations + 1) * CONFIG.num_steps * NUM_ENVS
        runs = {}
        for name, curriculum in curricula.items():
            source = getattr(curriculum, "client", curriculum)
            envs = stack.enter_context(contextlib.closing(make_envs(source)))  # before its host
            # All the client shipped is scored; its buffer goes with the next records.
            scored = (partial(curriculum.call, "flush")
                      if isinstance(curriculum, LocalCurriculumServer) else None)
            runs[name] = (PPOTrainer(envs, agents[name], CONFIG, seed=0).iterate(total), scored)

        def one_iteration(name: str) -> float:
            iterations_left, scored = runs[name]
            start = time.perf_counter()
            next(iterations_left)
            if scored is not None:
                scored()
            return time.perf_counter() - start

        for name in setups:  # warm-up: first calls, allocations, the OS's caches
            one_iteration(name)
        seconds: dict[str, list[float]] = {name: [] for name in setups}
        turn = 0
        for _ in range(rounds):
            spent = dict.fromkeys(setups, 0.0)
            for _ in range(iterations):
                first = turn % len(setups)
                for name in setups[first:] + setups[:first]:
                    spent[name] += one_iteration(name)
                turn += 1
            for name in setups:
                seconds[name].append(spent[name])
    steps = iterations * CONFIG.num_steps * NUM_ENVS
    rates = {name: [steps / spent for spent in seconds[name]] for name in setups}
    wrapped = rates.get("domain randomization")
    return {name: (statistics.median(values), ratio_text(values, rates["plain"]),
                   ratio_text(values, wrapped) if wrapped and name.startswith("PLR") else "")
            for name, values in rates.items()}


def in_process(rounds: int, iterations: int, probe: gym.vector.VectorEnv
               ) -> tuple[float, str, str]:
    """PLR with its worker thread in the training process: whole runs of ``iterations``
    iterations, interleaved with whole plain runs (while its thread lives, the intra-op
    threads its queries start slow any loop trained beside it). The median env steps/s, the
    ratio text to plain, and an empty one (no domain randomization beside it)."""

    def with_plr(round_: int) -> float:
        agent = MLPAgent(probe)
        with PrioritizedLevelReplay(POLE_LENGTHS, CleanRLEvaluator(agent), seed=round_) as plr:
            envs = make_envs(plr)
            iterations_left = PPOTrainer(envs, agent, CONFIG, seed=round_).iterate(
                iterations * CONFIG.num_steps * NUM_ENVS)
            start = time.perf_counter()
            for _ in iterations_left:
                pass
            plr.flush()  # as in the side-by-side set-ups: charged its scoring's last wait
            seconds = time.perf_counter() - start
            envs.close()
        return iterations * CONFIG.num_steps * NUM_ENVS / seconds

    runs = interleaved({"plain": lambda round_: train(MLPAgent(probe), make_envs(None),
                                                      iterations, round_),
                        "PLR": with_plr}, rounds + 1)  # the first round: a warm-up
    return (statistics.median(runs["PLR"][1:]),
            ratio_text(runs["PLR"][1:], runs["plain"][1:]), "")


class CartPoleRunner:
    """An env actor: NUM_ENVS CartPole envs stepped with random actions, plain or each drawing
    its pole length from a hosted curriculum's client (and reporting every step to it)."""

    def __init__(self, client: object | None, seed: int) -> None:
        torch.set_num_threads(1)
        if client is None:
            self.envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * NUM_ENVS)
        else:
            self.envs = gym.vector.SyncVectorEnv([lambda: CurriculumWrapper(
                gym.make("CartPole-v1"), client, set_task=set_pole)] * NUM_ENVS)
        self.client = client
        self.envs.reset(seed=seed)
        self.rng = np.random.default_rng(seed)

    def run(self, steps: int) -> int:
        """Env steps taken: ``steps`` vector steps of random actions."""
        for _ in range(steps):
            self.envs.step(self.rng.integers(2, size=NUM_ENVS))
        return steps * NUM_ENVS

    def flush(self) -> None:
        if self.client is not None:
            self.client.flush()

    def close(self) -> None:
        self.envs.close()


def ray_env_actors(rounds: int, steps: int, counts: tuple[int, ...] = (1, 2, 4)
                   ) -> dict[str, list[float]]:
    """Env steps/s of ``n`` env actors for each ``n`` in ``counts``, plain and with PLR
    hosted in a Ray actor: ``{"n plain": [...], "n PLR": [...], "n PLR scored": [...]}``
    (the last: until the curriculum has scored every step, the clients' and PLR's queues
    drained)."""
    import cloudpickle
    import ray

    if __name__ != "__main__":  # imported, not run: its functions travel by value all the same
        for pickler in (cloudpickle, ray.cloudpickle):
            pickler.register_pickle_by_value(sys.modules[__name__])
    # Logical CPUs for scheduling every actor at once; the machine has what it has.
    ray.init(num_cpus=2 * max(counts) + 2, include_dashboard=False, log_to_driver=False)
    server = RayCurriculumServer(partial(hosted_plr, 0), num_cpus=1)
    runner = ray.remote(num_cpus=1)(CartPoleRunner)
    plain = [runner.remote(None, seed=i) for i in range(max(counts))]
    hosted = [runner.remote(server.client, seed=i) for i in range(max(counts))]
    ray.get([actor.run.remote(10) for actor in plain + hosted])  # warm-up, and all started

    def measure(actors: list, scored: list[float] | None) -> float:
        start = time.perf_counter()
        total = sum(ray.get([actor.run.remote(steps) for actor in actors]))
        rate = total / (time.perf_counter() - start)
        if scored is not None:  # untimed for the rate: what was left to score
            ray.get([actor.flush.remote() for actor in actors])
            server.flush()
            scored.append(total / (time.perf_counter() - start))
        return rate

    samples: dict[str, list[float]] = {}
    candidates = {}
    for n in counts:
        samples[f"{n} PLR scored"] = []
        candidates[f"{n} plain"] = partial(lambda n, _: measure(plain[:n], None), n)
        candidates[f"{n} PLR"] = partial(
            lambda n, _: measure(hosted[:n], samples[f"{n} PLR scored"]), n)
    samples.update(interleaved(candidates, rounds))
    ray.get([actor.close.remote() for actor in plain + hosted])
    server.close()
    ray.shutdown()
    return samples


def rate_text(rates: list[float]) -> str:
    """``median (min-max)`` of rates over rounds."""
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def print_ray_table(samples: dict[str, list[float]], rounds: int, steps: int) -> None:
    print(f"\nEnv actors on Ray ({NUM_ENVS} CartPole envs each, random actions, {steps} vector "
          f"steps per actor and run), {rounds} interleaved rounds: total env steps/s, median "
          "(min-max); with PLR hosted by RayCurriculumServer against plain actors of the same "
          "round\n")
    rows = []
    for n in sorted({int(key.split()[0]) for key in samples}):
        plain, hosted, scored = (samples[f"{n} {kind}"] for kind in ("plain", "PLR",
                                                                     "PLR scored"))
        rows.append([n, rate_text(plain), rate_text(hosted), ratio_text(hosted, plain),
                     ratio_text(scored, plain)])
    print(format_table(rows, ["env actors", "plain env steps/s", "with PLR env steps/s",
                              "with PLR / plain", "until scored / plain"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10,
                        help="PPO iterations of each set-up per round")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one round of one iteration, fewer records to score")
    parser.add_argument("--no-ray", action="store_true", help="skip the env actors on Ray")
    args = parser.parse_args()
    rounds, iterations = (1, 1) if args.quick else (args.rounds, args.iterations)
    torch.manual_seed(0)
    probe = make_envs(None)
    default_threads = torch.get_num_threads()
    results = {}
    for threads in (default_threads, 1):
        torch.set_num_threads(threads)
        results[threads] = compare(SIDE_BY_SIDE, rounds, iterations, probe)
        results[threads]["PLR (whole runs)"] = in_process(rounds, iterations, probe)
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
          f"{CONFIG.update_epochs}x{CONFIG.num_minibatches} Adam steps per iteration), the "
          f"set-ups side by side, one iteration each in turn, {rounds} rounds of {iterations} "
          "iterations (PLR in the training process: whole runs of as many iterations, "
          "interleaved with plain ones): median env steps/s, median ratio to the plain loop of "
          "the same round (min-max)\n")
    rows = [[threads, f"training, {name}", f"{rate:,.0f}", *ratios]
            for threads, rates in results.items() for name, (rate, *ratios) in rates.items()]
    print(format_table(rows, ["torch threads", "set-up", "env steps/s", "vs plain",
                              "vs domain randomization"]))
    print("\n(vs domain randomization: the same loop through the same wrapper, its curriculum "
          "scoring nothing: what PLR's scoring costs on its own)")
    print("\nPLR worker capacity (records queued up front, torch threads: 1; the weights do "
          "not change meanwhile, so no copies: an upper bound) against the plain loop at 1 "
          f"thread ({statistics.median(capacity['plain']):,.0f} env steps/s), {rounds} "
          "interleaved rounds\n")
    print(format_table([[agent, f"{statistics.median(rates):,.0f}",
                         ratio_text(rates, capacity["plain"])]
                        for agent, rates in capacity.items() if agent != "plain"],
                       ["agent", "steps/s", "vs plain"]))
    if not args.no_ray and importlib.util.find_spec("ray") is None:
        print("\nEnv actors on Ray: skipped, Ray is not installed (pip install "
              "'syllabus-eval[ray]')")
    elif not args.no_ray:
        ray_steps = 100 if args.quick else 1000
        print_ray_table(ray_env_actors(rounds, ray_steps), rounds, ray_steps)


if __name__ == "__main__":
    main()
