"""Every Python example in the README runs as written.

Each example is run verbatim, after a prelude that defines the names its prose takes as given
(``agent``, ``obs``, ``make_env``, ...), or by a test beside the code it shows, which checks
what it does too. A new example needs an entry here: the last test fails otherwise.
"""

from __future__ import annotations

import re

import gymnasium as gym
import pytest

from tests.gates import start_ray
from tests.readme import README

# Examples run by the tests of the code they show, which check their effects as well.
RUN_ELSEWHERE = {
    "Writing an adapter#1": "tests/query/test_evaluator.py",
    "Stable-Baselines3 models#1": "tests/adapters/test_sb3.py",
    "Stable-Baselines3 with PLR and background evaluations#1": "tests/integrations/test_sb3.py",
    "TorchRL policies#1": "tests/adapters/test_torchrl.py",
    "PLR in a worker process#1": "tests/curricula/test_hosted.py",
    "Env actors on Ray, PLR in a Ray actor#1": "tests/curricula/test_hosted_ray.py",
    "Periodic evaluation during training#1": "tests/evaluation/test_schedule.py",
}

CARTPOLE = """
import gymnasium as gym
import torch
from syllabus_eval.demo.agents import LSTMAgent, MLPAgent
envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
agent, lstm_agent = MLPAgent(envs), LSTMAgent(envs)
num_envs, step = 2, 1000
obs = torch.as_tensor(envs.reset(seed=0)[0])
done = torch.zeros(num_envs)
obs_seq, done_seq = torch.stack([obs] * 3), torch.zeros(3, num_envs)
make_env = lambda: gym.make("CartPole-v1")
tasks = ["short", "long"]
"""

# Examples run here: the prelude that gives them their free names.
PRELUDES = {
    "Querying a training agent#1": CARTPOLE,
    "Compiled agents (`torch.compile`)#1": CARTPOLE + "from syllabus_eval.adapters import "
                                                      "CleanRLEvaluator\n",
    "A curriculum that queries the agent: Prioritized Level Replay#1": CARTPOLE,
    # Self-contained examples: nothing to give.
    "The hooks an adapter may use, and what its clones share#1": "",
    "Robust PLR (PLR⊥): score new tasks by evaluation, train only on replays#1": "",
    "Learnability (sampling for learnability)#1": "",
    "MiniGrid levels as tasks (`pip install 'syllabus-eval[minigrid]'`)#1": "",
    "Periodic evaluation during training#2": CARTPOLE + "from syllabus_eval import EvalRunner\n"
                                                        "from syllabus_eval.adapters import "
                                                        "CleanRLEvaluator\n"
                                                        "evaluator = CleanRLEvaluator(agent)\n",
}


# What an example's comments say it leaves, checked after it runs.
CHECKS = {
    "Learnability (sampling for learnability)#1":
        "import numpy as np\n"
        "assert learnability.success_rates()['long-pole'] == 0.4\n"
        "np.testing.assert_allclose(learnability.distribution(), [.04, .44, .04, .04, .44])\n",
    "Robust PLR (PLR⊥): score new tasks by evaluation, train only on replays#1":
        "assert set(plr.task_scores()) == set(CARTPOLE_TASKS)\n",
}


def examples() -> dict[str, str]:
    """Every ```python block of the README, keyed by its heading and its number under it."""
    found, counts, heading = {}, {}, None
    for match in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```", README.read_text(),
                             re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("#").strip()
            continue
        counts[heading] = counts.get(heading, 0) + 1
        found[f"{heading}#{counts[heading]}"] = match.group(2)
    return found


EXAMPLES = examples()


@pytest.fixture(scope="module")
def local_ray():
    """Examples that use Ray get the tests' local Ray (two CPUs), shut down after them."""
    ray = pytest.importorskip("ray")
    start_ray(ray)
    yield
    ray.shutdown()


@pytest.mark.parametrize("key", sorted(PRELUDES))
def test_the_example_runs_as_written(key, tmp_path, monkeypatch, request):
    if "minigrid" in key:
        pytest.importorskip("minigrid", reason="the minigrid extra (Python 3.11+)")
    if '"ray"' in EXAMPLES[key]:
        request.getfixturevalue("local_ray")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(PRELUDES[key], "prelude", "exec"), namespace)  # noqa: S102
    exec(compile(EXAMPLES[key], f"README.md: {key}", "exec"), namespace)  # noqa: S102
    exec(compile(CHECKS.get(key, ""), "checks", "exec"), namespace)  # noqa: S102
    for value in namespace.values():  # what the example built and left open
        if hasattr(value, "close") and isinstance(value, gym.vector.VectorEnv | gym.Env):
            value.close()
    runner = namespace.get("runner")
    if runner is not None:
        runner.wait()  # the evaluation it triggered lands, not an error
        assert runner.shutdown()


def test_every_example_has_a_test():
    untested = [key for key in EXAMPLES if key not in PRELUDES and key not in RUN_ELSEWHERE]
    assert untested == [], "README examples that no test runs: add them to tests/test_readme.py"


def test_the_tests_named_for_examples_exist():
    assert set(RUN_ELSEWHERE) | set(PRELUDES) <= set(EXAMPLES)
    for test in RUN_ELSEWHERE.values():
        assert "readme_snippet(" in (README.parent / test).read_text(), test
