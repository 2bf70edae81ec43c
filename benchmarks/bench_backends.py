"""What a background evaluation costs a training loop, per backend; what a trigger costs per agent
size; what a second worker gains.

Usage::

    python benchmarks/bench_backends.py            # about fifteen minutes on 2 cores
    python benchmarks/bench_backends.py --quick    # a smoke run

1. Training cost (issue #22): CleanRL's PPO (:class:`~syllabus_eval.demo.ppo.PPOTrainer`, 4
   CartPole envs x 128 steps per iteration, 4 epochs of 4 minibatches, MLP agent, PyTorch's
   default threads) calls ``maybe_trigger`` after every iteration of a runner built with
   default settings but ``num_episodes=100, eval_every=1024`` (an evaluation every other
   iteration; one still running when the next is due is skipped, the default), on the
   ``"auto"`` default backend and on ``"thread"``, ``"process"`` and ``"ray"``. Each figure is
   the training loop's wall-clock time as a ratio over the same loop without evaluation run
   just before it (speed: its inverse), and the same until the last evaluation is done; the
   order of the backends rotates from round to round; median (min-max) over rounds. The
   evaluations each round completed are counted, since skipping more would cost less.
2. Trigger cost against the agent's size: the time ``trigger_eval`` takes on the training
   thread with the ``"process"`` backend (the weights copied into shared memory), over one copy
   of the weights into memory allocated before, for CleanRL's CartPole MLP, its Atari CNN and a
   50M-parameter MLP; beside it the hand-over it replaces (a private copy at the trigger, then
   pickled for the worker) over the same copy.
3. Worker speed-up: a blocking evaluation on an env that sleeps 2 ms per step (a slow
   simulator), 8 envs, 16 episodes of at most 50 steps, with one worker and with two, for both
   worker backends: the ratio of their times (same episodes, same numbers).

Ratios, in Markdown tables (absolute figures on a shared machine say little; the trigger table
gives milliseconds beside them for scale).
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch
from bench_rollout import NUM_ENVS, AtariShaped, make_cartpole, new_agent
from timing import ratio_text
from torch import nn

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, EvalSchedule
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.demo.agents import CNNAgent, MLPAgent
from syllabus_eval.demo.ppo import PPOConfig, PPOTrainer
from syllabus_eval.evaluation.backends import as_backend
from syllabus_eval.query.weights import snapshot_state_dict
from syllabus_eval.results.report import format_table

EVAL_EVERY = 1024  # env steps: every other PPO iteration (4 envs x 128 steps)
STEP_DELAY = 0.002  # seconds per step of the slow env
SLOW_MAX_STEPS = 50  # its episodes are cut there: each evaluation takes a second or two
BACKENDS = {"default": {}, "thread": {"backend": "thread"}, "process": {"backend": "process"},
            "ray": {"backend": "ray"}}


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


# --- 1. cost to training ---------------------------------------------------------------------


class Loop:
    """The PPO loop with a runner that evaluates every ``EVAL_EVERY`` env steps; the runner
    lives across rounds (its schedule carries on from round to round)."""

    def __init__(self, runner: EvalRunner | None) -> None:
        self.runner, self.offset, self.results = runner, 0, 0
        if runner is not None:
            runner.callbacks.append(lambda _: self.count())

    def count(self) -> None:
        self.results += 1

    def warm_up(self) -> None:
        """Train until background evaluations run where they will: the default's worker takes
        seconds to start, and evaluations due meanwhile run in the runner's thread."""
        backend = self.runner._backend
        for _ in range(20):
            self.run(2)
            if getattr(backend, "background", None) != "process" or backend.process is not None:
                return

    def run(self, iterations: int) -> tuple[float, float, int]:
        """Seconds of the training loop, seconds until every evaluation is done, and the
        evaluations done."""
        envs = gym.make_vec("CartPole-v1", num_envs=4)
        agent = new_agent(1)
        trainer = PPOTrainer(envs, agent, PPOConfig(), seed=1)
        batch = trainer.config.num_steps * envs.num_envs
        done_before = self.results
        start = time.perf_counter()
        for stats in trainer.iterate(iterations * batch):
            if self.runner is not None:
                self.runner.maybe_trigger(agent, step=self.offset + stats.global_step)
        loop = time.perf_counter() - start
        if self.runner is not None:
            while self.runner.wait() is not None:  # the evaluation still running
                pass
        drained = time.perf_counter() - start
        self.offset += iterations * batch + EVAL_EVERY  # the next round starts with one due
        envs.close()
        return loop, drained, self.results - done_before


