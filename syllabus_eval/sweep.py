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
step in its file name, see :func:`step_in_name`), with the observation statistics it carries,
and one JSON line per checkpoint is appended to ``results`` as it finishes: ``{"checkpoint",
"sha256", "step", "metrics"}``, or ``"error"`` for a file that does not load or fit (the sweep
goes on). Metrics that are not finite (NaN: a metric no episode had) are written as ``null``,
so that strict JSON parsers read the file, and read back as NaN. A rerun skips the
checkpoints whose content (SHA-256) already has metrics in ``results``, so an interrupted sweep
loses nothing finished and repeats nothing; those that failed are evaluated again (after a fix
of ``--agent`` or the env, say), and the latest line of each counts. With ``watch``, the folder
is polled for new checkpoints until ``idle_timeout`` seconds pass without one (Habitat #796: no
endless loop); a file is taken once its size stops changing between two polls (write
checkpoints to a temporary name and rename them, as
:func:`~syllabus_eval.checkpoints.save_checkpoint` does, to be safe), and a file still being
written counts as activity. Each file is hashed once, and again only when its size or
modification time changes. At the end, ``curve`` is drawn: return and success against step,
overall (or per suite) and per task, with confidence bands.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import Checkpoint, load_checkpoint
from .errors import bad_argument, check_flag, check_number
from .loggers import JSONLinesLogger, TensorBoardLogger, json_ready
from .report import format_table, plot_curves
from .results import EvalResult
from .runner import EvalRunner

logger = logging.getLogger(__name__)

SUFFIXES = (".pt", ".pth", ".ckpt")  # what a folder's checkpoints are named
_GLOB_MAGIC = re.compile(r"[*?[]")
# A word that names a step counter, and a number right after it (``step_10000``,
# ``global_step=5``, ``iter3``) or right before it (SB3's ``rl_model_10000_steps``).
_STEP_WORD = r"(?:steps?|iter(?:ation)?s?|updates?|frames?)"
_AFTER_WORD = re.compile(_STEP_WORD + r"[-_=]?(\d+)", re.IGNORECASE)
_BEFORE_WORD = re.compile(r"(\d+)[-_]?" + _STEP_WORD + r"(?![a-z])", re.IGNORECASE)


