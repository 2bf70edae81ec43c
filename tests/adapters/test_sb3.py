"""SB3Evaluator on real Stable-Baselines3 models: predict's actions, the policy's own values
bit for bit, the training policy left alone, answers that follow learning, and EvalRunner
against SB3's own evaluate_policy."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("stable_baselines3", reason="needs the sb3 extra: pip install "
                    "'syllabus-eval[sb3]' (make test installs it)")

import gymnasium as gym  # noqa: E402
from gymnasium.vector.utils import batch_space  # noqa: E402
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from syllabus_eval import EnvSpec, EpisodeSettings, EvalRunner  # noqa: E402
from syllabus_eval.adapters import SB3Evaluator  # noqa: E402
from tests.fake_envs import DictEnv, FramesEnv, seed_by_hand  # noqa: E402
from tests.query.test_evaluator import assert_same, in_thread, snapshot  # noqa: E402
from tests.readme import readme_snippet  # noqa: E402

B = 5
# Pass copies: SB3's off-policy models write into the policy_kwargs dict they are given.
SMALL = {"net_arch": [16]}
CNN = {"net_arch": [16], "features_extractor_kwargs": {"features_dim": 16}}
MULTI = {"net_arch": [16], "features_extractor_kwargs": {"cnn_output_dim": 16}}
ON_POLICY = {"seed": 0, "device": "cpu"}
OFF_POLICY = {"seed": 0, "device": "cpu", "buffer_size": 1_000, "batch_size": 8,
              "learning_starts": 8}


@dataclass
class Model:
    """An SB3 model on its env, and how many steps of ``learn`` make it take optimizer steps."""

    name: str
    build: Callable[[], Any]
    make_env: Callable[[], gym.Env]
    learn_steps: int

    def obs(self, batch: int = B, seed: int = 0) -> Any:
        """A batch of observations as the raw env gives them (channels-last frames)."""
        space = batch_space(self.make_env().observation_space, batch)
        space.seed(seed)
        return space.sample()

    def __repr__(self) -> str:
        return self.name


def _cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def _pendulum() -> gym.Env:
    return gym.make("Pendulum-v1")


def ppo(policy: str, make_env: Callable[[], gym.Env], policy_kwargs: dict = SMALL,
        **kwargs: Any) -> Callable[[], PPO]:
    return lambda: PPO(policy, make_env(), n_steps=16, batch_size=16, n_epochs=1,
                       policy_kwargs=dict(policy_kwargs), **ON_POLICY, **kwargs)


def a2c(make_env: Callable[[], gym.Env]) -> Callable[[], A2C]:
    return lambda: A2C("MlpPolicy", make_env(), n_steps=4, policy_kwargs=dict(SMALL),
                       **ON_POLICY)


def off_policy(algorithm: type, policy: str, make_env: Callable[[], gym.Env],
               policy_kwargs: dict = SMALL, **kwargs: Any) -> Callable[[], Any]:
    return lambda: algorithm(policy, make_env(), policy_kwargs=dict(policy_kwargs),
                             **OFF_POLICY, **kwargs)


MODELS = [
    Model("ppo-cartpole", ppo("MlpPolicy", _cartpole), _cartpole, 16),
    Model("ppo-pendulum", ppo("MlpPolicy", _pendulum), _pendulum, 16),
    Model("a2c-cartpole", a2c(_cartpole), _cartpole, 8),
    Model("a2c-pendulum", a2c(_pendulum), _pendulum, 8),
    Model("dqn-cartpole", off_policy(DQN, "MlpPolicy", _cartpole), _cartpole, 12),
    Model("sac-pendulum", off_policy(SAC, "MlpPolicy", _pendulum), _pendulum, 12),
    Model("td3-pendulum", off_policy(TD3, "MlpPolicy", _pendulum, policy_delay=1), _pendulum,
          12),
    # Channels-last frames: the model wraps its env in VecTransposeImage, the policy sees CHW.
    Model("ppo-frames", ppo("CnnPolicy", FramesEnv, CNN), FramesEnv, 16),
    Model("ppo-dict", ppo("MultiInputPolicy", DictEnv, MULTI), DictEnv, 16),
    Model("sac-dict", off_policy(SAC, "MultiInputPolicy", DictEnv, MULTI), DictEnv, 12),
]
BY_NAME = {model.name: model for model in MODELS}
SAMPLING = [m for m in MODELS if m.name.split("-")[0] in ("ppo", "a2c", "sac")]


def own_value(policy: nn.Module, obs: Any) -> torch.Tensor:
    """The policy's own value of ``obs``, computed by hand the way each algorithm does."""
    with torch.no_grad():
        tensor, _ = policy.obs_to_tensor(obs)
        if hasattr(policy, "value_net"):  # PPO, A2C: the value head
            return policy.predict_values(tensor)
        if hasattr(policy, "q_net"):  # DQN: the greedy Q value
            return policy.q_net(tensor).max(dim=1, keepdim=True).values
        # SAC, TD3: the min over the critic's Q networks of the greedy action's value
        q_values = torch.cat(policy.critic(tensor, policy(tensor, deterministic=True)), dim=1)
        return q_values.min(dim=1, keepdim=True).values


