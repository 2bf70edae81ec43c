"""The ``syllabus-eval`` command line (also ``python -m syllabus_eval``).

Usage::

    syllabus-eval demo --steps 60000 --seed 0 --backend thread --out runs/demo
    syllabus-eval evaluate --env CartPole-v1 --agent my_module:Agent --checkpoint agent.pt \\
        --episodes 20 --num-envs 8 --json metrics.json

``evaluate`` builds the agent as CleanRL does, ``Agent(envs)`` with a vector env of the given
id, loads the state dict, and evaluates it with :class:`~syllabus_eval.EvalRunner`. Bad input
exits with status 2 and a message that names the option.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym

from syllabus_eval.errors import ArgumentError, describe
from syllabus_eval.evaluation.backend_settings import as_backend
from syllabus_eval.evaluation.backends import BACKENDS
from syllabus_eval.evaluation.checkpoints import Checkpoint, load_checkpoint
from syllabus_eval.evaluation.normalization import normalizes_observations
from syllabus_eval.evaluation.runner import EvalRunner
from syllabus_eval.results.loggers import json_ready
from syllabus_eval.rollout import EnvSpec, EpisodeSettings
from syllabus_eval.rollout.video import VideoSettings, render_offscreen
from syllabus_eval.sweep import check_sweep_arguments, checkpoint_files

ADAPTERS = {"cleanrl": "CleanRLEvaluator", "moolib": "MoolibEvaluator", "dummy": "DummyEvaluator"}


class UsageError(Exception):
    """Bad command-line input: reported as ``error: ...`` with exit status 2."""


def _positive(text: str) -> int:
    """An argparse type: an int of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _seconds(low_open: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, > 0 where ``low_open``, else >= 0."""
    bound = "> 0" if low_open else ">= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (low_open and value == 0):
            raise argparse.ArgumentTypeError(f"expected a finite number of seconds {bound}, "
                                             f"got {text!r}")
        return value

    return parse


def _task_list(text: str) -> list[str]:
    """An argparse type: comma-separated task names, none empty."""
    tasks = [task.strip() for task in text.split(",")]
    if not all(tasks):
        raise argparse.ArgumentTypeError(f"expected comma-separated task names, none empty, "
                                         f"got {text!r}")
    return tasks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syllabus-eval", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train on CartPole tasks with PLR and background "
                               "evaluation; write a plot and metrics")
    demo.add_argument("--steps", type=_positive, default=80_000, help="training env steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--backend", choices=list(BACKENDS), default="thread",
                      help="where evaluations run")
    demo.add_argument("--out", default="runs/demo", help="folder for demo.png, metrics.json")
    demo.add_argument("--eval-every", type=_positive, default=10_000,
                      help="steps between evaluations")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    evaluate = commands.add_parser("evaluate", help="evaluate a saved agent on a Gymnasium env")
    env = evaluate.add_mutually_exclusive_group(required=True)
    env.add_argument("--env", help="a Gymnasium env id")
    env.add_argument("--make-env", help="module:function returning one env, e.g. the training "
                     "script's own factory with its wrappers")
    evaluate.add_argument("--agent", help="module:Class of a CleanRL-style agent, built as "
                          "Class(envs)")
    evaluate.add_argument("--adapter", default="cleanrl",
                          help=f"one of {', '.join(ADAPTERS)}, or module:Class of an Evaluator")
    checkpoints = evaluate.add_mutually_exclusive_group()
    checkpoints.add_argument("--checkpoint", help="a checkpoint save_best wrote (weights and "
                             "observation normalisation), or a state dict saved with "
                             "torch.save")
    checkpoints.add_argument("--checkpoints", metavar="DIR_OR_GLOB", help="evaluate every "
                             "checkpoint of a folder (or glob) in step order, appending to "
                             "--results; a rerun skips those already there")
    evaluate.add_argument("--lstm", action="store_true", help="the agent is recurrent")
    evaluate.add_argument("--episodes", type=_positive, default=20)
    evaluate.add_argument("--num-envs", type=_positive, default=8)
    evaluate.add_argument("--max-steps", type=_positive, default=None,
                          help="truncate episodes after this many steps")
    evaluate.add_argument("--backend", choices=list(BACKENDS), default="thread")
    mode = evaluate.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", dest="deterministic", action="store_true",
                      default=True, help="greedy actions (the default)")
    mode.add_argument("--stochastic", dest="deterministic", action="store_false",
                      help="sampled actions")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--tasks", type=_task_list, help="comma-separated tasks, passed to "
                          "reset as options={'task': ...}; metrics are reported per task")
    evaluate.add_argument("--json", help="also write the metrics (with --checkpoints: the "
                          "entries) to this JSON file; NaN is written as null")
    evaluate.add_argument("--video", metavar="DIR", help="write a video of one episode per task "
                          "(or one) to this folder; --env envs render with "
                          "render_mode='rgb_array', --make-env ones must")
    sweep = evaluate.add_argument_group("checkpoint series (--checkpoints)")
    sweep.add_argument("--results", default="results.jsonl", help="the JSON-lines file each "
                       "checkpoint's metrics are appended to, and resumed from")
    sweep.add_argument("--watch", action="store_true", help="keep polling for new checkpoints "
                       "until --idle-timeout seconds pass without one")
    sweep.add_argument("--idle-timeout", type=_seconds(False), default=60.0,
                       help="seconds (--watch)")
    sweep.add_argument("--poll-interval", type=_seconds(True), default=2.0,
                       help="seconds (--watch)")
    sweep.add_argument("--tensorboard", metavar="DIR", help="log each checkpoint's metrics "
                       "to TensorBoard at its step")
    sweep.add_argument("--curve", default="curve.png", help="the plot of return and success "
                       "against step, per task")
    return parser


def _load_attribute(spec: str, option: str) -> Any:
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise UsageError(f"{option}: expected module:Class, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"{option}: cannot import module {module_name!r}: {error}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise UsageError(f"{option}: module {module_name!r} has no {name!r}") from None


def _env_factory(args: argparse.Namespace, normalize: bool = False) -> Callable[[], gym.Env]:
    """The evaluation env factory of ``--env`` or ``--make-env`` (picklable for workers).

    With an ``--env`` id and a checkpoint that carries observation statistics, the env gets a
    ``NormalizeObservation`` to take them (``--make-env`` brings its own); with ``--video`` it
    renders ``rgb_array`` frames.
    """
    if getattr(args, "video", None):
        render_offscreen()
    if args.make_env is not None:
        factory = _load_attribute(args.make_env, "--make-env")
        if not callable(factory):
            raise UsageError(f"--make-env: {args.make_env} is not callable")
        return factory
    try:
        gym.make(args.env).close()
    except gym.error.Error as error:
        raise UsageError(f"--env: no Gymnasium environment {args.env!r} ({error})") from None
    kwargs = {"render_mode": "rgb_array"} if getattr(args, "video", None) else {}
    return partial(_make_env, args.env, normalize, **kwargs)


def _make_env(env_id: str, normalize: bool, **kwargs: Any) -> gym.Env:
    env = gym.make(env_id, **kwargs)
    return gym.wrappers.NormalizeObservation(env) if normalize else env


def _load_checkpoint(args: argparse.Namespace) -> Checkpoint | None:
    if args.checkpoint is None:
        return None
    try:
        return load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"--checkpoint: {error}") from None


def _build_evaluator(args: argparse.Namespace, checkpoint: Checkpoint | None = None,
                     make_env: Callable[[], Any] | None = None) -> Any:
    """The evaluator of ``--adapter``, its agent built on an env of ``make_env`` and loaded
    with ``--checkpoint``; what is not given is made from ``args`` (as in a worker)."""
    import syllabus_eval.adapters as adapters

    if args.adapter in ADAPTERS:
        adapter = getattr(adapters, ADAPTERS[args.adapter])
    else:
        adapter = _load_attribute(args.adapter, "--adapter")
    if checkpoint is None:
        checkpoint = _load_checkpoint(args)
    if make_env is None:  # the agent is built on its spaces, which normalisation keeps
        make_env = _env_factory(args, checkpoint is not None and checkpoint.obs_norm is not None)
    probe = gym.vector.SyncVectorEnv([make_env])
    try:
        if args.adapter == "dummy":
            return adapter(probe.single_action_space, seed=args.seed)
        if args.agent is None:
            raise UsageError(f"--agent: required with --adapter {args.adapter}")
        agent_class = _load_attribute(args.agent, "--agent")
        try:
            agent = agent_class(probe)  # as CleanRL builds its agents: Agent(envs)
        except Exception as error:
            raise UsageError(f"--agent: {args.agent}(envs) failed: {error!r}") from None
    finally:
        probe.close()
    if checkpoint is not None:
        try:
            agent.load_state_dict(checkpoint.state_dict)
        except Exception as error:
            raise UsageError(f"--checkpoint: {args.checkpoint!r} does not fit "
                             f"{type(agent).__name__}: {error}") from None
    kwargs = {"is_lstm": True} if args.lstm else {}
    return adapter(agent, **kwargs)


def _evaluate(args: argparse.Namespace) -> int:
    from syllabus_eval.results.report import format_table

    tasks = args.tasks
    if tasks and args.episodes < len(tasks):
        raise UsageError(f"--episodes: expected at least one episode per task ({len(tasks)} "
                         f"tasks), got {args.episodes}")
    if args.adapter == "dummy":
        for option, value in (("--checkpoint", args.checkpoint), ("--lstm", args.lstm),
                              ("--agent", args.agent), ("--checkpoints", args.checkpoints)):
            if value:
                raise UsageError(f"{option}: not used by --adapter dummy (random actions)")
    if args.checkpoints is not None:
        try:  # before building anything: a mistyped path is found at once
            check_sweep_arguments(args.checkpoints, results=args.results,
                                  tensorboard=args.tensorboard, curve=args.curve,
                                  watch=args.watch)
        except ValueError as error:
            raise UsageError(_with_options(error)) from None
    checkpoint = _load_checkpoint(args)
    obs_norm = None if checkpoint is None else checkpoint.obs_norm
    # A series' --env envs take statistics per checkpoint (_evaluate_series): its folder may
    # still be empty when --watch starts, so its first file cannot decide for all.
    make_env = _env_factory(args, normalize=obs_norm is not None)
    if args.make_env is not None:
        _check_own_env(args, make_env, obs_norm is not None or _series_normalizes(args))
    with _runner(args, make_env, _build_evaluator(args, checkpoint, make_env)) as runner:
        if args.checkpoints is not None:
            return _evaluate_series(args, runner)
        result = runner.evaluate(obs_norm=obs_norm)
    for video in result.videos:
        print(f"wrote {video.path}")
    metrics = dict(result)
    print(format_table([[k, f"{v:.4g}"] for k, v in metrics.items() if "/task/" not in k],
                       ["metric", "value"]))
    if tasks:
        rows = [[task, f"{metrics[f'eval/task/{task}/reward']:.2f}",
                 f"{metrics.get(f'eval/task/{task}/success', float('nan')):.0%}",
                 int(metrics[f"eval/task/{task}/num_episodes"])] for task in tasks]
        print()
        print(format_table(rows, ["task", "reward", "success", "episodes"]))
    if args.json:
        _write_json(args.json, json_ready(metrics))
    return 0


def _runner(args: argparse.Namespace, make_env: Callable[[], Any], evaluator: Any
            ) -> EvalRunner:
    """The :class:`~syllabus_eval.EvalRunner` of ``args`` on envs of ``make_env``."""
    # Picklable factories: process and Ray workers build their env and evaluator from them.
    workers = {} if args.backend in ("thread", "auto") else {
        "evaluator_fn": partial(_build_evaluator, args, make_env=make_env)}
    video = None if args.video is None else VideoSettings(args.video)
    return EvalRunner(EnvSpec(make_env, num_envs=args.num_envs), evaluator,
                      num_episodes=args.episodes, tasks=args.tasks,
                      episodes=EpisodeSettings(max_steps=args.max_steps,
                                               deterministic=args.deterministic, seed=args.seed),
                      backend=as_backend(args.backend, **workers), video=video,
                      progress=sys.stderr.isatty())


def _write_json(path: str, value: Any) -> None:
    """``value``, made :func:`~.loggers.json_ready`, as strict JSON in ``path``."""
    Path(path).write_text(json.dumps(value, indent=2, allow_nan=False))


def _check_own_env(args: argparse.Namespace, factory: Callable[[], Any],
                   normalize: bool) -> None:
    """What evaluation needs of a ``--make-env`` env, checked on one env before any episode:
    a ``NormalizeObservation`` to take the checkpoint's statistics, ``rgb_array`` frames for
    ``--video``."""
    if not normalize and not args.video:
        return
    try:
        env = factory()
    except Exception as error:
        raise UsageError(f"--make-env: {args.make_env}() failed: {error!r}") from None
    try:
        if normalize and not normalizes_observations(env):
            what = (f"--checkpoint {args.checkpoint!r} carries" if args.checkpoint is not None
                    else "the checkpoints of --checkpoints carry")
            raise UsageError(
                f"--make-env: expected an env with gymnasium.wrappers.NormalizeObservation, "
                f"since {what} observation-normalisation statistics, got "
                f"{describe(env)} without it; add the wrapper in "
                f"{args.make_env} as the training script does (or use --env, which adds it)")
        mode = getattr(env, "render_mode", None)
        if args.video and mode != "rgb_array":
            raise UsageError(
                f"--video: expected the --make-env env to render frames "
                f"(render_mode='rgb_array'), got render_mode={mode!r} from {args.make_env}(); "
                "make it with gym.make(..., render_mode='rgb_array')")
    finally:
        env.close()


# The argument names evaluate_checkpoints words its errors with, and the options they come from.
_OPTIONS = {"source": "--checkpoints", "results": "--results", "tensorboard": "--tensorboard",
            "curve": "--curve", "watch": "--watch", "idle_timeout": "--idle-timeout",
            "poll_interval": "--poll-interval"}


def _with_options(error: Exception) -> str:
    """An error of :mod:`syllabus_eval.sweep`, naming the option instead of the argument."""
    if isinstance(error, ArgumentError) and error.argument in _OPTIONS:
        return str(error.renamed(_OPTIONS[error.argument]))
    return str(error)


def _series_normalizes(args: argparse.Namespace) -> bool:
    """Whether the checkpoints of ``--checkpoints`` carry observation statistics (the first
    that loads says), for the early check of a ``--make-env`` factory's wrapper; ``--env``
    envs decide per checkpoint instead."""
    if args.checkpoints is None:
        return False
    for path in checkpoint_files(args.checkpoints):
        try:
            return load_checkpoint(path).obs_norm is not None
        except (FileNotFoundError, ValueError):
            continue
    return False


def _normalized_runner(args: argparse.Namespace) -> EvalRunner:
    """The runner of ``--checkpoints`` on ``--env`` envs with ``NormalizeObservation``, for
    the checkpoints that carry observation statistics (built when the first one comes)."""
    make_env = _env_factory(args, normalize=True)
    return _runner(args, make_env, _build_evaluator(args, None, make_env))


def _evaluate_series(args: argparse.Namespace, runner: EvalRunner) -> int:
    from syllabus_eval.sweep import evaluate_checkpoints, groups_of, plot_sweep, sweep_table

    def progress(entry: Any) -> None:
        returns = [f"{'' if label == 'all' else label + ' '}return "
                   f"{entry.metrics.get(prefix + 'reward', math.nan):.1f}"
                   for label, prefix in groups_of(entry.metrics).items()
                   if "/task/" not in prefix] or ["no return"]
        outcome = entry.error or ", ".join(returns)
        if entry.reused_from is not None:
            outcome += (f" (the evaluation of {Path(entry.reused_from).name}, whose content "
                        "it has)")
        print(f"step {entry.step}: {Path(entry.checkpoint).name}: {outcome}", flush=True)

    # Each checkpoint decides whether --env envs normalise (issue #19: a --watch started on
    # an empty folder decided "no" for all); a --make-env factory brings its own wrapper.
    normalized = None if args.env is None else partial(_normalized_runner, args)
    # What the numbers depend on that the runner names only as a factory: the results of
    # another env or agent are not reused (issue #19).
    settings = {"env": args.env if args.env is not None else args.make_env,
                "agent": args.agent, "adapter": args.adapter, "lstm": args.lstm}
    try:  # the curve is drawn here, after the table, so that a failure loses nothing
        entries = evaluate_checkpoints(args.checkpoints, runner, results=args.results,
                                       tensorboard=args.tensorboard, watch=args.watch,
                                       idle_timeout=args.idle_timeout,
                                       poll_interval=args.poll_interval, on_entry=progress,
                                       settings=settings, normalized_runner=normalized)
    except ValueError as error:
        raise UsageError(_with_options(error)) from None
    print(sweep_table(entries))
    written = [args.results]
    if args.json:
        _write_json(args.json, [entry.to_json() for entry in entries])
        written.append(args.json)
    try:
        plot_sweep(entries, args.curve)
    except Exception as error:
        raise UsageError(f"--curve: {args.curve!r} not written ({error!r}); the entries are "
                         f"in {', '.join(written)}") from None
    print(f"wrote {', '.join(written)} and {args.curve}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``syllabus-eval`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from syllabus_eval.demo import run_demo

            run_demo(steps=args.steps, seed=args.seed, backend=args.backend, out=args.out,
                     eval_every=args.eval_every, progress=not args.no_progress)
            return 0
        return _evaluate(args)
    except UsageError as error:
        parser.exit(2, f"syllabus-eval {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
