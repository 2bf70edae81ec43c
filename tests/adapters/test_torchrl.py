"""TorchRLEvaluator on real TorchRL modules: the seed document's policy through EvalRunner on a
Gymnasium env, probabilistic actors and value modules, an exploration type per query, weights."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchrl", reason="needs the torchrl extra: pip install "
                    "'syllabus-eval[torchrl]' (make test installs it)")

import gymnasium as gym  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential  # noqa: E402
from torchrl.envs.utils import ExplorationType, exploration_type, set_exploration_type  # noqa: E402
from torchrl.modules import ProbabilisticActor, TanhNormal, ValueOperator  # noqa: E402

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner  # noqa: E402
from syllabus_eval.adapters import TorchRLEvaluator  # noqa: E402
from tests.fake_envs import CheetahSpacesEnv, seed_by_hand  # noqa: E402
from tests.query.test_evaluator import assert_same, in_thread, snapshot  # noqa: E402
from tests.readme import readme_snippet  # noqa: E402

B = 5
OBS = np.random.default_rng(0).normal(size=(B, 17)).astype(np.float32)


def seed_policy() -> TensorDictModule:
    """The policy of TorchRL's Evaluator documentation (shared/seeds/000), exactly."""
    torch.manual_seed(0)
    return TensorDictModule(nn.Linear(17, 6), in_keys=["observation"], out_keys=["action"])


def actor(*head: nn.Module) -> ProbabilisticActor:
    """A TanhNormal actor on 17-dim observations, 6-dim actions (``head`` runs first)."""
    torch.manual_seed(0)
    net = TensorDictModule(nn.Sequential(*head, nn.Linear(17, 12), NormalParamExtractor()),
                           in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(net, in_keys=["loc", "scale"], distribution_class=TanhNormal,
                              return_log_prob=True)


def critic() -> ValueOperator:
    torch.manual_seed(1)
    return ValueOperator(nn.Sequential(nn.Linear(17, 8), nn.Tanh(), nn.Linear(8, 1)),
                         in_keys=["observation"])


class Concat(nn.Module):
    """A linear layer on its inputs side by side: a module reading several TensorDict keys."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, out_features)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.cat(inputs, dim=-1))


def run(module: nn.Module, obs: Any, mode: ExplorationType | None = None) -> TensorDict:
    """The module's own answer on ``obs`` (float32), under ``no_grad`` (and ``mode``)."""
    data = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)},
                      batch_size=[len(obs)])
    with torch.no_grad(), set_exploration_type(mode):
        return module(data)