def predicted(model: Any, obs: Any, deterministic: bool = True) -> np.ndarray:
    return model.predict(obs, deterministic=deterministic)[0]


@pytest.mark.parametrize("case", MODELS, ids=repr)
class TestAnswers:
    def test_greedy_actions_are_predicts(self, case: Model) -> None:
        model = case.build()
        obs = case.obs()
        action, _ = SB3Evaluator(model).get_action(obs, deterministic=True)
        expected = predicted(model, obs)
        assert action.numpy().dtype == expected.dtype and action.shape == expected.shape
        assert np.array_equal(action.numpy(), expected)

    def test_values_are_the_policys_own(self, case: Model) -> None:
        model = case.build()
        obs = case.obs()
        value, _ = SB3Evaluator(model).get_value(obs)
        assert value.shape == (B, 1) and value.dtype == torch.float32
        assert torch.equal(value, own_value(model.policy, obs))  # bit for bit

    @pytest.mark.parametrize("deterministic", [True, False])
    def test_one_pass_answers_as_the_two_queries(self, case: Model, deterministic: bool
                                                 ) -> None:
        model = case.build()
        obs, evaluator = case.obs(), SB3Evaluator(model)
        action, value, extras = evaluator.get_action_and_value(obs, deterministic=deterministic)
        assert torch.equal(value, evaluator.get_value(obs)[0])
        assert action.shape == (B, *model.action_space.shape)
        if deterministic:
            assert torch.equal(action, evaluator.get_action(obs, deterministic=True)[0])

    def test_sampled_actions_are_valid(self, case: Model) -> None:
        model = case.build()
        action, _ = SB3Evaluator(model).get_action(case.obs(), deterministic=False)
        space = model.action_space
        assert all(space.contains(row.astype(space.dtype)) for row in action.numpy())


@pytest.mark.parametrize("case", SAMPLING, ids=repr)
class TestSampledActions:
    def test_same_draws_as_predict(self, case: Model) -> None:
        # Both draw from PyTorch's global generator, in the same order.
        model, obs = case.build(), case.obs()
        evaluator = SB3Evaluator(model)
        torch.manual_seed(7)
        action, extras = evaluator.get_action(obs, deterministic=False)
        torch.manual_seed(7)
        assert np.array_equal(action.numpy(), predicted(model, obs, deterministic=False))
        assert extras["log_prob"].shape == (B,)

    def test_log_prob_is_the_policys_own_of_the_same_draw(self, case: Model) -> None:
        model, obs = case.build(), case.obs()
        torch.manual_seed(7)
        action, extras = SB3Evaluator(model).get_action(obs, deterministic=False)
        policy = model.policy
        torch.manual_seed(7)
        with torch.no_grad():
            tensor, _ = policy.obs_to_tensor(obs)
            if hasattr(policy, "value_net"):  # PPO, A2C: forward draws and scores the action
                raw, _, log_prob = policy(tensor)
            else:  # SAC: the actor's own draw with its log-probability
                raw, log_prob = policy.actor.action_log_prob(tensor)
        assert torch.equal(extras.get("policy_action", action), raw.reshape(action.shape))
        assert torch.equal(extras["log_prob"], log_prob)


