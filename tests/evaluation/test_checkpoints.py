"""Checkpoint files: round trip with statistics, plain state dicts, clear errors for the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from syllabus_eval import Snapshot
from syllabus_eval.evaluation.checkpoints import load_checkpoint, save_checkpoint
from syllabus_eval.evaluation.normalization import ObsNormStats
from tests.workers import cartpole_agent


def test_a_round_trip_keeps_everything(tmp_path):
    state = cartpole_agent(seed=0).state_dict()
    stats = ObsNormStats(np.arange(4.0), np.ones(4) * 2, 123.0)
    path = save_checkpoint(tmp_path / "deep" / "ck.pt", Snapshot(state, 7, 4096, stats),
                           metrics={"eval/reward": 42.5})
    loaded = load_checkpoint(path)
    assert (loaded.step, loaded.weights_version, loaded.metrics) == (4096, 7,
                                                                     {"eval/reward": 42.5})
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in state.items())
    np.testing.assert_array_equal(loaded.obs_norm.mean, stats.mean)
    assert loaded.obs_norm.count == 123.0
    assert loaded.snapshot().obs_norm == loaded.obs_norm
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"]  # no temporary left


def test_a_plain_state_dict(tmp_path):
    state = cartpole_agent(seed=0).state_dict()
    torch.save(state, tmp_path / "agent.pt")
    loaded = load_checkpoint(tmp_path / "agent.pt")
    assert loaded.step is None and loaded.obs_norm is None
    assert loaded.state_dict.keys() == state.keys()


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "does not load as a torch checkpoint"),
    ([1, 2, 3], "holds neither a syllabus-eval checkpoint nor a state dict"),
])
def test_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)


def test_missing_file_and_empty_snapshot(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="snapshot: expected weights to save"):
        save_checkpoint(tmp_path / "x.pt", Snapshot())