def training_cost(backends: list[str], rounds: int, iterations: int,
                  episodes: int) -> dict[str, list[str]]:
    """Per backend: loop time over no evaluation, its speed, time until the last result over
    no evaluation (``median (min-max)``), and the evaluations done per round."""
    loops = {backend: Loop(EvalRunner(make_cartpole, CleanRLEvaluator(new_agent()),
                                      num_episodes=episodes,
                                      schedule=EvalSchedule(every=EVAL_EVERY), **BACKENDS[backend]))
             for backend in backends}
    alone = Loop(None)
    alone.run(1)  # warm-up
    for loop in loops.values():
        loop.warm_up()  # starts the workers, which a training run pays once
    times: dict[str, list[tuple[float, float, float, int]]] = {b: [] for b in backends}
    for round_ in range(rounds):
        # Each backend against a run without evaluation right before it, in an order that
        # rotates from round to round, so that drifts in the machine's speed cancel out.
        for backend in backends[round_ % len(backends):] + backends[:round_ % len(backends)]:
            seconds, _, _ = alone.run(iterations)
            times[backend].append((seconds, *loops[backend].run(iterations)))
    for loop in loops.values():
        loop.runner.shutdown()
    table = {}
    for backend, values in times.items():
        base = [t[0] for t in values]
        table[backend] = [ratio_text([t[1] for t in values], base),
                          ratio_text(base, [t[1] for t in values]),
                          ratio_text([t[2] for t in values], base),
                          "/".join(str(t[3]) for t in values)]
    return table


# --- 2. trigger cost against the agent's size ------------------------------------------------


class WideAgent(MLPAgent):
    """CleanRL's ``ppo.py`` agent with 5,000 hidden units: about 50M parameters (PyTorch's
    default initialisation: an orthogonal one of these matrices takes minutes on 2 cores)."""

    def __init__(self, envs: Any, hidden: int = 5000) -> None:
        nn.Module.__init__(self)
        inputs = envs.single_observation_space.shape[0]

        def mlp(outputs: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, outputs))

        self.critic, self.actor = mlp(1), mlp(int(envs.single_action_space.n))


def agents() -> dict[str, tuple[Callable[[], gym.Env], nn.Module]]:
    def spaces(env: gym.Env) -> Any:
        return type("Spaces", (), {"single_observation_space": env.observation_space,
                                   "single_action_space": env.action_space})

    cartpole, atari = spaces(make_cartpole()), spaces(AtariShaped())
    return {"CartPole MLP (CleanRL ppo.py)": (make_cartpole, MLPAgent(cartpole)),
            "Atari CNN (CleanRL ppo_atari.py)": (AtariShaped, CNNAgent(atari)),
            "50M-parameter MLP": (make_cartpole, WideAgent(cartpole))}


def trigger_cost(rounds: int, triggers: int) -> list[list[str]]:
    """Per agent: parameters, MB, one copy (ms), trigger (ms), trigger / one copy, pickled
    hand-over / one copy (medians over rounds, each the mean of ``triggers`` calls)."""
    return [[name, *trigger_row(make_env, agent, rounds, triggers)]
            for name, (make_env, agent) in agents().items()]