class TestExtras:
    def test_discrete_actor_critic_gives_logits_and_entropy(self) -> None:
        model = BY_NAME["ppo-cartpole"].build()
        _, extras = SB3Evaluator(model).get_action(BY_NAME["ppo-cartpole"].obs())
        assert extras["policy_logits"].shape == (B, 2) and extras["entropy"].shape == (B,)

    def test_squashed_actions_are_unscaled_to_the_bounds(self) -> None:
        case = BY_NAME["sac-dict"]  # actions in [-2, 3]
        action, extras = SB3Evaluator(case.build()).get_action(case.obs(), deterministic=True)
        raw = extras["policy_action"]  # tanh-squashed, in [-1, 1]
        assert raw.abs().max() <= 1 and torch.allclose(action, -2 + 0.5 * (raw + 1) * 5)

    def test_dqn_explores_at_the_models_rate(self) -> None:
        case = BY_NAME["dqn-cartpole"]
        model, obs = case.build(), case.obs(batch=200)
        evaluator = SB3Evaluator(model)
        greedy, extras = evaluator.get_action(obs, deterministic=True)
        assert extras["q_values"].shape == (200, 2)
        model.exploration_rate = 0.0
        assert torch.equal(evaluator.get_action(obs, deterministic=False)[0], greedy)
        model.exploration_rate = 1.0  # every action drawn uniformly
        sampled, _ = evaluator.get_action(obs, deterministic=False)
        assert 60 < int((sampled != greedy).sum()) < 140

    def test_sac_and_td3_values_take_the_min_of_their_critics(self) -> None:
        for name in ("sac-pendulum", "td3-pendulum"):
            case = BY_NAME[name]
            value, extras = SB3Evaluator(case.build()).get_value(case.obs())
            assert extras["q_values"].shape == (B, 2)
            assert torch.equal(value, extras["q_values"].min(dim=1, keepdim=True).values)


class TestObservations:
    def test_channels_last_and_first_frames_give_the_same_answers(self) -> None:
        case = BY_NAME["ppo-frames"]
        evaluator = SB3Evaluator(case.build())
        hwc = case.obs()  # [B, 36, 36, 1]
        chw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))  # as VecTransposeImage gives
        assert torch.equal(evaluator.get_value(hwc)[0], evaluator.get_value(chw)[0])

    def test_frames_stay_uint8_until_the_policy_scales_them(self) -> None:
        case = BY_NAME["ppo-frames"]
        evaluator = SB3Evaluator(case.build())
        prepared = evaluator._prepare_state(case.obs())
        assert prepared.dtype == torch.uint8 and prepared.shape == (B, 1, 36, 36)

    def test_float64_observations_are_not_cast_before_the_policy(self) -> None:
        case = BY_NAME["ppo-cartpole"]
        evaluator = SB3Evaluator(case.build())
        obs = case.obs().astype(np.float64)
        assert evaluator._prepare_state(obs).dtype == torch.float64  # as obs_to_tensor
        assert torch.equal(evaluator.get_value(obs)[0],
                           own_value(evaluator.training_agent, obs))

    def test_lists_of_per_env_observations_and_dicts(self) -> None:
        case = BY_NAME["ppo-dict"]
        evaluator = SB3Evaluator(case.build())
        obs = case.obs()
        rows = [{key: value[i] for key, value in obs.items()} for i in range(B)]
        assert torch.equal(evaluator.get_value(rows)[0], evaluator.get_value(obs)[0])

    @pytest.mark.parametrize("name, obs, message", [
        ("ppo-cartpole", np.zeros(4, np.float32), r"state: expected a batch \[B, \.\.\.\]"),
        ("ppo-cartpole", np.zeros((3, 5), np.float32), r"state: does not fit .*\(4,\)"),
        ("ppo-cartpole", {"vector": np.zeros((3, 4))}, r"state: expected a batch of Box"),
        ("ppo-dict", np.zeros((3, 4)), r"state: expected a dict with keys \['frame', 'vector'\]"),
        ("ppo-dict", {"frame": np.zeros((3, 36, 36, 1), np.uint8)},
         r"state: expected a dict with keys \['frame', 'vector'\], got dict with keys"),
    ])
    def test_bad_observations_are_named(self, name: str, obs: Any, message: str) -> None:
        evaluator = SB3Evaluator(BY_NAME[name].build())
        with pytest.raises(ValueError, match=message):
            evaluator.get_value(obs)


