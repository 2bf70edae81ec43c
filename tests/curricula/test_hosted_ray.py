"""A curriculum hosted in a Ray actor (RayCurriculumServer), with real Ray: env-runner actors
play tasks PLR draws and scores, the learner's pushed weights change its values, a killed
curriculum actor fails every env, and close leaves no actor; also on a cluster started with
``ray start --head`` and joined by address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import torch

from syllabus_eval import CurriculumError
from syllabus_eval.curricula import RayCurriculumServer
from tests.curricula.hosting import (
    SCORE,
    SCORE_DOUBLED,
    EnvRunner,
    LinearAgent,
    double_the_critic,
    episode,
    linear_plr,
)
from tests.evaluation.backends.test_ray_cluster import AUTH, cluster, ray_status  # noqa: F401 (fixture)
from tests.readme import readme_snippet

ray = pytest.importorskip("ray")

ROOT = Path(__file__).parents[2]
COIN_TASKS = ("calm", "noisy")


def our_actors() -> list[str]:
    return [name for name in ray.util.list_named_actors()
            if name.startswith("syllabus-eval-curriculum-")]


def runners(server: RayCurriculumServer, count: int = 2) -> list:
    """Env-runner actors (half a CPU each: with the curriculum's, the local Ray's two)."""
    remote = ray.remote(num_cpus=0.5, max_restarts=0)(EnvRunner)
    return [remote.remote(server.client, seed=i) for i in range(count)]


@pytest.fixture
def coin_server(ray_cluster):
    server = RayCurriculumServer(partial(linear_plr, COIN_TASKS), num_cpus=1,
                                 check_interval=0.2)
    yield server
    server.close()


class TestEnvActors:
    def test_two_runners_play_what_plr_draws_and_it_scores_what_they_play(self, coin_server):
        players = runners(coin_server)
        ray.get([player.play.remote(150) for player in players])
        played = sum((Counter(counts) for counts in
                      ray.get([player.close.remote() for player in players])), Counter())
        coin_server.flush(60)
        assert coin_server.scored_steps() == dict(played)  # every transition, once
        scores = coin_server.task_scores()
        # V = 0 everywhere (zero observations): calm episodes (rewards 0) score exactly 0,
        # noisy ones the mean |GAE| of their +-1 rewards.
        assert scores["calm"] == 0.0 and scores["noisy"] > 0.0
        assert coin_server.distribution()[COIN_TASKS.index("noisy")] > 0.5

    def test_a_dead_env_actor_leaves_the_curriculum_running(self, coin_server):
        first, second = runners(coin_server)
        ray.get([first.play.remote(20), second.play.remote(20)])
        ray.kill(first, no_restart=True)
        counts = ray.get(second.play.remote(100))
        assert sum(counts.values()) == 2 * 120
        ray.get(second.close.remote())
        coin_server.flush(60)
        assert sum(coin_server.scored_steps().values()) >= 2 * 120


class TestWeights:
    def test_pushed_weights_change_the_values_after_the_push_and_not_before(self, ray_cluster):
        with RayCurriculumServer(linear_plr, num_cpus=1) as server:
            client = server.client  # the learner's process plays the envs' part here
            for record in episode(0, "a"):
                client.observe(record)
            server.flush(60)
            assert server.task_scores() == pytest.approx({"a": SCORE})  # V(s) = s[0]
            learner = LinearAgent()
            double_the_critic(learner)  # V(s) = 2 s[0], in the learner only so far
            for record in episode(1, "b"):
                client.observe(record)
            server.flush(60)
            assert server.task_scores() == pytest.approx({"a": SCORE, "b": SCORE})
            server.load_weights(learner, version=1)
            for record in episode(2, "b"):
                client.observe(record)
            server.flush(60)
            assert server.task_scores() == pytest.approx({"a": SCORE, "b": SCORE_DOUBLED})
            with pytest.raises(ValueError, match="weights: do not fit the hosted LinearAgent"):
                server.load_weights({"critic.weight": torch.ones(3)})


class TestFailures:
    def test_killing_the_curriculum_actor_fails_every_env(self, ray_cluster):
        server = RayCurriculumServer(partial(linear_plr, COIN_TASKS), num_cpus=1,
                                     check_interval=0.2)
        players = runners(server)
        ray.get([player.play.remote(10) for player in players])
        ray.kill(ray.get_actor(server.name), no_restart=True)
        errors = ray.get([player.play_until_error.remote(10_000) for player in players])
        for kind, message in errors:
            assert kind == "CurriculumError"
            assert f"the curriculum actor {server.name} died" in message
        with pytest.raises(CurriculumError, match=f"the curriculum actor {server.name} died"):
            server.task_scores()
        server.close()  # told already: it closes quietly
        assert not our_actors()
        for player in players:
            ray.kill(player)

    def test_a_curriculum_failure_reaches_every_env_actor_and_the_learner_once(
            self, ray_cluster):
        server = RayCurriculumServer(partial(linear_plr, COIN_TASKS), num_cpus=1,
                                     check_interval=0.2, batch_records=1)
        players = runners(server)
        ray.get([player.play.remote(5) for player in players])
        for record in episode("nan", "calm", [[0.0], [0.0]], [float("nan")]):
            server.client.observe(record)  # PLR's worker fails on it
        errors = ray.get([player.play_until_error.remote(100_000) for player in players])
        for kind, message in errors:
            assert kind == "CurriculumError"
            assert "experience.reward: expected a finite number, got nan" in message
        with pytest.raises(CurriculumError, match="experience.reward"):
            server.close()  # the learner hears it once, here
        server.close()
        for player in players:
            ray.kill(player)

    def test_close_leaves_no_actor(self, ray_cluster):
        server = RayCurriculumServer(linear_plr, num_cpus=1)
        assert our_actors() == [server.name]
        server.client.sample(1)
        server.close()
        server.close()
        assert not our_actors()
        assert server.task_scores() == {}  # the final tables stay
        assert ray.is_initialized()  # the user's Ray, left running

    def test_the_actors_start_up_heap_is_out_of_the_collectors_sight(self, ray_cluster):
        from tests.curricula.hosting import heap_report

        with RayCurriculumServer(heap_report, num_cpus=1) as server:
            assert server.call("frozen_objects") > 10_000

    def test_a_factory_that_builds_no_curriculum(self, ray_cluster):
        from tests.curricula.hosting import not_a_curriculum

        with pytest.raises(ValueError, match="curriculum_fn: expected a factory returning a "
                                             "curriculum"):
            RayCurriculumServer(not_a_curriculum, num_cpus=1)
        assert not our_actors()


DRIVER = """
import json, sys
from collections import Counter
from functools import partial
import ray
from syllabus_eval.curricula import RayCurriculumServer
from tests.curricula.hosting import EnvRunner, LinearAgent, double_the_critic, linear_plr

