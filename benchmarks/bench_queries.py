"""Cost of ``get_value`` relative to the agent's own forward pass, side by side in one run.

    python benchmarks/bench_queries.py [--quick]

For each agent and batch size: the raw ``agent.get_value(x)`` under ``torch.no_grad()`` against
``CleanRLEvaluator.get_value(x)`` (same input tensor, same thread), with the training weights
unchanged between calls and with an optimizer step's worth of change before every call, and
``CleanRLEvaluator(agent, compile=True)`` (its query hooks compiled with torch.compile's
defaults; compiling happens in the untimed warm-up, and a second batch size recompiles with
dynamic shapes, as it would in use). Then,
like for like, on the same observations as the numpy array an env returns (the input
Syllabus-RL is made for): ours, and Syllabus-RL's ``CleanRLEvaluator`` (when ``syllabus-rl``
is installed) in its default set-up and with ``copy_agent=False``. Every figure is the median
over interleaved rounds of the ratio to the raw forward of the same round, with the range
(min-max) of those ratios. Targets (unchanged weights, tensor input): at most 1.25x at batch 1,
1.10x at batch 64 and above.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).parent))
from timing import per_call_seconds, ratio_text  # noqa: E402

from syllabus_eval.adapters import CleanRLEvaluator  # noqa: E402
from syllabus_eval.demo.agents import CNNAgent, MLPAgent  # noqa: E402
from syllabus_eval.results.report import format_table  # noqa: E402

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
    compiled = CleanRLEvaluator(agent, compile=True)
    obs = x.numpy()  # the same observations as the numpy array an env returns

    def raw() -> None:
        with torch.no_grad():
            agent.get_value(x)

    candidates = {"raw": raw, "ours": lambda: ours.get_value(x),
                  "ours, compile=True": lambda: compiled.get_value(x),
                  "ours, numpy": lambda: ours.get_value(obs)}
    if SyllabusEvaluator is not None:
        # Numpy input, which it is made for: its _prepare_state calls np.stack, which would
        # split a tensor row by row. Its default (copy_agent=True) copies the training agent's
        # state dict into the agent on every call; copy_agent=False skips that.
        default = SyllabusEvaluator(agent, device="cpu")
        in_place = SyllabusEvaluator(agent, device="cpu", copy_agent=False)
        candidates["syllabus"] = lambda: default.get_value(obs)
        candidates["syllabus in place"] = lambda: in_place.get_value(obs)
    same = per_call_seconds(candidates, calls, rounds)

    first = next(agent.parameters())

    def change_weights() -> None:  # what an optimizer step does to the version counters
        with torch.no_grad():
            first.add_(0.0)

    changed = per_call_seconds({"raw": raw, "ours": candidates["ours"]}, calls, rounds,
                               before_each=change_weights)

    def ratio(samples: dict[str, list[float]], name: str) -> str:
        if name not in samples:
            return "not installed"
        return ratio_text(samples[name], samples["raw"])

    return [name, str(x.shape[0]), f"{statistics.median(same['raw']) * 1e6:.1f}",
            ratio(same, "ours"), ratio(changed, "ours"), ratio(same, "ours, compile=True"),
            ratio(same, "ours, numpy"),
            ratio(same, "syllabus"), ratio(same, "syllabus in place")]


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
                              "ours, changed weights", "ours, compile=True",
                              "ours, numpy obs", "Syllabus-RL",
                              "Syllabus-RL, copy_agent=False"]))


if __name__ == "__main__":
    main()