class TestModels:
    def test_a_policy_works_as_its_model(self) -> None:
        case = BY_NAME["sac-pendulum"]
        model, obs = case.build(), case.obs()
        from_policy = SB3Evaluator(model.policy).get_action_and_value(obs, deterministic=True)
        from_model = SB3Evaluator(model).get_action_and_value(obs, deterministic=True)
        assert all(torch.equal(a, b) for a, b in zip(from_policy[:2], from_model[:2]))

    @pytest.mark.parametrize("model", [nn.Linear(2, 2), "PPO", None])
    def test_other_objects_are_refused_naming_what_works(self, model: Any) -> None:
        with pytest.raises(TypeError, match=r"model: SB3Evaluator supports PPO and A2C"):
            SB3Evaluator(model)

    def test_recurrent_ppo_is_refused(self) -> None:
        contrib = pytest.importorskip("sb3_contrib", reason="sb3-contrib is not an extra of "
                                      "syllabus-eval; install it to run this check")
        model = contrib.RecurrentPPO("MlpLstmPolicy", _cartpole(), n_steps=8, batch_size=8,
                                     policy_kwargs=dict(SMALL), **ON_POLICY)
        with pytest.raises(TypeError, match="recurrent policies are not supported"):
            SB3Evaluator(model)

    def test_is_lstm_is_refused(self) -> None:
        with pytest.raises(TypeError, match="is_lstm: SB3Evaluator queries feedforward"):
            SB3Evaluator(BY_NAME["ppo-cartpole"].build(), is_lstm=True)

    @pytest.mark.parametrize("name", ["ppo-cartpole", "dqn-cartpole"])
    def test_a_compiled_policy_is_the_policy_it_wraps(self, name: str, dynamo: None) -> None:
        case = BY_NAME[name]
        model, obs = case.build(), case.obs()
        evaluator = SB3Evaluator(torch.compile(model.policy))  # wrapped only: nothing compiles
        assert evaluator.training_agent is model.policy
        model.learn(case.learn_steps)
        value, extras = evaluator.get_value(obs)
        assert extras["weights_version"] >= 1  # synced with the policy that trains
        assert torch.equal(value, own_value(model.policy, obs))
        action, _ = evaluator.get_action(obs, deterministic=True)
        assert np.array_equal(action.numpy(), model.policy.predict(obs, deterministic=True)[0])

    def test_a_compiled_module_of_another_kind_is_refused_naming_it(self, dynamo: None
                                                                     ) -> None:
        with pytest.raises(TypeError, match="got OptimizedModule wrapping Linear"):
            SB3Evaluator(torch.compile(nn.Linear(2, 2)))


class TestTrainingPolicyUntouched:
    @pytest.mark.parametrize("name", ["ppo-pendulum", "dqn-cartpole", "sac-pendulum"])
    def test_queries_leave_mode_weights_buffers_and_grads(self, name: str) -> None:
        case = BY_NAME[name]
        model = case.build()
        model.learn(case.learn_steps)  # grads, train mode and graph-attached state, as in use
        before = snapshot(model.policy)
        evaluator = SB3Evaluator(model)
        obs = case.obs()
        for deterministic in (True, False):
            evaluator.get_action(obs, deterministic=deterministic)
            in_thread(lambda d=deterministic: evaluator.get_action_and_value(
                obs, deterministic=d))
        evaluator.get_value(obs)
        assert_same(before, snapshot(model.policy))

    def test_gsde_policies_copy_and_sample(self) -> None:
        model = ppo("MlpPolicy", _pendulum, use_sde=True)()
        model.learn(16)
        evaluator = SB3Evaluator(model)  # its noise matrices are graph-attached tensors
        obs = BY_NAME["ppo-pendulum"].obs()
        action, extras = evaluator.get_action(obs, deterministic=False)
        assert action.shape == (B, 1) and torch.isfinite(extras["log_prob"]).all()
        assert np.array_equal(evaluator.get_action(obs, deterministic=True)[0].numpy(),
                              predicted(model, obs))


@pytest.mark.parametrize("name", ["ppo-cartpole", "a2c-pendulum", "dqn-cartpole",
                                  "sac-pendulum", "td3-pendulum", "ppo-frames"])
