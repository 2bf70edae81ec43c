"""The curricula benchmark's quick mode runs end to end on a tiny budget: a table row per
curriculum, the plot and the JSON written (behaviour, not timing: the numbers mean nothing)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("minigrid", reason="needs the minigrid extra: pip install "
                    "'syllabus-eval[minigrid]' (make test installs it)")

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_curricula.py"
CURRICULA = ["domain randomization", "PLR", "Robust PLR", "Learnability", "learning progress"]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_bench_curricula_quick", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_mode_gives_a_row_per_curriculum_and_writes_the_plot(tmp_path, capsys) -> None:
    bench = load_benchmark()
    out = tmp_path / "curricula.png"
    # One PPO iteration (8 envs x 128 steps) per run, one seed, in this process.
    rows = bench.main(["--quick", "--steps", "1024", "--seeds", "1", "--jobs", "1",
                       "--out", str(out)])
    printed = capsys.readouterr().out
    assert [row[0] for row in rows] == CURRICULA
    assert all(row[1] == 1 for row in rows)  # one seed each
    for name in CURRICULA:
        assert f"| {name} " in printed
    assert out.stat().st_size > 0
    data = json.loads(out.with_suffix(".json").read_text())
    runs = data["runs"]
    assert sorted(run["curriculum"] for run in runs) == sorted(CURRICULA)
    for run in runs:
        assert run["steps"] == 1024
        assert [point["step"] for point in run["curve"]] == [1024]
        assert 0.0 <= run["final_success"] <= 1.0
    # The curricula that evaluate levels themselves spend extra env steps; the others none.
    extra = {run["curriculum"]: run["curriculum_eval_steps"] for run in runs}
    assert extra["domain randomization"] == extra["PLR"] == 0
    assert extra["Learnability"] > 0 and extra["learning progress"] > 0
    assert extra["Robust PLR"] > 0


def test_a_bad_step_budget_is_refused_naming_the_option(capsys) -> None:
    bench = load_benchmark()
    with pytest.raises(SystemExit):
        bench.main(["--steps", "10"])
    assert "--steps" in capsys.readouterr().err