@dataclass
class SweepEntry:
    """One checkpoint of a sweep: its metrics, or the error that stopped it."""

    checkpoint: str
    sha256: str
    step: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as a results line: strict JSON, non-finite metrics as ``None``."""
        return json_ready(self._line())

    def _line(self) -> dict[str, Any]:
        """The results line, NaN as it is (:class:`JSONLinesLogger` writes it as ``null``)."""
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
            Without ``watch`` it must hold at least one checkpoint; with it, an empty or
            not yet made folder is waited for (its parent folder must exist).
        runner: evaluates each checkpoint's state dict (``runner.evaluate``).
        results: the JSON-lines file to append to and resume from (``None``: none).
        tensorboard: a folder: each checkpoint's metrics as TensorBoard scalars at its step.
        curve: a PNG of return (and success) against step, per task, written at the end. Its
            folder is checked to be writable first; should drawing still fail, the entries
            are returned all the same, with a warning logged.
        watch: keep polling ``source`` for new checkpoints until ``idle_timeout`` seconds
            pass without one.
        idle_timeout: seconds without a new checkpoint after which watching stops.
        poll_interval: seconds between polls.
        on_entry: called with each entry as it is written.

    Returns:
        The entries of this sweep and of the ones in ``results`` before it, in step order:
        one per checkpoint content, its latest outcome.

    Raises:
        ValueError: a bad argument (named), e.g. a ``source`` with no checkpoint.
    """
    if not isinstance(runner, EvalRunner):
        raise bad_argument("runner", "an EvalRunner", runner)
    check_sweep_arguments(source, results=results, tensorboard=tensorboard, curve=curve,
                          watch=watch)
    check_number("idle_timeout", idle_timeout, 0.0)
    check_number("poll_interval", poll_interval, 0.0, low_open=True)
    if on_entry is not None and not callable(on_entry):
        raise bad_argument("on_entry", "a callable taking a SweepEntry, or None", on_entry)
    latest: dict[str, SweepEntry] = {}  # by content: the last line of each counts
    for entry in _read_results(results) if results is not None else []:
        latest[entry.sha256] = entry
    # Checkpoints with metrics are done; failed ones are tried again, once per sweep.
    tried = {digest for digest, entry in latest.items() if entry.error is None}
    lines = None if results is None else JSONLinesLogger(results, fsync=True)
    board = None if tensorboard is None else TensorBoardLogger(tensorboard)
    sizes: dict[Path, int] = {}  # a file's size at the last poll: taken once it holds still
    digests: dict[Path, tuple[int, int, str]] = {}  # (size, mtime) at hashing, and the hash
    last_new = time.monotonic()
    try:
        while True:
            fresh, pending = [], False
            for path in checkpoint_files(source):
                if not _settled(path, sizes, watch):
                    pending = pending or path in sizes  # being written (not gone)
                    continue
                digest = _sha256(path, digests)
                if digest is not None and digest not in tried:
                    tried.add(digest)
                    fresh.append((path, digest))
            for path, digest, step, checkpoint in _in_step_order(fresh):
                entry = _evaluate(path, digest, step, checkpoint, runner)
                latest[digest] = entry
                if lines is not None:
                    lines.write(entry._line())
                if board is not None and entry.error is None:
                    board(EvalResult(entry.metrics, [], entry.step))
                if on_entry is not None:
                    on_entry(entry)
            if fresh or pending:  # a file still growing counts as a new one: wait for it
                last_new = time.monotonic()
            if not watch or time.monotonic() - last_new >= idle_timeout:
                break
            time.sleep(poll_interval)
    finally:
        for sink in (lines, board):
            if sink is not None:
                sink.close()
    entries = sorted(latest.values(), key=lambda entry: _step_order(entry.step,
                                                                    entry.checkpoint))
    if curve is not None:
        try:
            plot_sweep(entries, curve)
        except Exception as error:  # the sweep's entries matter more than its picture
            logger.warning("curve %s not written: %r", curve, error)
    return entries


