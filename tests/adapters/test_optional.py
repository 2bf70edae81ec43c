"""The adapters package imports without the optional libraries (SB3, tensordict, TorchRL), and
each adapter then names the extra to install."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
for name in ("stable_baselines3", "tensordict", "torchrl"):
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
from syllabus_eval.adapters import SB3Evaluator, TorchRLEvaluator
for evaluator, extra in ((SB3Evaluator, "sb3"), (TorchRLEvaluator, "torchrl")):
    try:
        evaluator(None)
    except ImportError as error:
        assert f"pip install 'syllabus-eval[{extra}]'" in str(error), error
    else:
        raise AssertionError(f"{evaluator.__name__} was built without its library")
print("ok")
"""


def test_adapters_import_without_the_optional_libraries() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
