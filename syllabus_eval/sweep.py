"""Evaluating a series of checkpoints: in step order, resumable, watching for new ones.

Usage::

    from syllabus_eval.sweep import evaluate_checkpoints

    with EvalRunner(make_env, CleanRLEvaluator(Agent(envs)), num_envs=8, num_episodes=20,
                    tasks=tasks) as runner:
        entries = evaluate_checkpoints("runs/ckpts/*.pt", runner, results="results.jsonl",
                                       tensorboard="runs/tb", curve="curve.png")

Habitat's ``evaluate_agent`` evaluates checkpoint after checkpoint, each with its index, step
and TensorBoard writer; this is that loop, made safe to interrupt. Every checkpoint is
evaluated in step order (its own ``step`` entry, see :mod:`syllabus_eval.checkpoints`, else the
number in its file name), with the observation statistics it carries, and one JSON line per
checkpoint is appended to ``results`` as it finishes: ``{"checkpoint", "sha256", "step",
"metrics"}``, or ``"error"`` for a file that does not load or fit (the sweep goes on). A rerun
skips the checkpoints whose content (SHA-256) is already in ``results``, so an interrupted
sweep loses nothing finished and repeats nothing. With ``watch``, the folder is polled for new
checkpoints until ``idle_timeout`` seconds pass without one (Habitat #796: no endless loop); a
file is taken once its size stops changing between two polls (write checkpoints to a temporary
name and rename them, as :func:`~syllabus_eval.checkpoints.save_checkpoint` does, to be safe).
At the end, ``curve`` is drawn: return and success against step, per task, with confidence
bands.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import load_checkpoint
from .errors import bad_argument, check_number
from .loggers import JSONLinesLogger, TensorBoardLogger
from .report import format_table, plot_curves
from .results import EvalResult
from .runner import EvalRunner

logger = logging.getLogger(__name__)

SUFFIXES = (".pt", ".pth", ".ckpt")  # what a folder's checkpoints are named


@dataclass
class SweepEntry:
    """One checkpoint of a sweep: its metrics, or the error that stopped it."""

    checkpoint: str
    sha256: str
    step: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry = {"checkpoint": self.checkpoint, "sha256": self.sha256, "step": self.step}
        entry.update({"error": self.error} if self.error else {"metrics": self.metrics})
        return entry


def evaluate_checkpoints(source: str | os.PathLike | Iterable[str | os.PathLike],
                         runner: EvalRunner, *, results: str | os.PathLike | None = None,
                         tensorboard: str | os.PathLike | None = None,
                         curve: str | os.PathLike | None = None, watch: bool = False,
                         idle_timeout: float = 60.0, poll_interval: float = 2.0,
                         on_entry: Callable[[SweepEntry], Any] | None = None
                         ) -> list[SweepEntry]:
    """Evaluate every checkpoint of ``source`` with ``runner`` (module docs).

    Args:
        source: a folder (its ``.pt``, ``.pth`` and ``.ckpt`` files), a glob pattern, or files.
        runner: evaluates each checkpoint's state dict (``runner.evaluate``).
        results: the JSON-lines file to append to and resume from (``None``: none).
        tensorboard: a folder: each checkpoint's metrics as TensorBoard scalars at its step.
        curve: a PNG of return (and success) against step, per task, written at the end.
        watch: keep polling ``source`` for new checkpoints until ``idle_timeout`` seconds
            pass without one.
        idle_timeout: seconds without a new checkpoint after which watching stops.
        poll_interval: seconds between polls.
        on_entry: called with each entry as it is written.

    Returns:
        The entries of this sweep and of the ones in ``results`` before it, in step order.
    """
    if not isinstance(runner, EvalRunner):
        raise bad_argument("runner", "an EvalRunner", runner)
    check_number("idle_timeout", idle_timeout, 0.0)
    check_number("poll_interval", poll_interval, 0.0, low_open=True)
    earlier = _read_results(results) if results is not None else []
    done = {entry.sha256 for entry in earlier}
    entries = list(earlier)
    lines = None if results is None else JSONLinesLogger(results, fsync=True)
    board = None if tensorboard is None else TensorBoardLogger(tensorboard)
    sizes: dict[Path, int] = {}  # a file's size at the last poll: taken once it holds still
    last_new = time.monotonic()
    try:
        while True:
            ready = [path for path in checkpoint_files(source) if _settled(path, sizes, watch)]
            fresh = []
            for path in ready:
                digest = _sha256(path)
                if digest not in done:
                    done.add(digest)
                    fresh.append((path, digest))
            for path, digest in sorted(fresh, key=lambda item: _order(item[0])):
                entry = _evaluate(path, digest, runner)
                entries.append(entry)
                if lines is not None:
                    lines.write(entry.to_json())
                if board is not None and entry.error is None:
                    board(EvalResult(entry.metrics, [], entry.step))
                if on_entry is not None:
                    on_entry(entry)
            if fresh:
                last_new = time.monotonic()
            if not watch or time.monotonic() - last_new >= idle_timeout:
                break
            time.sleep(poll_interval)
    finally:
        for sink in (lines, board):
            if sink is not None:
                sink.close()
    entries.sort(key=lambda entry: (entry.step is None, entry.step or 0, entry.checkpoint))
    if curve is not None:
        plot_sweep(entries, curve)
    return entries


def sweep_table(entries: Iterable[SweepEntry]) -> str:
    """A Markdown table of a sweep: step, checkpoint, return with its interval, success."""
    rows = []
    for entry in entries:
        if entry.error is not None:
            rows.append([entry.step, Path(entry.checkpoint).name, "error", entry.error[:60], ""])
            continue
        m = entry.metrics
        interval = (f"[{m['eval/reward_ci_low']:.1f}, {m['eval/reward_ci_high']:.1f}]"
                    if "eval/reward_ci_low" in m else "")
        reward = f"{m['eval/reward']:.1f}" if "eval/reward" in m else ""
        success = f"{m['eval/success']:.0%}" if "eval/success" in m else ""
        rows.append([entry.step, Path(entry.checkpoint).name, reward, interval, success])
    return format_table(rows, ["step", "checkpoint", "return", "95% interval", "success"])


def plot_sweep(entries: Iterable[SweepEntry], path: str | os.PathLike) -> Path:
    """``curve.png``: return and success against step, overall and per task, with bands."""
    results = [{**entry.metrics, "eval/step": entry.step} for entry in entries
               if entry.error is None and entry.step is not None]
    tasks = sorted({key.split("/")[2] for result in results for key in result
                    if key.startswith("eval/task/")})
    groups = {"all": "eval/", **{task: f"eval/task/{task}/" for task in tasks}}
    return plot_curves(results, groups, path)


def _evaluate(path: Path, digest: str, runner: EvalRunner) -> SweepEntry:
    step = _step_in_name(path)
    try:
        checkpoint = load_checkpoint(path)
        step = checkpoint.step if checkpoint.step is not None else step
        if step is None:
            raise ValueError("no step: neither a 'step' entry nor a number in its name")
        result = runner.evaluate(checkpoint.state_dict, step=step,
                                 obs_norm=checkpoint.obs_norm)
    except Exception as error:  # reported in the results; the sweep goes on
        logger.warning("checkpoint %s: %r", path, error)
        return SweepEntry(str(path), digest, step, error=f"{type(error).__name__}: "
                          f"{error.__cause__ or error}")
    return SweepEntry(str(path), digest, step, {k: float(v) for k, v in result.items()})


def checkpoint_files(source: Any) -> list[Path]:
    """The checkpoint files of a folder (``.pt``, ``.pth``, ``.ckpt``), a glob or a list."""
    if isinstance(source, (str, os.PathLike)):
        if Path(source).is_dir():
            return sorted(p for p in Path(source).iterdir()
                          if p.suffix in SUFFIXES and not p.name.startswith("."))
        return sorted(Path(p) for p in glob.glob(str(source)))
    return [Path(p) for p in source]


def _settled(path: Path, sizes: dict[Path, int], watch: bool) -> bool:
    """Whether ``path`` is complete: always without watching; with it, once its size is the
    same at two polls in a row."""
    try:
        size = path.stat().st_size
    except OSError:  # gone meanwhile
        return False
    before, sizes[path] = sizes.get(path), size
    return not watch or before == size


def _order(path: Path) -> tuple[bool, int, str]:
    """Step order, before loading: the checkpoint's own step entry, else its name's number."""
    step = _step_in_name(path)
    try:
        own = load_checkpoint(path).step
    except Exception:  # reported when it is evaluated
        own = None
    step = own if own is not None else step
    return step is None, step or 0, str(path)


def _step_in_name(path: Path) -> int | None:
    numbers = re.findall(r"\d+", path.stem)
    return int(numbers[-1]) if numbers else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_results(path: str | os.PathLike) -> list[SweepEntry]:
    """The entries already in a results file; lines a crash cut short are passed over."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
            entries.append(SweepEntry(data["checkpoint"], data["sha256"], data["step"],
                                      data.get("metrics", {}), data.get("error")))
        except (ValueError, KeyError, TypeError):
            continue
    return entries
