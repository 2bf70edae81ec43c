"""The demo's run: the whole toolkit on CartPole variants, in about a minute on two CPU cores.

Usage::

    from syllabus_eval.demo import run_demo
    summary = run_demo(steps=80_000, seed=0, out="runs/demo")

A CleanRL-style PPO agent trains on five CartPole tasks (:mod:`syllabus_eval.demo.envs`).
Prioritized Level Replay picks each episode's task; its worker thread scores what the agent
plays by calling ``get_value`` on a :class:`~syllabus_eval.adapters.CleanRLEvaluator` while the
optimizer keeps stepping. Every ``eval_every`` steps an :class:`~syllabus_eval.EvalRunner`
evaluates the agent in the background on every task. At the end: a per-task table, a plot of
evaluation return and task probabilities over training (PNG) and every metric as JSON.

Like the command line, the demo sits on top of the library: it uses adapters and curricula,
and nothing in the library imports it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.curricula import CurriculumWrapper, PrioritizedLevelReplay
from syllabus_eval.demo.agents import MLPAgent
from syllabus_eval.demo.envs import CARTPOLE_TASKS, HELD_OUT_TASKS, CartPoleTasks
from syllabus_eval.demo.plots import plot_training
from syllabus_eval.demo.ppo import PPOConfig, PPOTrainer
from syllabus_eval.evaluation.backend_settings import as_backend
from syllabus_eval.evaluation.runner import EvalRunner
from syllabus_eval.evaluation.schedule import EvalSchedule
from syllabus_eval.evaluation.tracking import SaveBest
from syllabus_eval.results.report import format_table
from syllabus_eval.rollout import EnvSpec, EpisodeSettings
from syllabus_eval.rollout.video import VideoSettings, render_offscreen

TASKS = list(CARTPOLE_TASKS)
HELD_OUT = list(HELD_OUT_TASKS)


def _spaces() -> SimpleNamespace:
    env = CartPoleTasks()
    return SimpleNamespace(single_observation_space=env.observation_space,
                           single_action_space=env.action_space)


def make_agent() -> MLPAgent:
    """The demo's agent (also built inside process and Ray workers)."""
    return MLPAgent(_spaces())


def make_evaluator() -> CleanRLEvaluator:
    """An evaluator of a fresh agent, for backends that build it in their worker."""
    return CleanRLEvaluator(make_agent())


