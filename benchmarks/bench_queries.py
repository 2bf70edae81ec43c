"""Cost of ``get_value`` relative to the agent's own forward pass, side by side in one run.

    python benchmarks/bench_queries.py [--quick]

For each agent and batch size: the raw ``agent.get_value(x)`` under ``torch.no_grad()`` against
``CleanRLEvaluator.get_value(x)`` (same input tensor, same thread), with the training weights
unchanged between calls and with an optimizer step's worth of change before every call; and
Syllabus-RL's ``CleanRLEvaluator`` when ``syllabus-rl`` is installed, given the same
observations as the numpy array an env returns (the input it is made for). Targets (unchanged
weights): at most 1.25x at batch 1, 1.10x at batch 64 and above.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).parent))
from timing import per_call_seconds  # noqa: E402

from syllabus_eval.adapters import CleanRLEvaluator  # noqa: E402
from syllabus_eval.agents import CNNAgent, MLPAgent  # noqa: E402
from syllabus_eval.report import format_table  # noqa: E402

try:
    from syllabus.core.evaluator import CleanRLEvaluator as SyllabusEvaluator
except ImportError:  # the `bench` extra is not installed
    SyllabusEvaluator = None

CARTPOLE = SimpleNamespace(single_observation_space=spaces.Box(-5, 5, (4,), np.float32),
                           single_action_space=spaces.Discrete(2))
ATARI = SimpleNamespace(single_observation_space=spaces.Box(0, 255, (4, 84, 84), np.uint8),
                        single_action_space=spaces.Discrete(6))


def measure(name: str, agent: torch.nn.Module, x: torch.Tensor, calls: int, rounds: int
            ) -> list[str]:
    ours = CleanRLEvaluator(agent)

    def raw() -> None:
        with torch.no_grad():
            agent.get_value(x)

    candidates = {"raw": raw, "ours": lambda: ours.get_value(x)}
    if SyllabusEvaluator is not None:
        theirs = SyllabusEvaluator(agent, device="cpu")
        # The same observations as the numpy array an env gives: its _prepare_state calls
        # np.stack, which would split a tensor row by row and cost it more with every row.
        obs = x.numpy()
        candidates["syllabus"] = lambda: theirs.get_value(obs)
    same = per_call_seconds(candidates, calls, rounds)

    first = next(agent.parameters())

    def change_weights() -> None:  # what an optimizer step does to the version counters
        with torch.no_grad():
            first.add_(0.0)

    changed = per_call_seconds({"raw": raw, "ours": candidates["ours"]}, calls, rounds,
                               before_each=change_weights)
    base = same["raw"]
    syllabus = f"{same['syllabus'] / base:.2f}x" if "syllabus" in same else "not installed"
    return [name, str(x.shape[0]), f"{base * 1e6:.1f}", f"{same['ours'] / base:.2f}x",
            f"{changed['ours'] / changed['raw']:.2f}x", syllabus]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args()
    calls, rounds = (20, 2) if args.quick else (300, 9)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # one query thread, as in a curriculum worker
    mlp, cnn = MLPAgent(CARTPOLE), CNNAgent(ATARI)
    rows = [measure("CartPole MLP", mlp, torch.randn(batch, 4), calls, rounds)
            for batch in (1, 64, 1024)]
    rows += [measure("Atari CNN", cnn, torch.randint(0, 255, (batch, 4, 84, 84)).float(),
                     max(calls // 10, 5), rounds) for batch in (1, 32)]
    print("get_value cost relative to the raw forward under no_grad (lower is better)\n")
    print(format_table(rows, ["agent", "batch", "raw us/call", "ours, same weights",
                       "ours, changed weights", "Syllabus-RL"]))


if __name__ == "__main__":
    main()
