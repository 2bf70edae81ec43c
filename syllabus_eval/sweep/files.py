"""The checkpoint files of a sweep: found in a folder, a glob or a list; ordered by step;
hashed; taken once they hold still while a folder is watched; and the checks of a sweep's
paths, made before anything is evaluated."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from syllabus_eval.errors import ArgumentError, bad_argument, check_flag
from syllabus_eval.evaluation.checkpoints import Checkpoint, load_checkpoint

SUFFIXES = (".pt", ".pth", ".ckpt")  # what a folder's checkpoints are named
_GLOB_MAGIC = re.compile(r"[*?[]")
# A word that names a step counter, and a number right after it (``step_10000``,
# ``global_step=5``, ``iter3``) or right before it (SB3's ``rl_model_10000_steps``).
_STEP_WORD = r"(?:steps?|iter(?:ation)?s?|updates?|frames?)"
_AFTER_WORD = re.compile(_STEP_WORD + r"[-_=]?(\d+)", re.IGNORECASE)
_BEFORE_WORD = re.compile(r"(\d+)[-_]?" + _STEP_WORD + r"(?![a-z])", re.IGNORECASE)


def checkpoint_files(source: Any) -> list[Path]:
    """The checkpoint files of a folder (``.pt``, ``.pth``, ``.ckpt``), a glob or a list."""
    if isinstance(source, (str, os.PathLike)):
        if Path(source).is_dir():
            return sorted(p for p in Path(source).iterdir()
                          if p.suffix in SUFFIXES and not p.name.startswith("."))
        return sorted(Path(p) for p in glob.glob(str(source)))
    return [Path(p) for p in source]


def settled(path: Path, sizes: dict[Path, int], watch: bool) -> bool:
    """Whether ``path`` is complete: always without watching; with it, once its size is the
    same at two polls in a row."""
    try:
        size = path.stat().st_size
    except OSError:  # gone meanwhile
        sizes.pop(path, None)
        return False
    before, sizes[path] = sizes.get(path), size
    return not watch or before == size


def step_order(step: int | None, name: str) -> tuple[bool, int, str]:
    """The sort key of step order: by step, those without one last, then by name."""
    return step is None, step or 0, name


def in_step_order(fresh: list[tuple[Path, str]]
                   ) -> list[tuple[Path, str, int | None, Checkpoint | None]]:
    """``fresh`` in step order, each with its step and with its checkpoint where it had to
    be loaded whole to learn its step, else ``None``: loaded when evaluated."""
    keyed = []
    for path, digest in fresh:
        own, checkpoint = own_step(path)
        step = own if own is not None else step_in_name(path)
        keyed.append((step_order(step, str(path)), (path, digest, step, checkpoint)))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def own_step(path: Path) -> tuple[int | None, Checkpoint | None]:
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


def file_sha256(path: Path, cache: dict[Path, tuple[int, int, str]]) -> str | None:
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


def check_sweep_arguments(source: Any, *, results: Any = None, tensorboard: Any = None,
                          curve: Any = None, watch: bool = False, settings: Any = None) -> None:
    """The checks :func:`evaluate_checkpoints` makes of its arguments before evaluating
    anything, for callers that want them before building a runner (the command line).

    Raises:
        ValueError: naming the argument, what was expected and what came.
    """
    check_flag("watch", watch)
    if settings is not None and (not isinstance(settings, Mapping) or not all(
            isinstance(name, str) for name in settings)):
        raise bad_argument("settings", "a dict {name: value} or None", settings)
    check_source(source, watch)
    for name, value in (("results", results), ("tensorboard", tensorboard), ("curve", curve)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise bad_argument(name, "a path or None", value)
    if results is not None:
        if Path(results).is_dir():
            raise ArgumentError("results", f"expected a JSON-lines file, got the folder "
                             f"{str(results)!r}")
        _check_writable("results", Path(results).parent)
    if tensorboard is not None:
        if Path(tensorboard).exists() and not Path(tensorboard).is_dir():
            raise ArgumentError("tensorboard", f"expected a folder, got the file "
                             f"{str(tensorboard)!r}")
        _check_writable("tensorboard", Path(tensorboard))
    if curve is not None:
        if Path(curve).is_dir():
            raise ArgumentError("curve", f"expected an image file name, got the folder "
                             f"{str(curve)!r}")
        _check_writable("curve", Path(curve).parent)
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        suffix = Path(curve).suffix[1:].lower()
        if suffix and suffix not in formats:  # matplotlib would say so only after the sweep
            raise ArgumentError("curve", f"expected an image file ending in one of "
                             f"{', '.join('.' + f for f in sorted(formats))}, got "
                             f"{str(curve)!r}")


def check_source(source: Any, watch: bool) -> None:
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
                raise ArgumentError("source", f"expected a folder or glob whose parent folder "
                                 f"exists, got {text!r} ({str(parent)!r} is no folder)")
            return
        if not checkpoint_files(source):
            if Path(text).is_dir():
                found = (f"a folder without {', '.join(SUFFIXES)} files")
            elif _GLOB_MAGIC.search(text):
                found = "a glob pattern that matches no file"
            else:
                found = "no such file or folder"
            raise ArgumentError("source", f"expected a folder of checkpoints, a glob pattern or "
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
            raise ArgumentError("source", f"expected checkpoint files, got {str(path)!r}: no such "
                             "file")
    if not paths and not watch:
        raise ArgumentError("source", "expected at least one checkpoint file, got an empty list")


def _check_writable(name: str, folder: Path) -> None:
    """``folder`` exists and is writable, or can be made: its nearest existing ancestor is a
    writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ArgumentError(name, f"expected a path whose folder can be made, got one under "
                         f"the file {str(existing)!r}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ArgumentError(name, f"expected a writable folder, got {str(folder)!r} "
                         f"({str(existing)!r} is not writable)")