def check_sweep_arguments(source: Any, *, results: Any = None, tensorboard: Any = None,
                          curve: Any = None, watch: bool = False) -> None:
    """The checks :func:`evaluate_checkpoints` makes of its paths before evaluating anything,
    for callers that want them before building a runner (the command line).

    Raises:
        ValueError: naming the argument, what was expected and what came.
    """
    check_flag("watch", watch)
    _check_source(source, watch)
    for name, value in (("results", results), ("tensorboard", tensorboard), ("curve", curve)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise bad_argument(name, "a path or None", value)
    if results is not None:
        if Path(results).is_dir():
            raise ValueError(f"results: expected a JSON-lines file, got the folder "
                             f"{str(results)!r}")
        _check_writable("results", Path(results).parent)
    if tensorboard is not None:
        if Path(tensorboard).exists() and not Path(tensorboard).is_dir():
            raise ValueError(f"tensorboard: expected a folder, got the file "
                             f"{str(tensorboard)!r}")
        _check_writable("tensorboard", Path(tensorboard))
    if curve is not None:
        if Path(curve).is_dir():
            raise ValueError(f"curve: expected an image file name, got the folder "
                             f"{str(curve)!r}")
        _check_writable("curve", Path(curve).parent)
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        suffix = Path(curve).suffix[1:].lower()
        if suffix and suffix not in formats:  # matplotlib would say so only after the sweep
            raise ValueError(f"curve: expected an image file ending in one of "
                             f"{', '.join('.' + f for f in sorted(formats))}, got "
                             f"{str(curve)!r}")


def _check_source(source: Any, watch: bool) -> None:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if not isinstance(text, str) or not text:
            raise bad_argument("source", "a folder, a glob pattern or checkpoint files", source)
        if watch:  # the checkpoints may come later, but not into a folder that cannot exist
            literal = []
            for part in Path(text).parts:
                if _GLOB_MAGIC.search(part):
                    break
                literal.append(part)
            parent = Path(*literal).parent if literal else Path(".")
            if not parent.is_dir():
                raise ValueError(f"source: expected a folder or glob whose parent folder "
                                 f"exists, got {text!r} ({str(parent)!r} is no folder)")
            return
        if not checkpoint_files(source):
            if Path(text).is_dir():
                found = (f"a folder without {', '.join(SUFFIXES)} files")
            elif _GLOB_MAGIC.search(text):
                found = "a glob pattern that matches no file"
            else:
                found = "no such file or folder"
            raise ValueError(f"source: expected a folder of checkpoints, a glob pattern or "
                             f"files, got {text!r}: {found}")
        return
    try:
        paths = list(source)
    except TypeError:
        raise bad_argument("source", "a folder, a glob pattern or an iterable of checkpoint "
                           "files", source) from None
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise bad_argument("source", "checkpoint file paths", path)
        if not watch and not Path(path).is_file():
            raise ValueError(f"source: expected checkpoint files, got {str(path)!r}: no such "
                             "file")
    if not paths and not watch:
        raise ValueError("source: expected at least one checkpoint file, got an empty list")


def _check_writable(name: str, folder: Path) -> None:
    """``folder`` exists and is writable, or can be made: its nearest existing ancestor is a
    writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name}: expected a path whose folder can be made, got one under "
                         f"the file {str(existing)!r}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: expected a writable folder, got {str(folder)!r} "
                         f"({str(existing)!r} is not writable)")


def groups_of(metrics: dict[str, float]) -> dict[str, str]:
    """``{label: prefix}`` of what ``metrics`` reports on: overall (``"all"``: ``eval/``) or
    each suite (``"train"``: ``eval/train/``), then each task, inside its suite where there
    are suites (``"train/a"``: ``eval/train/task/a/``)."""
    suites = _suites(metrics)
    groups = {"all": "eval/"} if "eval/reward" in metrics else {}
    groups.update({suite: f"eval/{suite}/" for suite in suites})
    for scope, label in [("eval/", ""), *((f"eval/{s}/", f"{s}/") for s in suites)]:
        start, end = f"{scope}task/", "/reward"
        names = sorted(key[len(start):-len(end)] for key in metrics
                       if key.startswith(start) and key.endswith(end))
        groups.update({label + name: f"{start}{name}/" for name in names})
    return groups


def _suites(metrics: dict[str, float]) -> list[str]:
    """The suites of a result (``eval/<suite>/reward``), in the runner's order."""
    return [key.split("/")[1] for key in metrics
            if key.count("/") == 2 and key.startswith("eval/")
            and key.endswith("/reward") and key != "eval/task/reward"]


def sweep_table(entries: Iterable[SweepEntry]) -> str:
    """A Markdown table of a sweep: step, checkpoint, return with its interval, success; with
    suites (``EvalRunner(suites=...)``), a row per suite, named in a ``suite`` column."""
    entries = list(entries)
    with_suites = any(_suites(entry.metrics) for entry in entries)
    rows = []
    for entry in entries:
        name = Path(entry.checkpoint).name
        if entry.error is not None:
            rows.append([entry.step, name, *([""] if with_suites else []), "error",
                         entry.error[:60], ""])
            continue
        scopes = [(suite, f"eval/{suite}/") for suite in _suites(entry.metrics)
                  if with_suites] or [("", "eval/")]
        for suite, prefix in scopes:
            m = {key[len(prefix):]: value for key, value in entry.metrics.items()
                 if key.startswith(prefix)}
            low, high = m.get("reward_ci_low", math.nan), m.get("reward_ci_high", math.nan)
            interval = (f"[{low:.1f}, {high:.1f}]" if math.isfinite(low) and math.isfinite(high)
                        else "")  # NaN: fewer than two episodes
            reward = f"{m['reward']:.1f}" if "reward" in m else ""
            success = f"{m['success']:.0%}" if "success" in m else ""
            rows.append([entry.step, name, *([suite] if with_suites else []), reward,
                         interval, success])
    header = ["step", "checkpoint", *(["suite"] if with_suites else []), "return",
              "95% interval", "success"]
    return format_table(rows, header)


def plot_sweep(entries: Iterable[SweepEntry], path: str | os.PathLike) -> Path:
    """``curve.png``: return and success against step, overall (or per suite) and per task,
    with bands."""
    results = [{**entry.metrics, "eval/step": entry.step} for entry in entries
               if entry.error is None and entry.step is not None]
    groups: dict[str, str] = {}
    for result in results:
        groups.update(groups_of(result))
    # Overall and suites first, then the tasks: the order groups_of gives one result.
    ordered = sorted(groups.items(), key=lambda item: item[1].count("/task/"))
    return plot_curves(results, dict(ordered) or {"all": "eval/"}, path)


def _evaluate(path: Path, digest: str, step: int | None, checkpoint: Checkpoint | None,
              runner: EvalRunner) -> SweepEntry:
    """The entry of one checkpoint at ``step`` (its step order's), loading it unless
    ``checkpoint`` is given."""
    try:
        if checkpoint is None:
            checkpoint = load_checkpoint(path)
            # Its own step, as in step order, also for a file that did not load when ordered.
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
        sizes.pop(path, None)
        return False
    before, sizes[path] = sizes.get(path), size
    return not watch or before == size


def _step_order(step: int | None, name: str) -> tuple[bool, int, str]:
    """The sort key of step order: by step, those without one last, then by name."""
    return step is None, step or 0, name


def _in_step_order(fresh: list[tuple[Path, str]]
                   ) -> list[tuple[Path, str, int | None, Checkpoint | None]]:
    """``fresh`` in step order, each with its step and with its checkpoint where it had to
    be loaded whole to learn its step, else ``None``: loaded when evaluated."""
    keyed = []
    for path, digest in fresh:
        own, checkpoint = _own_step(path)
        step = own if own is not None else step_in_name(path)
        keyed.append((_step_order(step, str(path)), (path, digest, step, checkpoint)))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def _own_step(path: Path) -> tuple[int | None, Checkpoint | None]:
    """A checkpoint's own ``step`` entry, and the checkpoint if it was read whole (a file
    ``torch.load`` cannot map), so as not to read it twice."""
    try:
        checkpoint = load_checkpoint(path, mmap=True)
    except Exception:  # reported when it is evaluated
        return None, None
    step = checkpoint.step if isinstance(checkpoint.step, int) else None
    # A mapped one is dropped: its tensors are read only when used, and a file rewritten in
    # place by then would change them, or kill the process (SIGBUS) while it is shorter.
    return step, None if zipfile.is_zipfile(path) else checkpoint


def step_in_name(path: str | os.PathLike) -> int | None:
    """The training step a checkpoint's file name gives, for a file without a ``step`` entry.

    The number right after a step word (``step``, ``steps``, ``global_step``, ``timesteps``,
    ``iter``, ``iteration``, ``update``, ``frames``; any case, joined by nothing, ``_``, ``-``
    or ``=``: ``step_10000``, ``steps10000``, ``global_step=5``), else the number right before
    one (SB3's ``rl_model_10000_steps``), the last such if several; else the largest number
    in the name (``agent_10000_seed1`` is step 10000, not 1); else ``None``.
    """
    stem = Path(path).stem
    for pattern in (_AFTER_WORD, _BEFORE_WORD):
        found = pattern.findall(stem)
        if found:
            return int(found[-1])
    numbers = re.findall(r"\d+", stem)
    return max(map(int, numbers)) if numbers else None


def _sha256(path: Path, cache: dict[Path, tuple[int, int, str]]) -> str | None:
    """The file's SHA-256, computed again only when its size or modification time changed
    since (watching polls the same files again and again); ``None`` if it is gone."""
    try:
        stat = path.stat()
        known = cache.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:  # gone meanwhile
        return None
    cache[path] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
    return digest.hexdigest()


def _read_results(path: str | os.PathLike) -> list[SweepEntry]:
    """The entries already in a results file, in file order; lines a crash cut short are
    passed over, and ``null`` metrics read back as NaN."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
            metrics = {key: math.nan if value is None else float(value)
                       for key, value in data.get("metrics", {}).items()}
            entries.append(SweepEntry(data["checkpoint"], data["sha256"], data["step"],
                                      metrics, data.get("error")))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return entries
