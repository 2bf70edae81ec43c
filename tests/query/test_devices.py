"""Per-thread state of queries: torch's intra-op thread count reaches threads started later."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gymnasium import spaces

from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.demo.agents import MLPAgent
from tests.cases import VECTOR
from tests.models import fake_envs

ROOT = Path(__file__).parents[2]

# A fresh interpreter, as a training script starts: one torch thread, then greedy queries (an
# argmax: a reduction, which runs as an OpenMP parallel region) from a thread started later.
# OpenMP keeps its thread count per thread: without the query setting it, that thread runs at
# OpenMP's default width, whose idle workers spin, and the process burns about twice the query
# thread's own CPU.
SCRIPT = """
import json, threading, time
import numpy as np, torch
torch.set_num_threads(1)
from syllabus_eval.adapters import CleanRLEvaluator
from tests.workers import cartpole_agent
evaluator = CleanRLEvaluator(cartpole_agent(seed=0), deterministic=True).detached()
obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
used = {}
def queries():
    evaluator.get_action(obs)
    own, process, deadline = time.thread_time(), time.process_time(), time.monotonic() + 1.0
    while time.monotonic() < deadline:
        evaluator.get_action(obs)
    used["own"], used["process"] = time.thread_time() - own, time.process_time() - process
thread = threading.Thread(target=queries)
thread.start()
thread.join()
print(json.dumps(used))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread CPU time (time.thread_time) "
                    "is compared with the process's, as Linux accounts them")
def test_a_query_thread_does_not_spin_a_second_core():
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    used = json.loads(run.stdout.strip().splitlines()[-1])
    assert used["own"] > 0.3  # it did work
    assert used["process"] - used["own"] < 0.4 * used["own"]  # and no other thread spun


class TestDevicesThisMachineLacks:
    """Issue #19: torch's own error comes at the first ``.to(device)``, a bare
    ``AssertionError`` without CUDA; the evaluator names ``device`` when it is built."""

    def agent(self) -> MLPAgent:
        return MLPAgent(fake_envs(VECTOR, spaces.Discrete(2)))

    def test_cuda_without_cuda(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(ValueError) as caught:
            CleanRLEvaluator(self.agent(), device="cuda")
        for fragment in ("device", "torch.cuda.is_available() is False", "'cuda'"):
            assert fragment in str(caught.value), str(caught.value)

    def test_a_cuda_device_past_the_last_one(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        with pytest.raises(ValueError) as caught:
            CleanRLEvaluator(self.agent(), device=torch.device("cuda", 3))
        for fragment in ("device", "'cuda:0' to 'cuda:0'", "type='cuda', index=3"):
            assert fragment in str(caught.value), str(caught.value)
