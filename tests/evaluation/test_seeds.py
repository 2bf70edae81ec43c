"""What the documents the product is modelled on show a user doing works here, in our names:
TorchRL's Evaluator (an env instance, a policy factory in the workers, on_result with .item())
and what its policies need."""

from __future__ import annotations

import pytest

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner, EvaluationError, ProcessBackend
from syllabus_eval.adapters import CleanRLEvaluator
from syllabus_eval.evaluation.backends import as_backend
from tests.fake_envs import CheetahSpacesEnv, LengthEnv
from tests.workers import (
    cartpole,
    cartpole_agent,
    cartpole_evaluator,
    cartpole_vector_env,
    length_evaluator,
)

KWARGS = {"num_episodes": 8, "episodes": EpisodeSettings(max_steps=200, seed=5)}


def numbers(result) -> dict:
    return {k: v for k, v in result.items() if k != "eval/fps"}


class TestEnvInstances:
    """TorchRL's ``Evaluator(eval_env, eval_policy)``: an env, not a factory."""

    def test_a_vector_env_instance(self):
        envs = cartpole_vector_env()
        evaluator = cartpole_evaluator(seed=1)
        with EvalRunner(envs, evaluator, **KWARGS) as runner:
            assert runner.evaluate()["eval/num_episodes"] == 8
            again = runner.evaluate()
        with EvalRunner(EnvSpec(cartpole_vector_env, num_envs=4), evaluator, **KWARGS) as runner:
            assert numbers(runner.evaluate()) == numbers(again)  # as its factory would
        assert envs.reset(seed=0)[0].shape == (4, 4)  # still open: the runner leaves it

    def test_one_env_instance_is_one_slot(self):
        env = cartpole()
        with EvalRunner(env, cartpole_evaluator(seed=1), **KWARGS) as runner:
            result = runner.evaluate()
        assert {r.env_index for r in result.episodes} == {0}
        env.reset()  # not closed

    def test_a_failed_evaluation_keeps_the_instance(self, gate, agent):
        env = gate.make_env()
        with EvalRunner(env, CleanRLEvaluator(agent), num_episodes=2) as runner:
            gate.crash.set()
            gate.open.set()
            with pytest.raises(EvaluationError):
                runner.evaluate()
            gate.crash.clear()
            assert runner.evaluate()["eval/num_episodes"] == 2  # the same env, reset again

    @pytest.mark.parametrize("backend", ["process", "ray"])
    def test_workers_need_a_factory(self, backend):
        with pytest.raises(ValueError, match=f"envs: expected an env factory for "
                                             f"backend='{backend}'.*lambda: gym.make"):
            EvalRunner(cartpole(), cartpole_evaluator(),
                       backend=as_backend(backend, evaluator_fn=cartpole_evaluator))

    def test_num_envs_must_fit_the_instance(self):
        with pytest.raises(ValueError, match="num_envs: expected 4, the size of the env "
                                             "instance"):
            EvalRunner(EnvSpec(cartpole_vector_env(), num_envs=8), cartpole_evaluator())


class TestPolicyFactoryOnly:
    """TorchRL's ``Evaluator(make_env, policy_factory=..., backend="ray")``: the policy is
    built in the workers only."""

    @pytest.mark.parametrize("backend", ["process", "ray"])
    def test_no_local_evaluator(self, backend, request):
        if backend == "ray":
            request.getfixturevalue("ray_cluster")
        trained = cartpole_agent(seed=1)
        with EvalRunner(EnvSpec(cartpole, num_envs=4), cartpole_evaluator(seed=1),
                        **KWARGS) as runner:
            expected, own = runner.evaluate(trained), runner.evaluate(
                cartpole_evaluator().agent)
        with EvalRunner(EnvSpec(cartpole, num_envs=4),
                        backend=as_backend(backend, evaluator_fn=cartpole_evaluator),
                        **KWARGS) as runner:
            sent = runner.evaluate(weights=trained, step=1)  # weights from the trigger
            assert runner.trigger_eval(weights=trained.state_dict(), step=2)
            background = runner.wait(60)
            factorys = runner.evaluate(step=3)  # none given: the factory's own weights
        assert numbers(sent) == {**numbers(expected), "eval/step": 1}
        assert numbers(background) == {**numbers(expected), "eval/step": 2}
        assert numbers(factorys) == {**numbers(own), "eval/step": 3}

    def test_weights_that_do_not_fit_fail_in_the_worker(self):
        with EvalRunner(EnvSpec(LengthEnv, num_envs=2), num_episodes=2,
                        backend=ProcessBackend(evaluator_fn=length_evaluator)) as runner, \
                pytest.raises(EvaluationError) as caught:
            runner.evaluate(weights=cartpole_agent(seed=0))
        assert "weights: do not fit" in str(caught.value.__cause__)

    def test_the_thread_backend_needs_an_evaluator(self):
        with pytest.raises(ValueError, match="evaluator: expected an Evaluator; only a worker "
                                             "backend goes without one"):
            EvalRunner(cartpole, backend="thread")


def test_the_torchrl_quick_example(tmp_path):
    """TorchRL's Evaluator quick example, in our names: its policy, an on_result that calls
    .item() on every value, trigger_eval in the loop, poll, shutdown."""
    pytest.importorskip("tensordict", reason="needs the torchrl extra (make test installs it)")
    from tensordict.nn import TensorDictModule
    from torch import nn

    from syllabus_eval.adapters import TorchRLEvaluator

    logged = []
    eval_policy = TensorDictModule(nn.Linear(17, 6), in_keys=["observation"],
                                   out_keys=["action"])
    evaluator = EvalRunner(EnvSpec(CheetahSpacesEnv, num_envs=4), TorchRLEvaluator(eval_policy),
                           num_episodes=4, episodes=EpisodeSettings(max_steps=1000),
                           callbacks=lambda result: logged.append((
            {k: v.item() for k, v in result.items() if k != "eval/step"},
            result["eval/step"].item())))
    train_policy = eval_policy  # trained in place in a real loop
    for collected_frames in (1000, 2000):
        evaluator.trigger_eval(weights=train_policy, step=collected_frames)
        result = evaluator.wait(60)  # or poll() now and then
        assert result is not None and "eval/reward" in result
    metrics = evaluator.evaluate(weights=train_policy, step=3000)
    evaluator.shutdown()
    assert [step for _, step in logged] == [1000, 2000, 3000]
    assert logged[-1][0]["eval/episode_length"] == metrics["eval/episode_length"]