def trigger_row(make_env: Callable[[], gym.Env], agent: nn.Module, rounds: int,
                triggers: int) -> list[str]:
    tensors = list(agent.state_dict().values())
    targets = [torch.empty_like(tensor) for tensor in tensors]

    def copy() -> None:
        for target, tensor in zip(targets, tensors):
            target.copy_(tensor)

    def pickled() -> bytes:  # what the runner's thread paid per trigger before shared memory
        return pickle.dumps(snapshot_state_dict(agent), protocol=pickle.HIGHEST_PROTOCOL)

    runner = EvalRunner(EnvSpec(make_env, num_envs=1), CleanRLEvaluator(agent), num_episodes=1,
                        backend="process", episodes=EpisodeSettings(max_steps=1))
    samples: dict[str, list[float]] = {"copy": [], "trigger": [], "pickled": []}
    for round_ in range(rounds):
        samples["copy"].append(mean_seconds(copy, triggers))
        seconds = []
        for index in range(triggers):
            start = time.perf_counter()
            runner.trigger_eval(agent, step=round_ * triggers + index)
            seconds.append(time.perf_counter() - start)
            runner.wait()
        samples["trigger"].append(statistics.fmean(seconds))
        samples["pickled"].append(mean_seconds(pickled, triggers))
    runner.shutdown()
    parameters = sum(tensor.numel() for tensor in agent.parameters())
    megabytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors) / 2**20
    return [f"{parameters / 1e6:.2f}M", f"{megabytes:.1f}",
            f"{statistics.median(samples['copy']) * 1e3:.3f}",
            f"{statistics.median(samples['trigger']) * 1e3:.3f}",
            ratio_text(samples["trigger"], samples["copy"]),
            ratio_text(samples["pickled"], samples["copy"])]


def mean_seconds(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


# --- 3. a second worker ----------------------------------------------------------------------


def worker_speedup(backend: str, rounds: int, episodes: int) -> str:
    """Time of a slow-env evaluation with one worker over its time with two, per round."""
    agent = new_agent(2)
    # Half a CPU per Ray actor: the three actors of both runners fit in a 2-CPU Ray.
    options = {"num_cpus": 0.5} if backend == "ray" else {}
    runners = [EvalRunner(EnvSpec(SlowCartPole, num_envs=NUM_ENVS), CleanRLEvaluator(new_agent()),
                          num_episodes=episodes, episodes=EpisodeSettings(max_steps=SLOW_MAX_STEPS),
                          backend=as_backend(backend, num_workers=workers, **options))
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
    warnings.filterwarnings("ignore", message="max_steps=")  # the trigger runs cut at 1 step
    ray = start_ray()
    backends = [name for name in BACKENDS if name != "ray" or ray is not None]
    rounds, iterations, episodes = (1, 4, 100) if quick else (5, 12, 100)
    cost = training_cost(backends, rounds, iterations, episodes)
    speedup = {backend: worker_speedup(backend, 1 if quick else 5, 8 if quick else 16)
               for backend in ("process", "ray") if backend in backends}
    if ray is not None:
        ray.shutdown()
    print(f"Background evaluation during PPO on CartPole ({iterations} iterations of 4 envs x "
          f"128 steps, default settings with num_episodes={episodes} and eval_every="
          f"{EVAL_EVERY}; median (min-max) of {rounds} rounds) and a slow-env evaluation "
          f"({STEP_DELAY * 1000:.0f} ms per step) with 2 workers instead of 1; "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}\n")
    rows = [[backend, *cost[backend], speedup.get(backend, "n/a")] for backend in backends]
    print(format_table(rows, ["backend", "training loop / no evaluation",
                              "training speed / no evaluation",
                              "until the last result / no evaluation",
                              "evaluations done per round", "slow env: 2 workers speed-up"]))
    rounds = 3 if quick else 7
    print(f"\nTrigger cost, backend='process' (median of {rounds} rounds, each the mean of 5 "
          "triggers); ratios over one copy of the weights into memory allocated before\n")
    print(format_table(trigger_cost(rounds, 5), [
        "agent", "parameters", "MB", "one copy (ms)", "trigger (ms)", "trigger / one copy",
        "pickled hand-over (before) / one copy"]))


if __name__ == "__main__":
    main()
