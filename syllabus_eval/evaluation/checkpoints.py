"""Checkpoint files: the weights one evaluation ran on, with their normalisation, step and metrics.

Usage::

    from syllabus_eval.evaluation.checkpoints import load_checkpoint, save_checkpoint

    save_checkpoint("runs/best.pt", snapshot, metrics=result)   # what save_best= writes
    checkpoint = load_checkpoint("runs/best.pt")
    agent.load_state_dict(checkpoint.state_dict)
    runner.evaluate(checkpoint.state_dict, obs_norm=checkpoint.obs_norm)

One ``torch.save`` file holding a dict: ``"format"`` (``"syllabus-eval checkpoint"``),
``"state_dict"`` (CPU tensors), ``"obs_norm"`` (``{"mean", "var", "count"}`` or ``None``),
``"step"``, ``"weights_version"`` and ``"metrics"``. It loads with ``weights_only=True`` (no
code runs on loading). :func:`load_checkpoint` also takes a plain state dict saved with
``torch.save(agent.state_dict(), path)``, as CleanRL saves its models. Files are written to a
temporary name first and then renamed, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from syllabus_eval.errors import bad_argument
from syllabus_eval.evaluation.normalization import ObsNormStats
from syllabus_eval.evaluation.snapshot import Snapshot

FORMAT = "syllabus-eval checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds (see the module docs)."""

    state_dict: dict[str, torch.Tensor]
    obs_norm: ObsNormStats | None = None
    step: int | None = None
    weights_version: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> Snapshot:
        """The checkpoint as what an evaluation runs on."""
        return Snapshot(self.state_dict, self.weights_version, self.step, self.obs_norm)


def save_checkpoint(path: str | os.PathLike, snapshot: Snapshot,
                    metrics: Mapping[str, float] | None = None) -> Path:
    """Write ``snapshot`` (and the metrics it scored) to ``path``; returns the path.

    Raises:
        ValueError: the snapshot holds no weights (an evaluator without any).
    """
    if snapshot.weights is None:
        raise bad_argument("snapshot", "weights to save (an evaluator with an agent)",
                           snapshot)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in snapshot.weights.items()},
        "obs_norm": None if snapshot.obs_norm is None else snapshot.obs_norm.to_dict(),
        "step": snapshot.step,
        "weights_version": snapshot.version,
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(content, partial)
    os.replace(partial, path)  # atomic: readers see the old file or the new one
    return path


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> Checkpoint:
    """The :class:`Checkpoint` in ``path``: one :func:`save_checkpoint` wrote, or a plain
    state dict.

    Args:
        path: the file.
        mmap: map the tensors instead of reading them (only the pickled dict is read), where
            the file is in torch's zip format; other files are read whole.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint (corrupt, or something else).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file {str(path)!r}")
    try:
        content: Any = _read(path, mmap)
    except Exception as error:
        raise ValueError(f"{str(path)!r} does not load as a torch checkpoint: {error}"
                         ) from None
    if isinstance(content, Mapping) and content.get("format") == FORMAT:
        obs_norm = content.get("obs_norm")
        return Checkpoint(dict(content["state_dict"]),
                          None if obs_norm is None else ObsNormStats(**obs_norm),
                          content.get("step"), content.get("weights_version"),
                          dict(content.get("metrics") or {}))
    if isinstance(content, Mapping) and content and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
        return Checkpoint(dict(content))
    raise ValueError(f"{str(path)!r} holds neither a {FORMAT} nor a state dict")


def _read(path: Path, mmap: bool) -> Any:
    """``torch.load`` of ``path``, tensors mapped where ``mmap`` and the format allow."""
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # torch maps only its zip format: other files are read whole
            pass
    return torch.load(path, map_location="cpu", weights_only=True)