def returns_by_hand(policy: nn.Module, num_envs: int, num_episodes: int, seed: int = 0
                    ) -> list[float]:
    """Each env slot alone, as EvalRunner plays it: env i runs its quota
    (num_episodes + i) // num_envs, each episode reset with its documented seed, the policy
    acting on one observation."""
    returns = []
    for i in range(num_envs):
        env = CheetahSpacesEnv()
        for episode in range((num_episodes + i) // num_envs):
            obs, _ = env.reset(seed=seed_by_hand(seed, i, episode))
            total, done = 0.0, False
            while not done:
                action = run(policy, obs[None])["action"][0].numpy()
                obs, reward, terminated, truncated, _ = env.step(action)
                total, done = total + reward, terminated or truncated
            returns.append(total)
    return returns


def train_step(module: nn.Module) -> None:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    optimizer.zero_grad()
    run_grad = module(TensorDict({"observation": torch.randn(8, 17)}, batch_size=[8]))
    run_grad["action"].pow(2).mean().backward()
    optimizer.step()


class TestTheSeedPolicy:
    def test_actions_are_the_modules_own(self) -> None:
        policy = seed_policy()
        action, extras = TorchRLEvaluator(policy).get_action(OBS)
        assert torch.equal(action, run(policy, OBS)["action"]) and action.shape == (B, 6)
        assert set(extras) == {"lstm_state", "weights_version"}

    def test_float64_observations_meet_the_linear_as_float32(self) -> None:
        policy = seed_policy()
        action, _ = TorchRLEvaluator(policy).get_action(OBS.astype(np.float64))
        assert torch.equal(action, run(policy, OBS)["action"])

    def test_eval_runner_blocking_and_in_the_background(self) -> None:
        policy = seed_policy()
        with EvalRunner(EnvSpec(CheetahSpacesEnv, num_envs=2), TorchRLEvaluator(policy),
                        num_episodes=5, episodes=EpisodeSettings(max_steps=1000)) as runner:
            metrics = runner.evaluate(weights=policy, step=0)
            expected = returns_by_hand(policy, 2, 5)
            assert [e.reward for e in metrics.episodes] == pytest.approx(expected, rel=1e-6)
            assert metrics["eval/reward"] == pytest.approx(np.mean(expected), rel=1e-6)

            train_step(policy)  # new weights: the trigger snapshots them
            runner.trigger_eval(weights=policy, step=1)
            result = runner.wait(timeout=60)
        expected_after = returns_by_hand(policy, 2, 5)
        assert expected_after != pytest.approx(expected, rel=1e-3)  # the weights mattered
        assert [e.reward for e in result.episodes] == pytest.approx(expected_after, rel=1e-6)
        assert result.step == 1 and result["eval/step"] == 1

    def test_state_dict_weights_and_the_live_policy(self) -> None:
        policy = seed_policy()
        evaluator = TorchRLEvaluator(policy)
        with EvalRunner(EnvSpec(CheetahSpacesEnv, num_envs=2), evaluator,
                        num_episodes=2) as runner:
            from_state = runner.evaluate(weights=policy.state_dict())
            live = runner.evaluate()  # weights=None: the training agent, the policy itself
        assert from_state["eval/reward"] == live["eval/reward"]


class TestProbabilisticActor:
    def test_greedy_actions_are_the_deterministic_ones(self) -> None:
        module = actor()
        action, extras = TorchRLEvaluator(module).get_action(OBS, deterministic=True)
        expected = run(module, OBS, ExplorationType.DETERMINISTIC)
        assert torch.equal(action, expected["action"])
        assert torch.equal(extras["log_prob"], expected["action_log_prob"])
        assert {"loc", "scale"} <= extras.keys()

    def test_sampled_actions_are_the_actors_own_draws(self) -> None:
        module = actor()
        evaluator = TorchRLEvaluator(module)
        torch.manual_seed(3)
        action, extras = evaluator.get_action(OBS, deterministic=False)
        torch.manual_seed(3)
        expected = run(module, OBS, ExplorationType.RANDOM)
        assert torch.equal(action, expected["action"])
        assert torch.equal(extras["log_prob"], expected["action_log_prob"])
        assert not torch.equal(action, run(module, OBS, ExplorationType.DETERMINISTIC)["action"])

    def test_values_are_the_value_modules_own(self) -> None:
        module, value_module = actor(), critic()
        evaluator = TorchRLEvaluator(module, value=value_module)
        value, _ = evaluator.get_value(OBS)
        assert value.shape == (B, 1)
        assert torch.equal(value, run(value_module, OBS)["state_value"])
        action, one_pass, _ = evaluator.get_action_and_value(OBS, deterministic=True)
        assert torch.equal(one_pass, value)
        assert torch.equal(action, evaluator.get_action(OBS, deterministic=True)[0])

    def test_a_critic_reading_the_action_values_the_greedy_one(self) -> None:
        module = actor()
        q_value = ValueOperator(Concat(17 + 6, 1), in_keys=["observation", "action"],
                                out_keys=["state_action_value"])
        evaluator = TorchRLEvaluator(module, value=q_value, value_key="state_action_value")
        value, _ = evaluator.get_value(OBS)
        expected = q_value(run(module, OBS, ExplorationType.DETERMINISTIC))
        assert torch.equal(value, expected["state_action_value"].detach())

    def test_get_value_needs_a_value_module(self) -> None:
        evaluator = TorchRLEvaluator(seed_policy())
        for query in (evaluator.get_value, evaluator.get_action_and_value):
            with pytest.raises(ValueError, match="get_value: this TorchRLEvaluator has no "
                                                 "value module"):
                query(OBS)


class TestExplorationTypePerQuery:
    def test_queries_and_other_threads_keep_their_own_setting(self) -> None:
        entered, release = threading.Event(), threading.Event()

        class Pause(nn.Module):  # holds the query inside the actor's forward
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                entered.set()
                release.wait(10)
                return x

        module = actor(Pause())
        greedy = run(actor(), OBS, ExplorationType.DETERMINISTIC)["action"]
        evaluator = TorchRLEvaluator(module, copy_agent=False)  # Pause holds no weights
        answer: dict = {}
        query = threading.Thread(target=lambda: answer.update(
            action=evaluator.get_action(OBS, deterministic=False)[0]))
        with set_exploration_type(ExplorationType.DETERMINISTIC):  # as a collector would
            query.start()
            assert entered.wait(10)
            # The query samples meanwhile; this thread still sees its own setting.
            assert exploration_type() == ExplorationType.DETERMINISTIC
            release.set()
            query.join(10)
            assert exploration_type() == ExplorationType.DETERMINISTIC
        assert exploration_type() is None
        assert not torch.equal(answer["action"], greedy)  # it sampled, not what we set

    def test_greedy_queries_while_a_collector_samples(self) -> None:
        module = actor()
        evaluator = TorchRLEvaluator(module)
        expected = run(module, OBS, ExplorationType.DETERMINISTIC)["action"]
        with set_exploration_type(ExplorationType.RANDOM):
            action = in_thread(lambda: evaluator.get_action(OBS, deterministic=True)[0])
            assert exploration_type() == ExplorationType.RANDOM
        assert torch.equal(action, expected)


class TestWeights:
    def test_answers_follow_optimizer_steps(self) -> None:
        policy = seed_policy()
        evaluator = TorchRLEvaluator(policy)
        before, extras = evaluator.get_action(OBS)
        train_step(policy)
        after, later = evaluator.get_action(OBS)
        assert later["weights_version"] == extras["weights_version"] + 1
        assert not torch.equal(before, after)
        assert torch.equal(after, run(policy, OBS)["action"])

    def test_compiled_modules_are_the_modules_they_wrap(self, dynamo: None) -> None:
        module, value_module = actor(), critic()
        # Wrapped only (nothing runs compiled): the evaluator queries copies of the originals.
        evaluator = TorchRLEvaluator(torch.compile(module), value=torch.compile(value_module))
        assert evaluator.training_agent["policy"] is module
        assert evaluator.training_agent["value"] is value_module
        policy = seed_policy()
        alone = TorchRLEvaluator(torch.compile(policy))
        train_step(policy)
        action, extras = alone.get_action(OBS)
        assert extras["weights_version"] == 1
        assert torch.equal(action, run(policy, OBS)["action"])
        value, _ = evaluator.get_value(OBS)
        assert torch.equal(value, run(value_module, OBS)["state_value"])

    def test_policy_and_value_are_one_synced_agent(self) -> None:
        module, value_module = actor(), critic()
        evaluator = TorchRLEvaluator(module, value=value_module)
        assert isinstance(evaluator.training_agent, nn.ModuleDict)
        optimizer = torch.optim.SGD([*module.parameters(), *value_module.parameters()], lr=1.0)
        optimizer.zero_grad()
        out = value_module(module(TensorDict({"observation": torch.randn(8, 17)}, [8])))
        (out["state_value"].sum() + out["loc"].sum()).backward()
        optimizer.step()
        value, extras = evaluator.get_value(OBS)
        assert extras["weights_version"] == 1
        assert torch.equal(value, run(value_module, OBS)["state_value"])

    def test_eval_runner_weights_with_a_value_module(self) -> None:
        module, value_module = actor(), critic()
        evaluator = TorchRLEvaluator(module, value=value_module)
        with EvalRunner(EnvSpec(CheetahSpacesEnv, num_envs=2), evaluator,
                        num_episodes=2) as runner:
            live = runner.evaluate()  # weights=None: the live policy and value
            given = runner.evaluate(weights=evaluator.training_agent)
            assert live["eval/reward"] == given["eval/reward"]
            with pytest.raises(ValueError, match=r"weights: expected the keys .* missing "
                                                 r"\['policy\."):
                runner.evaluate(weights=module)  # the policy alone: document, not guess

    def test_the_training_modules_are_untouched(self) -> None:
        module, value_module = actor(), critic()
        train_step(module)  # grads present, as in training
        before = snapshot(module), snapshot(value_module)
        evaluator = TorchRLEvaluator(module, value=value_module)
        for deterministic in (True, False):
            in_thread(lambda d=deterministic: evaluator.get_action_and_value(
                OBS, deterministic=d))
        evaluator.get_value(OBS)
        assert_same(before[0], snapshot(module))
        assert_same(before[1], snapshot(value_module))


class TestInputs:
    def test_dict_observations_map_to_their_keys(self) -> None:
        policy = TensorDictSequential(TensorDictModule(
            Concat(3 + 2, 2), in_keys=["position", "velocity"], out_keys=["action"]))
        obs = {"position": np.ones((B, 3), np.float32), "velocity": np.zeros((B, 2))}
        action, _ = TorchRLEvaluator(policy).get_action(obs)
        data = TensorDict({"position": torch.ones(B, 3), "velocity": torch.zeros(B, 2)}, [B])
        with torch.no_grad():
            assert torch.equal(action, policy(data)["action"])

    def test_missing_observation_keys_are_named(self) -> None:
        evaluator = TorchRLEvaluator(seed_policy())
        with pytest.raises(ValueError, match=r"state: the policy read \['observation'\], "
                                             r"missing \['observation'\] in observations dict "
                                             r"with keys \['pixels'\]"):
            evaluator.get_action({"pixels": OBS})
        renamed = TorchRLEvaluator(seed_policy(), observation_key="pixels")
        with pytest.raises(ValueError, match="observation_key='pixels'"):
            renamed.get_action(OBS)

    @pytest.mark.parametrize("policy, error, message", [
        (nn.Linear(17, 6), TypeError, "policy: expected a tensordict TensorDictModuleBase"),
        (TensorDictModule(nn.Linear(17, 6), in_keys=["observation"], out_keys=["act"]),
         ValueError, r"policy: expected a module that writes 'action' \(action_key\), got "
                     r"TensorDictModule with out_keys \['act'\]"),
    ])
    def test_bad_modules_are_named(self, policy: Any, error: type, message: str) -> None:
        with pytest.raises(error, match=message):
            TorchRLEvaluator(policy)

    def test_a_value_module_without_its_key(self) -> None:
        with pytest.raises(ValueError, match=r"value: expected a module that writes "
                                             r"'state_value' \(value_key\)"):
            TorchRLEvaluator(seed_policy(), value=seed_policy())


def test_the_readme_example_runs(monkeypatch) -> None:
    # HalfCheetah needs MuJoCo, which the extras do not install: its spaces stand in for it.
    make = gym.make
    monkeypatch.setattr(gym, "make", lambda env_id, **kwargs: CheetahSpacesEnv()
                        if env_id == "HalfCheetah-v5" else make(env_id, **kwargs))
    namespace: dict = {}
    exec(readme_snippet("TorchRL policies"), namespace)  # verbatim
    assert namespace["metrics"]["eval/num_episodes"] == 8
    assert namespace["result"].step == 1_000
