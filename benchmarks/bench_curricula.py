"""Curricula on MiniGrid: held-out return and success of PPO under five curricula, same budget.

Usage::

    python benchmarks/bench_curricula.py                 # about 20-30 minutes on 2 CPU cores
    python benchmarks/bench_curricula.py --quick         # a few minutes
    python benchmarks/bench_curricula.py --seeds 5 --steps 300000 --out runs/curricula.png

A CleanRL-style PPO (:class:`~syllabus_eval.demo.ppo.PPOTrainer`, 8 envs, 128-step rollouts,
4 epochs of 4 minibatches) trains a small CNN (:class:`~syllabus_eval.integrations.minigrid.
MiniGridAgent`) on a fixed training set of MiniGrid levels, ``(env id, seed)`` pairs of five
envs of rising difficulty (Empty-Random-6x6, DoorKey-5x5, DoorKey-6x6, SimpleCrossingS9N1,
DoorKey-8x8), each level drawn at every reset by one of:

- ``domain randomization``: every training level equally likely (the baseline);
- ``PLR``: Prioritized Level Replay (Jiang et al. 2021), levels scored by value loss
  (``value_l1``) from the training stream by a worker thread;
- ``Robust PLR``: PLR⊥ (Jiang et al. 2021b), new levels scored by evaluation episodes of the
  current policy in a background thread, training only on replays of scored levels;
- ``Learnability``: Sampling For Learnability (Rutherford et al. 2024), levels scored
  ``p (1 - p)`` from success rates that an :class:`~syllabus_eval.EvalRunner` measures on a
  random subset of training levels (a few episodes each) every ``feed_every`` steps, handed
  over by the runner's callback (``on_result``);
- ``learning progress``: :class:`~syllabus_eval.curricula.LearningProgressCurriculum`
  (Kanitscheider et al. 2021), fed by the same evaluations.

Every run has the same number of training env steps; the env steps that Robust PLR,
Learnability and learning progress spend on their own evaluations are extra, counted and
reported, and their time is part of the run's throughput. An :class:`~syllabus_eval.EvalRunner`
with a ``test`` suite evaluates each run on held-out levels (seeds no training level has, and
grids none has: :func:`~syllabus_eval.integrations.minigrid.held_out_levels`) a few times
during training (sampled actions, as in training); those evaluations are not counted in the
throughput. The table gives, per curriculum, the interquartile mean over seeds of the final
held-out return and success, with a 95% percentile-bootstrap interval over seeds, the training
throughput (env steps per second) and its median ratio to domain randomization's run of the
same seed. The plot (``--out``) shows held-out return and success against training steps, the
mean over seeds and the range. A JSON file with every number lands beside it.

Curricula whose class this checkout lacks are skipped with a note. Runs are spread over
``--jobs`` worker processes (default 2, one PyTorch thread each).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from scipy import stats

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.curricula import (
    CurriculumWrapper,
    DomainRandomization,
    LearningProgressCurriculum,
    PrioritizedLevelReplay,
)
from syllabus_eval.demo.ppo import PPOConfig, PPOTrainer
from syllabus_eval.results.report import format_table
from syllabus_eval.results.statistics import iqm

try:
    from syllabus_eval.integrations.minigrid import (
        Level,
        MiniGridAgent,
        MiniGridLevels,
        held_out_levels,
        training_levels,
    )
except ImportError as error:  # the benchmark needs the extra; say which
    raise SystemExit(f"bench_curricula: {error}") from error

ENV_IDS = ("MiniGrid-Empty-Random-6x6-v0", "MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-6x6-v0",
           "MiniGrid-SimpleCrossingS9N1-v0", "MiniGrid-DoorKey-8x8-v0")
CURRICULA = ("domain randomization", "PLR", "Robust PLR", "Learnability", "learning progress")
BASELINE = "domain randomization"
# CleanRL's ppo.py settings but a larger learning rate (the MiniGrid agents of rl-starter-files
# use 1e-3): with 2.5e-4 DoorKey barely moves in this budget.
PPO = PPOConfig(num_steps=128, learning_rate=1e-3, gamma=0.99, gae_lambda=0.95,
                num_minibatches=4, update_epochs=4, ent_coef=0.01)
NUM_ENVS = 8
ECHO = partial(print, flush=True)  # progress lines show at once under nohup, too


class Budget(NamedTuple):
    """What one run spends (a NamedTuple: the benchmark also loads outside sys.modules)."""

    steps: int  # training env steps per run (a multiple of 8 envs x 128 steps)
    train_seeds: int  # training levels per env id
    test_seeds: int  # held-out levels per env id
    test_episodes: int  # held-out episodes per level per evaluation
    evals: int  # held-out evaluations per run, evenly spaced, the last at the end
    feed_every: int  # training steps between the evaluations that feed Learnability and LP
    feed_levels: int  # training levels each of those evaluates ...
    feed_episodes: int  # ... with this many episodes each: one episode's success is 0 or 1,
    # whose p (1 - p) is 0, so Learnability needs several to see a level as learnable


DEFAULT = Budget(steps=163_840, train_seeds=20, test_seeds=6, test_episodes=2, evals=5,
                 feed_every=16_384, feed_levels=8, feed_episodes=3)
QUICK = Budget(steps=24_576, train_seeds=5, test_seeds=2, test_episodes=1, evals=2,
               feed_every=4_096, feed_levels=5, feed_episodes=2)


class StepCounter(gym.Wrapper):
    """Counts the env steps of a curriculum's own evaluations (their extra cost)."""

    def __init__(self, env: gym.Env, counter: list[int]) -> None:
        super().__init__(env)
        self.counter = counter

    def step(self, action: Any) -> tuple:
        self.counter[0] += 1  # one writer per env; a lost update under threads is off by one
        return self.env.step(action)