def run_demo(steps: int = 80_000, seed: int = 0, backend: str = "thread",
             out: str | Path = "runs/demo", num_envs: int = 4, eval_every: int = 10_000,
             eval_episodes: int = 10, progress: bool = True,
             echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train with PLR and background evaluation; write ``metrics.json`` and ``demo.png``.

    Args:
        steps: training env steps.
        seed: seeds training, the curriculum and the evaluations.
        backend: the evaluation backend (``"thread"``, ``"process"``, ``"ray"``).
        out: the folder for the outputs.
        num_envs: training envs.
        eval_every: training steps between background evaluations.
        eval_episodes: evaluation episodes per task.
        progress: show a progress bar.
        echo: where the final table goes.

    Returns:
        What ``metrics.json`` holds.
    """
    out = Path(out)
    started = time.perf_counter()
    training = _train(steps, seed, backend, out, num_envs, eval_every, eval_episodes, progress)
    videos = _record_videos(training.evaluator, training.step, out / "videos", seed, echo)
    evaluations = training.evaluations
    summary = {
        "config": {"steps": steps, "seed": seed, "backend": backend, "num_envs": num_envs,
                   "eval_every": eval_every, "eval_episodes": eval_episodes},
        "seconds": time.perf_counter() - started,
        "evaluations": evaluations,
        "priorities": [{"step": step, "probabilities": p} for step, p in training.priorities],
        "final": evaluations[-1],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    plot_training(evaluations, training.priorities, out / "demo.png")
    _report(training, summary, out, videos, echo)
    return summary


@dataclass
class _Training:
    """What a demo's training leaves for its report."""

    evaluator: CleanRLEvaluator
    step: int
    evaluations: list[dict[str, float]]
    priorities: list[tuple[int, dict[str, float]]]
    final_priorities: dict[str, float]
    plr_scores: dict[str, float]
    scored: dict[str, int]
    temperature: float
    skipped: int
    best: float | None


def _train(steps: int, seed: int, backend: str, out: Path, num_envs: int, eval_every: int,
           eval_episodes: int, progress: bool) -> _Training:
    """PPO on the training tasks drawn by PLR, evaluated in the background on both suites."""
    torch.manual_seed(seed)
    agent = make_agent()
    evaluator = CleanRLEvaluator(agent)
    evaluations: list[dict[str, float]] = []
    priorities: list[tuple[int, dict[str, float]]] = []
    runner_options: dict[str, Any] = {}
    if backend != "thread":
        runner_options = {"env_fn": CartPoleTasks, "evaluator_fn": make_evaluator}
    config = PPOConfig()
    # A softer temperature than the paper's 0.1 (for 200 levels) keeps several of 5 tasks in play.
    # PLR's GAE uses the discount the agent's value is trained with: with PLR's default 0.999
    # against PPO's 0.99, every step of a long episode adds about 0.009 V to its score.
    with PrioritizedLevelReplay(TASKS, evaluator, seed=seed, num_steps=128, temperature=0.5,
                                gamma=config.gamma, gae_lambda=config.gae_lambda) as plr, \
            EvalRunner(EnvSpec(CartPoleTasks, num_envs=len(TASKS)), evaluator,
                       num_episodes=eval_episodes * len(TASKS),
                       episodes=EpisodeSettings(max_steps=None, seed=seed),
                       backend=as_backend(backend, **runner_options),
                       schedule=EvalSchedule(every=eval_every),
                       suites={"train": TASKS, "test": HELD_OUT},
                       callbacks=[SaveBest(out / "best.pt", metric="eval/test/reward"),
                                  lambda result: evaluations.append(dict(result))]) as runner:
        envs = gym.vector.SyncVectorEnv(
            [lambda: CurriculumWrapper(CartPoleTasks(), plr) for _ in range(num_envs)])
        trainer = PPOTrainer(envs, agent, config, seed=seed)
        runner.trigger_eval(agent, step=0)  # the untrained agent, for the plot's first point
        bar = tqdm(total=steps, unit="step", disable=not progress, desc="demo")
        recent: list[float] = []
        for stats in trainer.iterate(steps):
            priorities.append((stats.global_step, dict(zip(TASKS, plr.distribution()))))
            recent = (recent + stats.episode_returns)[-50:]
            runner.maybe_trigger(agent, step=stats.global_step)  # due: every eval_every
            bar.update(stats.global_step - bar.n)
            postfix = {"train_return": f"{np.mean(recent):.0f}" if recent else "-"}
            if evaluations:
                postfix["eval_return"] = f"{evaluations[-1]['eval/train/reward']:.0f}"
            bar.set_postfix(postfix)
        bar.close()
        runner.final_eval(agent, step=trainer.global_step)  # after the pending ones
        while runner.wait() is not None:  # drain the background results (errors raise here)
            pass
        envs.close()
        return _Training(evaluator, trainer.global_step, evaluations, priorities,
                         dict(zip(TASKS, plr.distribution())), plr.task_scores(),
                         plr.scored_steps(), plr.temperature, runner.skipped, runner.best)


def _report(training: _Training, summary: dict[str, Any], out: Path, videos: list,
            echo: Callable[[str], Any]) -> None:
    """The final table per task and suite, why PLR favours what it does, and the totals."""
    final, evaluations = summary["final"], training.evaluations
    scores = training.plr_scores
    rows = [[task, suite, _with_interval(final, f"eval/{suite}/task/{task}/reward"),
             f"{final[f'eval/{suite}/task/{task}/success']:.0%}",
             f"{training.final_priorities[task]:.2f}" if suite == "train" else "held out",
             f"{scores[task]:.2f}" if task in scores else "-",
             training.scored.get(task, 0) if suite == "train" else "-"]
            for suite, tasks in (("train", TASKS), ("test", HELD_OUT)) for task in tasks]
    echo(format_table(rows, ["task", "suite", "eval return (95% interval)", "success",
                             "PLR probability", "PLR score", "steps scored by PLR"]))
    echo(_why_plr(scores, temperature=training.temperature))
    first = evaluations[0]["eval/train/reward"]
    echo(f"\ntraining tasks: evaluation return {first:.1f} at step 0 -> "
         f"{_with_interval(final, 'eval/train/reward')} at step {final['eval/step']}; "
         f"held-out tasks {_with_interval(final, 'eval/test/reward')} (generalization gap "
         f"{final['eval/generalization_gap']:.1f})")
    echo(f"{len(evaluations)} evaluations, {training.skipped} skipped while one ran, "
         f"{summary['seconds']:.0f} s; best held-out return {training.best:.1f}, saved as "
         f"{out / 'best.pt'}")
    echo(f"wrote {out / 'metrics.json'} and {out / 'demo.png'}"
         + (f", and {len(videos)} videos (one per task) in {out / 'videos'}" if videos else ""))


def _why_plr(scores: dict[str, float], temperature: float) -> str:
    """Why PLR favours the task it does: the rank transform shares by order, not by gap."""
    if len(scores) < 2:
        return ""
    top = max(scores, key=scores.get)
    ranks = np.arange(1, len(scores) + 1)
    rank_share = 1.0 / (1.0 / ranks ** (1 / temperature)).sum()  # P_S of rank 1
    h = np.maximum(np.array(list(scores.values())), 0.0) ** (1 / temperature)
    power_share = max(scores[top], 0.0) ** (1 / temperature) / h.sum() if h.sum() > 0 else 0.0
    return (f"\nPLR score: mean |GAE| of the task's latest segment, a value error (a solved "
            f"task's long episodes have one too). The rank transform gives the top-scored task "
            f"({top}) {rank_share:.2f} of PLR's score-based draws however close the scores are "
            f"(here {min(scores.values()):.2f} to {scores[top]:.2f}); "
            f"score_transform='power' would give it {power_share:.2f}, a higher temperature "
            "less too, and score_alpha < 1 averages segments rather than keeping the latest.")


def _with_interval(metrics: dict[str, float], key: str) -> str:
    """``mean [low, high]`` of a reward metric and its confidence interval."""
    return (f"{metrics[key]:.1f} [{metrics[key + '_ci_low']:.1f}, "
            f"{metrics[key + '_ci_high']:.1f}]")


def _rendered_tasks() -> CartPoleTasks:
    render_offscreen()
    return CartPoleTasks(render_mode="rgb_array")


def _record_videos(evaluator: CleanRLEvaluator, step: int, folder: Path, seed: int,
                   echo: Callable[[str], Any]) -> list:
    """One video per task, training and held-out, of the trained agent (the video extra)."""
    try:
        runner = EvalRunner(EnvSpec(_rendered_tasks, num_envs=len(TASKS)), evaluator,
                            num_episodes=len(TASKS),
                            episodes=EpisodeSettings(max_steps=None, seed=seed, ci=None),
                            suites={"train": TASKS, "test": HELD_OUT},
                            video=VideoSettings(folder, max_frames=300))
    except ImportError as error:  # without imageio (or pygame, which draws CartPole)
        echo(f"no videos: {error}")
        return []
    with runner:
        return runner.evaluate(step=step).videos
