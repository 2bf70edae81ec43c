"""Loggers: real TensorBoard event files read back, JSON lines that survive a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from syllabus_eval.results.loggers import JSONLinesLogger, TensorBoardLogger


def run_three(runner) -> list:
    return [runner.evaluate(step=step) for step in (1000, 2000, 3000)]


class TestTensorBoard:
    def test_each_metric_is_a_scalar_at_the_results_step(self, agent, gate, tmp_path):
        pytest.importorskip("tensorboard")  # installed by `make test` (the tensorboard extra)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        gate.open.set()
        logger = TensorBoardLogger(tmp_path / "tb")
        with gate.runner(agent, callbacks=logger) as runner:
            results = run_three(runner)
        logger.close()
        events = EventAccumulator(str(tmp_path / "tb"))
        events.Reload()
        assert set(results[0]) <= set(events.Tags()["scalars"])
        rewards = events.Scalars("eval/reward")
        assert [e.step for e in rewards] == [1000, 2000, 3000]
        assert [e.value for e in rewards] == pytest.approx([r["eval/reward"] for r in results])

    def test_without_tensorboard_it_says_how_to_install_it(self, monkeypatch, tmp_path):
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
        with pytest.raises(ImportError, match=r"pip install 'syllabus-eval\[tensorboard\]'"):
            TensorBoardLogger(tmp_path)


class TestJSONLines:
    def test_one_line_per_result_appended(self, agent, gate, tmp_path):
        gate.open.set()
        path = tmp_path / "logs" / "eval.jsonl"
        with JSONLinesLogger(path) as first, gate.runner(agent, callbacks=first) as runner:
            results = run_three(runner)
            assert len(path.read_text().splitlines()) == 3  # flushed as it goes
        with JSONLinesLogger(path) as again:
            again(results[0])
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines == [dict(r) for r in results] + [dict(results[0])]

    def test_a_crash_loses_nothing_already_written(self, tmp_path):
        path = tmp_path / "eval.jsonl"
        script = textwrap.dedent(f"""
            import os
            from syllabus_eval import EvalResult
            from syllabus_eval.results.loggers import JSONLinesLogger
            logger = JSONLinesLogger({str(path)!r})
            for step in range(3):
                logger(EvalResult({{"eval/reward": step, "eval/step": step}}, [], step))
            os._exit(1)  # no close, no exit handlers: a crash
        """)
        assert subprocess.run([sys.executable, "-c", script]).returncode == 1
        assert [json.loads(line)["eval/step"] for line in path.read_text().splitlines()] == [
            0, 1, 2]