server = RayCurriculumServer(partial(linear_plr, ("calm", "noisy")), address=sys.argv[1],
                             num_cpus=1, ray_kwargs={"runtime_env": {"py_modules": ["tests"]},
                                                     "log_to_driver": False})
Runner = ray.remote(num_cpus=0.5)(EnvRunner)
players = [Runner.remote(server.client, seed=i) for i in range(2)]
ray.get([player.play.remote(100) for player in players])
learner = LinearAgent()
double_the_critic(learner)
server.load_weights(learner)
ray.get([player.play.remote(50) for player in players])
played = sum((Counter(c) for c in ray.get([p.close.remote() for p in players])), Counter())
server.flush(60)
report = {"played": dict(played), "scored": server.scored_steps(),
          "scores": server.task_scores(), "cluster": ray.get_runtime_context().gcs_address,
          "actors": [a for a in ray.util.list_named_actors()
                     if a.startswith("syllabus-eval-curriculum-")]}
server.close()
report["connected_after"] = ray.is_initialized()
print(json.dumps(report), flush=True)
# One left open: the interpreter's exit kills its actor.
RayCurriculumServer(linear_plr, address=sys.argv[1], num_cpus=0,
                    ray_kwargs={"runtime_env": {"py_modules": ["tests"]}, "log_to_driver": False})
"""


def test_on_a_cluster_joined_by_address(cluster):  # noqa: F811 (the fixture)
    run = subprocess.run([sys.executable, "-c", DRIVER, cluster], cwd=ROOT, text=True,
                         capture_output=True, timeout=300, env={**os.environ, **AUTH})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["cluster"].rsplit(":", 1)[1] == cluster.rsplit(":", 1)[1]
    assert len(report["actors"]) == 1
    assert report["scored"] == report["played"]
    assert report["scores"]["calm"] == 0.0 and report["scores"]["noisy"] > 0.0
    assert report["connected_after"] is False  # the server let go of the Ray it joined
    assert ray_status(cluster).returncode == 0  # ... and the cluster runs on
    check = subprocess.run(
        [sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1], "
         "log_to_driver=False); print(len([a for a in ray.util.list_named_actors(True) if "
         "a['name'].startswith('syllabus-eval-curriculum-')]))", cluster],
        cwd=ROOT, text=True, capture_output=True, timeout=120, env={**os.environ, **AUTH})
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.strip().splitlines()[-1] == "0"  # no actor left, closed or not


def test_the_readme_example_runs():
    run = subprocess.run([sys.executable, "-c",
                          readme_snippet("Env actors on Ray, PLR in a Ray actor")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # the scores, then the distribution (numpy may wrap it over lines)
    assert any(f"'{task}':" in run.stdout for task in ("standard", "long-pole", "short-pole",
                                                         "heavy-pole", "weak-push"))