def counted_levels(train: list[Level], counter: list[int]) -> gym.Env:
    return StepCounter(MiniGridLevels(train), counter)


def unavailable(name: str) -> str | None:
    """Why a curriculum cannot run in this checkout (``None``: it can)."""
    if name == "Robust PLR" and "robust" not in inspect.signature(
            PrioritizedLevelReplay).parameters:
        return "PrioritizedLevelReplay has no robust=True in this checkout"
    if name == "Learnability":
        try:
            from syllabus_eval.curricula import Learnability  # noqa: F401
        except ImportError:
            return "syllabus_eval.curricula.Learnability is not in this checkout"
    return None


def make_curriculum(name: str, train: list[Level], agent: torch.nn.Module, seed: int,
                    counter: list[int]) -> Any:
    """The curriculum ``name`` over the training levels."""
    if name == "domain randomization":
        return DomainRandomization(train, seed=seed)
    if name == "PLR":  # the paper's settings, on our PPO's discount and rollout length
        return PrioritizedLevelReplay(train, CleanRLEvaluator(agent), gamma=PPO.gamma,
                                      num_steps=PPO.num_steps, seed=seed)
    if name == "Robust PLR":
        return PrioritizedLevelReplay(train, CleanRLEvaluator(agent), gamma=PPO.gamma,
                                      num_steps=PPO.num_steps, seed=seed, robust=True,
                                      env_fn=partial(counted_levels, train, counter))
    if name == "Learnability":
        from syllabus_eval.curricula import Learnability

        # a buffer of the top quarter of the levels, mixed with 20% uniform draws
        return Learnability(train, topk=max(1, len(train) // 4), learnable_prob=0.8, seed=seed)
    if name == "learning progress":
        return LearningProgressCurriculum(train, seed=seed)
    raise ValueError(f"curriculum: expected one of {list(CURRICULA)}, got {name!r}")


def run_one(name: str, seed: int, budget: Budget) -> dict[str, Any]:
    """Train one agent with one curriculum; its held-out curve, throughput and costs."""
    torch.set_num_threads(1)  # one core per run: runs go side by side
    torch.manual_seed(seed)
    train = training_levels(budget.train_seeds, ENV_IDS)
    test = held_out_levels(train, budget.test_seeds)
    agent = MiniGridAgent()
    counter = [0]  # env steps of the curriculum's own evaluations
    curriculum = make_curriculum(name, train, agent, seed, counter)
    fed = name in ("Learnability", "learning progress")
    picker = np.random.default_rng(seed)
    # The curve's points before the last take one episode per held-out level, the last one
    # test_episodes: the table's numbers.
    test_runners = [EvalRunner(EnvSpec(partial(MiniGridLevels, test), num_envs=NUM_ENVS),
                               CleanRLEvaluator(agent), num_episodes=episodes * len(test),
                               episodes=_sampled(10_000 + seed), suites={"test": test},
                               backend="thread")
                    for episodes in (1, budget.test_episodes)]
    envs = gym.vector.SyncVectorEnv(
        [lambda: CurriculumWrapper(MiniGridLevels(train), curriculum) for _ in range(NUM_ENVS)])
    curve: list[dict[str, float]] = []
    episodes_by_env: dict[str, int] = dict.fromkeys(ENV_IDS, 0)
    eval_seconds = 0.0
    batch = PPO.num_steps * NUM_ENVS
    eval_at = {max(1, round(budget.steps * (i + 1) / budget.evals / batch)) * batch
               for i in range(budget.evals)}  # steps at which the held-out suite is evaluated
    next_feed = 0
    started = time.perf_counter()
    try:
        trainer = PPOTrainer(envs, agent, PPO, seed=seed)
        for iteration in trainer.iterate(budget.steps):
            step = iteration.global_step
            for task in iteration.episode_tasks:
                episodes_by_env[task[0]] += 1
            if fed and step >= next_feed:  # the success rates Learnability and LP need
                next_feed = step + budget.feed_every
                _feed(curriculum, agent, train, picker, budget, counter, seed + step)
            if step in eval_at or step >= budget.steps:
                eval_at.discard(step)
                begun = time.perf_counter()
                runner = test_runners[1 if step >= budget.steps else 0]
                result = runner.evaluate(weights=agent, step=step)
                eval_seconds += time.perf_counter() - begun
                curve.append({"step": step, "reward": float(result["eval/test/reward"]),
                              "success": float(result["eval/test/success"])})
    finally:
        envs.close()
        for runner in test_runners:
            runner.shutdown()
        curriculum_close = getattr(curriculum, "close", None)
        if curriculum_close is not None:
            curriculum_close()
    seconds = time.perf_counter() - started
    return {"curriculum": name, "seed": seed, "steps": trainer.global_step, "curve": curve,
            "final_reward": curve[-1]["reward"], "final_success": curve[-1]["success"],
            "train_sps": trainer.global_step / (seconds - eval_seconds),
            "curriculum_eval_steps": counter[0], "seconds": seconds,
            "episodes_by_env": episodes_by_env}


def _feed(curriculum: Any, agent: torch.nn.Module, train: list[Level], picker: np.random.Generator,
          budget: Budget, counter: list[int], seed: int) -> None:
    """``feed_episodes`` episodes on each of ``feed_levels`` random training levels; their
    success rates go to the curriculum through the runner's callback (``on_result``)."""
    chosen = picker.choice(len(train), size=min(budget.feed_levels, len(train)), replace=False)
    levels = [train[i] for i in sorted(chosen)]
    with EvalRunner(EnvSpec(partial(counted_levels, train, counter), num_envs=NUM_ENVS),
                    CleanRLEvaluator(agent), num_episodes=budget.feed_episodes * len(levels),
                    episodes=_sampled(seed),
                    tasks=levels, backend="thread", callbacks=[curriculum.on_result]) as runner:
        runner.evaluate(weights=agent)


def _sampled(seed: int) -> EpisodeSettings:
    """Evaluation episodes with sampled actions, as in training (a greedy policy that is still
    learning walks into a wall until its time runs out), to the env's own time limit."""
    return EpisodeSettings(max_steps=None, deterministic=False, seed=seed, ci=None)


def iqm_interval(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """The interquartile mean over seeds and its 95% percentile-bootstrap interval."""
    data = np.asarray(values, dtype=np.float64)
    centre = iqm(data)
    if data.size < 2:
        return centre, math.nan, math.nan
    if np.ptp(data) == 0:
        return centre, centre, centre
    interval = stats.bootstrap((data,), iqm, vectorized=False, n_resamples=2000,
                               method="percentile", confidence_level=0.95,
                               rng=np.random.default_rng(seed)).confidence_interval
    return centre, float(interval.low), float(interval.high)


def summarize(runs: list[dict[str, Any]], names: Sequence[str]) -> tuple[list[list[Any]], str]:
    """The table's rows and its Markdown text."""
    sps = {(r["curriculum"], r["seed"]): r["train_sps"] for r in runs}
    rows = []
    for name in names:
        mine = [r for r in runs if r["curriculum"] == name]
        reward = iqm_interval([r["final_reward"] for r in mine])
        success = iqm_interval([r["final_success"] for r in mine])
        ratios = [r["train_sps"] / sps[(BASELINE, r["seed"])] for r in mine
                  if (BASELINE, r["seed"]) in sps]
        rows.append([name, len(mine), f"{reward[0]:.3f} [{reward[1]:.3f}, {reward[2]:.3f}]",
                     f"{success[0]:.2f} [{success[1]:.2f}, {success[2]:.2f}]",
                     f"{statistics.median(r['train_sps'] for r in mine):.0f}",
                     f"{statistics.median(ratios):.2f}x" if ratios else "-",
                     f"{statistics.mean(r['curriculum_eval_steps'] for r in mine):,.0f}"])
    header = ["curriculum", "seeds", "held-out return IQM [95% CI]",
              "held-out success IQM [95% CI]", "train steps/s", "vs DR",
              "extra eval steps/run"]
    return rows, format_table(rows, header)


def levels_played(runs: list[dict[str, Any]], names: Sequence[str]) -> str:
    """Where each curriculum spent its training episodes, by env id (share of episodes)."""
    rows = []
    for name in names:
        totals = dict.fromkeys(ENV_IDS, 0)
        for run in runs:
            if run["curriculum"] == name:
                for env_id, count in run["episodes_by_env"].items():
                    totals[env_id] += count
        total = max(1, sum(totals.values()))
        rows.append([name] + [f"{totals[e] / total:.0%}" for e in ENV_IDS])
    return format_table(rows, ["training episodes"] + [e[9:-3] for e in ENV_IDS])


def plot(runs: list[dict[str, Any]], names: Sequence[str], path: Path) -> None:
    """Held-out return and success against training steps: mean over seeds and range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        curves = [r["curve"] for r in runs if r["curriculum"] == name]
        steps = [point["step"] for point in curves[0]]
        for ax, metric in zip(axes, ("reward", "success")):
            values = np.array([[point[metric] for point in c] for c in curves])  # [seeds, evals]
            (line,) = ax.plot(steps, values.mean(0), marker="o", label=name)
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.15,
                            color=line.get_color())
    for ax, label in zip(axes, ("held-out return", "held-out success")):
        ax.set_xlabel("training env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"PPO on MiniGrid levels: mean over {len({r['seed'] for r in runs})} "
                    "seeds (band: range)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_benchmark(budget: Budget, seeds: Sequence[int], names: Sequence[str], jobs: int,
                  out: Path, echo: Callable[[str], Any] = ECHO) -> list[list[Any]]:
    """Every (curriculum, seed) run; prints the tables, writes the plot and JSON; the rows."""
    ready = []
    for name in names:
        reason = unavailable(name)
        if reason is None:
            ready.append(name)
        else:
            echo(f"skipping {name}: {reason}")
    # Seed by seed, so that the runs side by side are alike in load whatever --jobs is.
    plan = [(name, seed) for seed in seeds for name in ready]
    started = time.perf_counter()
    if jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = [pool.submit(run_one, name, seed, budget) for name, seed in plan]
            runs = []
            for future in futures:
                runs.append(future.result())
                _progress(runs[-1], len(runs), len(plan), started, echo)
    else:
        runs = []
        for name, seed in plan:
            runs.append(run_one(name, seed, budget))
            _progress(runs[-1], len(runs), len(plan), started, echo)
    rows, table = summarize(runs, ready)
    echo(f"\n{len(seeds)} seeds x {budget.steps:,} training env steps, held out: "
         f"{budget.test_seeds} levels per env x {budget.test_episodes} episodes\n")
    echo(table)
    echo("\n" + levels_played(runs, ready))
    plot(runs, ready, out)
    data = out.with_suffix(".json")
    data.write_text(json.dumps({"budget": budget._asdict(), "env_ids": ENV_IDS,
                                "seeds": list(seeds), "runs": runs,
                                "seconds": time.perf_counter() - started}, indent=1))
    echo(f"\nwrote {out} and {data} ({time.perf_counter() - started:.0f} s)")
    return rows


def _progress(run: dict[str, Any], done: int, total: int, started: float,
              echo: Callable[[str], Any]) -> None:
    echo(f"[{done}/{total}] {run['curriculum']}, seed {run['seed']}: held-out return "
         f"{run['final_reward']:.3f}, success {run['final_success']:.2f}, "
         f"{run['train_sps']:.0f} steps/s ({time.perf_counter() - started:.0f} s)")


def main(argv: Sequence[str] | None = None) -> list[list[Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller budget (minutes)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per curriculum (default 3; 2 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training env steps per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (processes)")
    parser.add_argument("--curricula", nargs="+", default=list(CURRICULA), choices=CURRICULA,
                        metavar="NAME", help=f"a subset of {list(CURRICULA)}")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_curricula.png"),
                        help="the plot (PNG); the JSON goes beside it")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else DEFAULT
    if args.steps is not None:
        if args.steps < PPO.num_steps * NUM_ENVS:
            parser.error(f"--steps: expected at least {PPO.num_steps * NUM_ENVS} (one rollout), "
                         f"got {args.steps}")
        budget = budget._replace(steps=args.steps, feed_every=min(budget.feed_every, args.steps))
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs: expected positive integers")
    return run_benchmark(budget, range(seeds), args.curricula, args.jobs, args.out)


if __name__ == "__main__":
    main()
