"""A Ray cluster started the way users start one (``ray start --head``, a separate process on a
local port), reached by address: evaluations run in its actors, the code they need shipped
through ``runtime_env``, and the runner's shutdown leaves the cluster running."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner
from tests.workers import cartpole, cartpole_evaluator

ray = pytest.importorskip("ray")

ROOT = Path(__file__).parents[3]
RAY = Path(sys.executable).with_name("ray")  # the ray command of this environment
# Token authentication, Ray's default, with a token of the test's own: the cluster and its
# drivers find it in the environment (users keep theirs in ~/.ray/auth_token).
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_status(address: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), "status", "--address", address], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **AUTH})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start --head --block``, as a user runs it; in a temp dir of its own, so that a
    later ``ray.init()`` does not take it for the latest cluster to join."""
    address = f"127.0.0.1:{free_port()}"
    head = subprocess.Popen(
        [str(RAY), "start", "--head", f"--port={address.split(':')[1]}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={tmp_path_factory.mktemp('ray')}", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **AUTH})
    deadline = time.monotonic() + 90
    while ray_status(address).returncode != 0:
        assert head.poll() is None, "ray start --head exited"
        assert time.monotonic() < deadline, "the Ray cluster did not come up"
        time.sleep(1)
    yield address
    head.terminate()  # with --block, the head stops every process it started
    head.wait(60)


DRIVER = """
import json, sys
import ray
from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, RayBackend
from tests.workers import cartpole, cartpole_evaluator

address = sys.argv[1]
with EvalRunner(EnvSpec(cartpole, num_envs=4), cartpole_evaluator(seed=1), num_episodes=8,
                episodes=EpisodeSettings(max_steps=200, seed=2),
                backend=RayBackend(
                    address=address, evaluator_fn=cartpole_evaluator, num_workers=2,
                    # the actors import tests.workers: ship it (the package is installed)
                    ray_kwargs={"runtime_env": {"py_modules": ["tests"]},
                                "log_to_driver": False})) as runner:
    result = runner.evaluate()
    cluster = ray.get_runtime_context().gcs_address
    actors = [a for a in ray.util.list_named_actors() if a.startswith("syllabus-eval-")]
print(json.dumps({"metrics": result, "cluster": cluster, "actors": len(actors),
                  "connected_after": ray.is_initialized()}))
"""


def test_evaluations_run_in_the_clusters_actors_and_shutdown_leaves_it(cluster):
    # A user's script, connecting to the cluster by address (a driver process of its own).
    run = subprocess.run([sys.executable, "-c", DRIVER, cluster], cwd=ROOT, text=True,
                         capture_output=True, timeout=240,
                         env={**os.environ, **AUTH})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # that cluster (its port; Ray names the node by its own address), not a new local one
    assert report["cluster"].rsplit(":", 1)[1] == cluster.rsplit(":", 1)[1]
    assert report["actors"] == 2
    assert report["connected_after"] is False  # the runner let go of its connection...
    assert ray_status(cluster).returncode == 0  # ... and the cluster runs on
    with EvalRunner(EnvSpec(cartpole, num_envs=4), cartpole_evaluator(seed=1), num_episodes=8,
                    episodes=EpisodeSettings(max_steps=200, seed=2)) as runner:
        expected = runner.evaluate()
    del expected["eval/fps"], report["metrics"]["eval/fps"]
    assert report["metrics"] == pytest.approx(dict(expected))