def test_answers_follow_learning(name: str) -> None:
    case = BY_NAME[name]
    model, obs = case.build(), case.obs()
    evaluator = SB3Evaluator(model)
    before, extras = evaluator.get_value(obs)
    model.learn(case.learn_steps)  # SB3 steps torch.optim optimizers: the copy follows
    after, later = evaluator.get_value(obs)
    assert later["weights_version"] > extras["weights_version"]
    assert not torch.equal(before, after)
    assert torch.equal(after, own_value(model.policy, obs))
    action, _ = evaluator.get_action(obs, deterministic=True)
    assert np.array_equal(action.numpy(), predicted(model, obs))


def test_queries_from_a_thread_while_the_model_learns() -> None:
    case = BY_NAME["ppo-cartpole"]
    model, obs = case.build(), case.obs()
    evaluator = SB3Evaluator(model)
    stop, answers, errors = threading.Event(), [], []

    def query() -> None:
        while not stop.is_set():
            try:
                answers.append(evaluator.get_action_and_value(obs)[2]["weights_version"])
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)
                return

    worker = threading.Thread(target=query)
    worker.start()
    try:
        model.learn(64)  # four rollouts, four optimizer steps
    finally:
        stop.set()
        worker.join(30)
    assert not errors and answers == sorted(answers)  # versions only go forward
    value, extras = evaluator.get_value(obs)
    assert extras["weights_version"] == 4 and torch.equal(value, own_value(model.policy, obs))


class TestEvalRunner:
    def test_same_episodes_as_evaluate_policy(self) -> None:
        # SB3's evaluate_policy on each episode alone, its env seeded with that episode's
        # documented seed: with greedy actions, the very same episodes.
        model = BY_NAME["ppo-cartpole"].build()
        model.learn(64)
        runner = EvalRunner(EnvSpec(_cartpole, num_envs=4), SB3Evaluator(model), num_episodes=8,
                            episodes=EpisodeSettings(seed=0))
        result = runner.evaluate()
        runner.shutdown()
        rewards, lengths = sb3_episode_by_episode(model, _cartpole, num_envs=4, num_episodes=8)
        assert len(set(lengths)) > 1  # episodes that differ: a wrong action would show
        assert [e.length for e in result.episodes] == lengths
        assert [e.reward for e in result.episodes] == rewards
        assert result["eval/reward"] == pytest.approx(np.mean(rewards))

    def test_box_actions_reach_the_env_as_predict_sends_them(self) -> None:
        model = BY_NAME["sac-pendulum"].build()

        def short() -> gym.Env:
            return gym.make("Pendulum-v1", max_episode_steps=20)

        with EvalRunner(EnvSpec(short, num_envs=2), SB3Evaluator(model),
                        num_episodes=4) as runner:
            result = runner.evaluate(model.policy)  # the policy's weights, as a module
        rewards, _ = sb3_episode_by_episode(model, short, num_envs=2, num_episodes=4)
        assert [e.reward for e in result.episodes] == pytest.approx(rewards)


def sb3_episode_by_episode(model, make_env, num_envs: int, num_episodes: int, seed: int = 0
                           ) -> tuple[list[float], list[int]]:
    """Returns and lengths of ``evaluate_policy`` run on each episode of the runner's plan
    alone (slot order), its env seeded with the episode's documented seed."""
    rewards, lengths = [], []
    for slot in range(num_envs):
        for episode in range((num_episodes + slot) // num_envs):
            envs = DummyVecEnv([make_env])
            envs.seed(seed_by_hand(seed, slot, episode))
            reward, length = evaluate_policy(model, envs, n_eval_episodes=1,
                                             deterministic=True, return_episode_rewards=True,
                                             warn=False)
            rewards += reward
            lengths += length
            envs.close()
    return rewards, lengths


def test_the_readme_example_runs() -> None:
    namespace: dict = {}
    exec(readme_snippet("Stable-Baselines3 models"), namespace)  # verbatim
    model, evaluator, obs = namespace["model"], namespace["evaluator"], namespace["obs"]
    assert namespace["metrics"]["eval/num_episodes"] == 8
    assert namespace["value"].shape == (4, 1)
    assert torch.equal(evaluator.get_value(obs)[0], own_value(model.policy, obs))  # learnt
    assert np.array_equal(evaluator.get_action(obs, deterministic=True)[0].numpy(),
                          predicted(model, obs))
