"""Prioritized Level Replay: scores, prioritisation, the worker thread and its lifecycle."""

from __future__ import annotations

import threading
import time
from collections import Counter
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical

from syllabus_eval import CurriculumError, EvaluationError
from syllabus_eval.adapters import CleanRLEvaluator, DummyEvaluator, MoolibEvaluator
from syllabus_eval.curricula import (
    Curriculum,
    CurriculumWrapper,
    Experience,
    PrioritizedLevelReplay,
    gae,
)
from syllabus_eval.demo.agents import LSTMAgent, MLPAgent
from tests.models import MoolibNet

GAMMA, LAMBDA = 0.9, 0.5


class LinearAgent(nn.Module):
    """A CleanRL-style agent with V(s) = s[0]; its action logits are the observation."""

    def __init__(self, obs_size: int = 1) -> None:
        super().__init__()
        self.critic = nn.Linear(obs_size, 1, bias=False)
        with torch.no_grad():
            self.critic.weight.copy_(torch.eye(1, obs_size))

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        probs = Categorical(logits=x)
        action = probs.sample() if action is None else action
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


class LogitModel(nn.Module):
    """A model with moolib's contract: baseline s[0], policy logits [*s, 0]."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(1, 1)  # a parameter, so the evaluator has weights to copy

    def initial_state(self, batch_size):
        return ()

    def forward(self, inputs, core_state=()):
        state = inputs["state"].float()  # [T, B, 2]
        logits = torch.cat([state, torch.zeros_like(state[..., :1])], dim=-1)  # [T, B, 3]
        return dict(policy_logits=logits, baseline=state[..., 0],
                    action=logits.argmax(-1)), core_state


def episode(env_id, task, observations, rewards, end="terminated"):
    """The records of one episode: a reset, then one step per reward."""
    records = [Experience("reset", env_id, task, np.array(observations[0], np.float32))]
    for t, reward in enumerate(rewards):
        last = t == len(rewards) - 1
        records.append(Experience("step", env_id, obs=np.array(observations[t + 1], np.float32),
                                  reward=reward, terminated=last and end == "terminated",
                                  truncated=last and end == "truncated"))
    return records


def scores_after(records, strategy="value_l1", evaluator=None, **kwargs):
    evaluator = evaluator or CleanRLEvaluator(LinearAgent())
    with PrioritizedLevelReplay(["a", "b"], evaluator, strategy=strategy, gamma=GAMMA,
                                gae_lambda=LAMBDA, **kwargs) as plr:
        for record in records:
            plr.observe(record)
    return plr.task_scores(), plr.scored_steps()


# V(s_0..s_3) = 1, 2, 0.5, 3 and r_0..r_2 = 1, 0, 2 with gamma 0.9, lambda 0.5, by hand:
# terminated: delta = (1.8, -1.55, 1.5) -> A = (1.40625, -0.875, 1.5)
# truncated (bootstrap V(s_3) = 3): delta_2 = 2 + 2.7 - 0.5 = 4.2 -> A = (1.953, 0.34, 4.2)
VALUES, REWARDS = [[1.0], [2.0], [0.5], [3.0]], [1.0, 0.0, 2.0]


class TestGAE:
    def test_terminated_segment_by_hand(self):
        advantages = gae(REWARDS, [1.0, 2.0, 0.5], 0.0, GAMMA, LAMBDA)
        np.testing.assert_allclose(advantages, [1.40625, -0.875, 1.5])

    def test_bootstrapped_segment_by_hand(self):
        advantages = gae(REWARDS, [1.0, 2.0, 0.5], 3.0, GAMMA, LAMBDA)
        np.testing.assert_allclose(advantages, [1.953, 0.34, 4.2])


class TestValueScores:
    """V(s) = s[0] through each adapter, so the scores are the ones worked out above."""

    @pytest.fixture(params=["cleanrl", "moolib"])
    def score(self, request):
        evaluator = (CleanRLEvaluator(LinearAgent()) if request.param == "cleanrl"
                     else MoolibEvaluator(LogitModel()))
        return partial(scores_after, evaluator=evaluator)

    def test_value_l1_of_a_terminated_episode(self, score):
        scores, steps = score(episode(0, "a", VALUES, REWARDS))
        assert scores == pytest.approx({"a": (1.40625 + 0.875 + 1.5) / 3})
        assert steps == {"a": 3}

    def test_positive_value_loss_ignores_negative_advantages(self, score):
        scores, _ = score(episode(0, "a", VALUES, REWARDS), "positive_value_loss")
        assert scores == pytest.approx({"a": (1.40625 + 1.5) / 3})

    def test_truncation_bootstraps_from_the_last_observation(self, score):
        scores, _ = score(episode(0, "a", VALUES, REWARDS, end="truncated"))
        assert scores == pytest.approx({"a": (1.953 + 0.34 + 4.2) / 3})

    def test_close_scores_the_open_episode_as_truncated(self, score):
        scores, steps = score(episode(0, "a", VALUES, REWARDS, end="open"))
        assert scores == pytest.approx({"a": (1.953 + 0.34 + 4.2) / 3})
        assert steps == {"a": 3}

    def test_a_reset_mid_episode_scores_it_as_truncated(self, score):
        records = episode(0, "a", VALUES, REWARDS, end="open") + episode(0, "b", VALUES, [])
        scores, steps = score(records)
        assert scores == pytest.approx({"a": (1.953 + 0.34 + 4.2) / 3})
        assert steps == {"a": 3}  # "b" played no step: nothing to score

    def test_long_episodes_are_scored_in_segments(self, score):
        # num_steps=2: (s0, s1, s2) bootstrapped from V(s2) = 0.5 gives A = (1.1025, -1.55),
        # then (s2, s3) terminated gives A = (1.5); score_alpha=0.5 averages the two.
        first, second = (1.1025 + 1.55) / 2, 1.5
        scores, steps = score(episode(0, "a", VALUES, REWARDS), num_steps=2,
                                     score_alpha=0.5)
        assert scores == pytest.approx({"a": 0.5 * first + 0.5 * second})
        assert steps == {"a": 3}

    def test_interleaved_envs_keep_their_own_streams(self, score):
        a, b = episode(0, "a", VALUES, REWARDS), episode(1, "b", VALUES, REWARDS, "truncated")
        interleaved = [record for pair in zip(a, b) for record in pair]
        scores, _ = score(interleaved)
        assert scores == pytest.approx({"a": (1.40625 + 0.875 + 1.5) / 3,
                                        "b": (1.953 + 0.34 + 4.2) / 3})


class TestBatches:
    """``observe_batch``, a hosted curriculum's path: one hand-over per client batch."""

    A_TERMINATED = (1.40625 + 0.875 + 1.5) / 3  # worked out above
    B_TRUNCATED = (1.953 + 0.34 + 4.2) / 3

    def streams(self):
        a, b = episode(0, "a", VALUES, REWARDS), episode(1, "b", VALUES, REWARDS, "truncated")
        return [record for pair in zip(a, b) for record in pair]

    @pytest.mark.parametrize("chunk, batch_size, queue_size", [
        (3, 2, 4096),  # chunks split across the worker's batches
        (8, 256, 4096),  # one batch of everything
        (8, 1, 2),  # chunks larger than the queue: each goes in once the queue is empty
    ])
    def test_batches_give_the_scores_worked_out_by_hand(self, chunk, batch_size, queue_size):
        records = self.streams()
        with PrioritizedLevelReplay(["a", "b"], CleanRLEvaluator(LinearAgent()), gamma=GAMMA,
                                    gae_lambda=LAMBDA, batch_size=batch_size,
                                    queue_size=queue_size) as plr:
            for start in range(0, len(records), chunk):
                plr.observe_batch(records[start:start + chunk])
            plr.flush(timeout=30)
            assert plr.task_scores() == pytest.approx({"a": self.A_TERMINATED,
                                                       "b": self.B_TRUNCATED})
            assert plr.scored_steps() == {"a": 3, "b": 3}

    def test_flush_does_not_wait_for_a_full_batch(self):
        # batch_wait is how long the worker waits for batch_size records; a flush has the
        # worker take what it has at once (Robust PLR and hosted servers flush often).
        with PrioritizedLevelReplay(["a", "b"], CleanRLEvaluator(LinearAgent()), gamma=GAMMA,
                                    gae_lambda=LAMBDA, batch_size=256, batch_wait=30.0) as plr:
            plr.observe_batch(episode(0, "a", VALUES, REWARDS))
            started = time.monotonic()
            plr.flush(timeout=10)
            assert time.monotonic() - started < 10
            assert plr.task_scores() == pytest.approx({"a": self.A_TERMINATED})

    def test_a_bad_record_refuses_the_whole_batch(self):
        with PrioritizedLevelReplay(["a", "b"], CleanRLEvaluator(LinearAgent())) as plr:
            with pytest.raises(ValueError, match="experience.task: expected one of"):
                plr.observe_batch(episode(0, "a", VALUES, REWARDS)
                                  + [Experience("reset", 1, "c", np.zeros(1, np.float32))])
            plr.flush(timeout=30)
            assert plr.scored_steps() == {}

    def test_a_curriculum_without_its_own_takes_each_record_in_order(self):
        class Recording(Curriculum):
            wants_experience = True

            def __init__(self):
                super().__init__(2)
                self.seen = []

            def observe(self, experience):
                self.seen.append(experience)

        records = self.streams()
        curriculum = Recording()
        curriculum.observe_batch(records)
        assert curriculum.seen == records


class TestPolicyScores:
    OBS = [[1.0, 0.0], [0.0, 2.0], [-1.0, 0.5], [5.0, 5.0]]  # the last one takes no action

    def expected(self, per_step):
        probs = torch.softmax(torch.tensor([[*o, 0.0] for o in self.OBS[:-1]]), -1).numpy()
        return float(np.mean([per_step(p) for p in probs]))

    @pytest.mark.parametrize("strategy, per_step", [
        ("policy_entropy", lambda p: -(p * np.log(p)).sum()),
        ("least_confidence", lambda p: 1 - p.max()),
        ("min_margin", lambda p: 1 - (np.sort(p)[-1] - np.sort(p)[-2])),
    ])
    def test_from_policy_logits(self, strategy, per_step):
        scores, _ = scores_after(episode(0, "a", self.OBS, [0.0] * 3), strategy,
                                 MoolibEvaluator(LogitModel()))
        assert scores["a"] == pytest.approx(self.expected(per_step), rel=1e-5)

    def test_entropy_from_cleanrl_extras(self):
        obs = [o[:1] for o in self.OBS]  # one logit: entropy 0
        scores, _ = scores_after(episode(0, "a", obs, [0.0] * 3), "policy_entropy",
                                 CleanRLEvaluator(LinearAgent(1)))
        assert scores["a"] == pytest.approx(0.0, abs=1e-6)
        scores, _ = scores_after(episode(0, "a", self.OBS, [0.0] * 3), "policy_entropy",
                                 CleanRLEvaluator(LinearAgent(2)))
        probs = torch.softmax(torch.tensor(self.OBS[:-1]), -1).numpy()
        assert scores["a"] == pytest.approx(float(np.mean(-(probs * np.log(probs)).sum(-1))),
                                            rel=1e-5)

    def test_missing_action_distribution_is_a_clear_error(self):
        evaluator = DummyEvaluator(gym.spaces.Discrete(2))
        with pytest.raises(EvaluationError) as info:
            scores_after(episode(0, "a", VALUES, REWARDS), "least_confidence", evaluator)
        assert isinstance(info.value.__cause__, ValueError)
        assert "strategy='least_confidence' needs the policy's action distribution" in str(
            info.value.__cause__)


class TestRecurrentScoring:
    def test_each_env_carries_its_own_recurrent_state(self):
        probe = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
        evaluator = CleanRLEvaluator(LSTMAgent(probe), is_lstm=True)
        probe.close()
        rng = np.random.default_rng(0)
        streams = {env: episode(env, task, rng.normal(size=(n + 1, 4)), list(rng.normal(size=n)),
                                end)
                   for env, task, n, end in [(0, "a", 5, "terminated"), (1, "b", 3, "truncated"),
                                             (2, "c", 7, "terminated")]}
        gate = threading.Event()

        class Gated:
            """Holds the first query until every record is queued: the next batch then holds
            several records of each env, scored depth by depth."""

            is_lstm = True
            lstm_batch_dim = evaluator.lstm_batch_dim
            initial_lstm_state = staticmethod(evaluator.initial_lstm_state)
            get_action = evaluator.get_action
            get_action_and_value = evaluator.get_action_and_value

            def get_value(self, *args):
                gate.wait()
                return evaluator.get_value(*args)

        with PrioritizedLevelReplay(["a", "b", "c"], Gated(), gamma=GAMMA,
                                    gae_lambda=LAMBDA) as plr:
            records = [r for group in zip(*streams.values()) for r in group]
            records += [r for s in streams.values() for r in s[len(streams[1]):]]
            for record in records:
                plr.observe(record)
            gate.set()
        expected = {}
        for records in streams.values():
            state, values = evaluator.initial_lstm_state(1), []
            for t, record in enumerate(records):  # one env alone, step by step
                value, extras = evaluator.get_value(record.obs[None], state, [float(t == 0)])
                state = extras["lstm_state"]
                values.append(value.item())
            last = records[-1]
            advantages = gae([r.reward for r in records[1:]], values[:-1],
                             0.0 if last.terminated else values[-1], GAMMA, LAMBDA)
            expected[records[0].task] = float(np.abs(advantages).mean())
        assert plr.task_scores() == pytest.approx(expected, rel=1e-5)


    @pytest.mark.parametrize("strategy", ["value_l1", "policy_entropy"])
    @pytest.mark.parametrize("adapter", ["cleanrl", "moolib"])
    def test_whole_segments_in_one_query_equal_step_by_step_scoring(self, adapter, strategy):
        torch.manual_seed(0)
        if adapter == "cleanrl":
            probe = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
            evaluator, shape, dtype = CleanRLEvaluator(LSTMAgent(probe), is_lstm=True), (4,), \
                np.float32
            probe.close()
        else:
            evaluator, shape, dtype = MoolibEvaluator(MoolibNet(use_lstm=True)), (2, 8, 8), \
                np.uint8
        rng = np.random.default_rng(1)
        streams = []  # 4 envs in lockstep, episodes of different lengths, longer than a batch
        for env in range(4):
            records = []
            for n in rng.integers(3, 30, 4):
                frames = rng.integers(0, 256, (n + 1, *shape)).astype(dtype)
                records += [r._replace(obs=r.obs.astype(dtype).reshape(shape))
                            for r in episode(env, "ab"[env % 2], frames.reshape(n + 1, -1),
                                             list(rng.normal(size=n)))]
            streams.append(records)
        stream = [r for group in zip(*streams) for r in group]

        class StepByStep:  # the same evaluator, without sequence queries: depth by depth
            is_lstm, lstm_batch_dim = True, evaluator.lstm_batch_dim
            initial_lstm_state = staticmethod(evaluator.initial_lstm_state)
            get_action, get_value = evaluator.get_action, evaluator.get_value
            get_action_and_value = evaluator.get_action_and_value

        calls = []
        sequences = evaluator.get_value_sequence

        def counting(*args, **kwargs):
            calls.append(args[0].shape[:2])
            return sequences(*args, **kwargs)

        evaluator.get_value_sequence = counting
        kwargs = {"strategy": strategy, "num_steps": 16, "batch_size": 32, "batch_wait": 0.0}
        whole, whole_steps = scores_after(stream, evaluator=evaluator, **kwargs)
        step, step_steps = scores_after(stream, evaluator=StepByStep(), **kwargs)
        assert whole == pytest.approx(step, rel=1e-5) and whole_steps == step_steps
        assert calls and max(t for t, _ in calls) > 1  # sequences of several steps per query


class TestRankPrioritisation:
    """P_S(l_i) = h(S_i)^(1/beta) / sum_j h(S_j)^(1/beta), PLR Eq. 1."""

    def plr(self, scores, **kwargs):
        plr = PrioritizedLevelReplay(len(scores), DummyEvaluator(gym.spaces.Discrete(2)),
                                     staleness_coef=0.0, **kwargs)
        for task, score in enumerate(scores):
            plr.update_score(task, score)
        return plr

    @pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 4.0])
    def test_rank_with_temperature(self, beta):
        with self.plr([0.3, 2.0, -1.0, 0.7], temperature=beta) as plr:
            h = 1.0 / np.array([3, 1, 4, 2])  # ranks of the scores, 1 the highest
            expected = h ** (1 / beta) / (h ** (1 / beta)).sum()
            np.testing.assert_allclose(plr.replay_distribution(), expected)
            np.testing.assert_allclose(plr.distribution(), expected)  # all tasks seen

    def test_power_transform(self):
        with self.plr([1.0, 2.0, 3.0], score_transform="power", temperature=0.5) as plr:
            h = np.array([1.0, 2.0, 3.0]) + 1e-3  # the reference's offset without staleness
            np.testing.assert_allclose(plr.replay_distribution(), h ** 2 / (h ** 2).sum())

    def test_scores_are_averaged_with_score_alpha(self):
        with self.plr([1.0, 2.0], score_alpha=0.25) as plr:
            plr.update_score(0, 5.0)
            assert plr.task_scores() == {0: pytest.approx(0.75 * 1.0 + 0.25 * 5.0), 1: 2.0}


class TestStaleness:
    """P_C(l_i) = (c - C_i) / sum_j (c - C_j), PLR Eq. 2; P_replay mixes them, Eq. 3."""

    def test_staleness_distribution(self):
        with PrioritizedLevelReplay(4, DummyEvaluator(gym.spaces.Discrete(2)),
                                    staleness_coef=1.0, seed=0) as plr:
            for task in range(4):
                plr.update_score(task, float(task))
            drawn = plr.sample(1) + plr.sample(1) + plr.sample(3)
            c = len(drawn)
            last = {task: i + 1 for i, task in enumerate(drawn)}  # C_i: draw count when drawn
            staleness = np.array([c - last.get(task, 0) for task in range(4)], float)
            np.testing.assert_allclose(plr.replay_distribution(), staleness / staleness.sum())

    @pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
    def test_mixture(self, rho):
        with PrioritizedLevelReplay(3, DummyEvaluator(gym.spaces.Discrete(2)),
                                    staleness_coef=rho, temperature=1.0, seed=1) as plr:
            for task, score in enumerate([2.0, 1.0, 3.0]):
                plr.update_score(task, score)
            drawn = plr.sample(4)
            last = {task: i + 1 for i, task in enumerate(drawn)}
            staleness = np.array([4 - last.get(task, 0) for task in range(3)], float)
            p_stale = (staleness / staleness.sum() if staleness.sum() else np.full(3, 1 / 3))
            p_score = np.array([1 / 2, 1 / 3, 1.0]) / (1 / 2 + 1 / 3 + 1.0)
            np.testing.assert_allclose(plr.replay_distribution(),
                                       (1 - rho) * p_score + rho * p_stale)


class TestReplayDecision:
    def plr(self, seen, **kwargs):
        plr = PrioritizedLevelReplay(4, DummyEvaluator(gym.spaces.Discrete(2)), seed=0,
                                     **kwargs)
        for task in seen:
            plr.update_score(task, 1.0 + task)
        return plr

    def test_nothing_seen_is_uniform(self):
        with self.plr([]) as plr:
            np.testing.assert_allclose(plr.distribution(), [0.25] * 4)
            assert not plr.replay_distribution().any()

    @pytest.mark.parametrize("schedule, replay", [("proportionate", 0.5), ("fixed", 0.8)])
    def test_unseen_tasks_get_the_rest(self, schedule, replay):
        with self.plr([0, 2], replay_prob=0.8, replay_schedule=schedule) as plr:
            mixture = plr.distribution()
            np.testing.assert_allclose(mixture[[1, 3]], [(1 - replay) / 2] * 2)
            np.testing.assert_allclose(mixture[[0, 2]], replay * plr.replay_distribution()[[0, 2]])

    def test_samples_follow_the_replay_decision(self):
        with self.plr([0, 2], replay_prob=0.3, replay_schedule="fixed") as plr:
            counts = Counter(plr.sample(4000))
        assert abs(counts[1] + counts[3] - 2800) < 150  # 1 - p of the draws are new tasks


class TestConcurrentSampling:
    def test_threads_sample_while_scores_change(self):
        with PrioritizedLevelReplay(50, DummyEvaluator(gym.spaces.Discrete(2)), seed=0) as plr:
            drawn, errors = [], []

            def sample():
                try:
                    for _ in range(200):
                        drawn.extend(plr.sample(2))
                except BaseException as error:
                    errors.append(error)

            threads = [threading.Thread(target=sample) for _ in range(4)]
            for thread in threads:
                thread.start()
            for i in range(2000):  # scores change under the samplers' feet
                plr.update_score(i % 50, float(i % 7))
            for thread in threads:
                thread.join()
            assert not errors and len(drawn) == 4 * 200 * 2
            assert plr.distribution().sum() == pytest.approx(1.0)


class TestWorkerUnderTraining:
    """A training thread steps a real optimizer while envs feed PLR and the worker scores."""

    def test_every_transition_is_scored_once(self, transition_counter, no_leaked_threads):
        tasks = [0.25, 0.5, 1.0, 2.0]  # CartPole pole half-lengths

        def set_pole(env, task):
            env.unwrapped.length = task

        probe = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
        agent = MLPAgent(probe)
        probe.close()
        optimizer = torch.optim.Adam(agent.parameters(), lr=1e-3)
        plr = PrioritizedLevelReplay(tasks, CleanRLEvaluator(agent), num_steps=16,
                                     batch_size=32, queue_size=16, seed=0)
        counters, errors = [], []

        def play(updates: int, train: bool) -> None:
            envs = gym.vector.SyncVectorEnv(
                [lambda: CurriculumWrapper(gym.make("CartPole-v1"), plr, set_task=set_pole)
                 for _ in range(4)])
            counter = transition_counter(4)
            counters.append(counter)
            try:
                obs, _ = envs.reset(seed=len(counters))
                for _ in range(updates):
                    batch = []
                    for _ in range(32):
                        with torch.no_grad():
                            action = agent.get_action_and_value(torch.Tensor(obs))[0]
                        batch.append((obs, action))
                        obs, _, terminated, truncated, info = envs.step(action.numpy())
                        counter.step(info, terminated, truncated)
                    if train:  # a policy-gradient-style step on what was played
                        x = torch.Tensor(np.concatenate([o for o, _ in batch]))
                        _, log_prob, entropy, value = agent.get_action_and_value(
                            x, torch.cat([a for _, a in batch]))
                        loss = -(log_prob * value.detach().squeeze()).mean() + value.pow(2).mean()
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
                envs.close()
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=play, args=(8, True)),
                   threading.Thread(target=play, args=(8, False))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        plr.close()
        assert not errors
        played = sum((counter.counts for counter in counters), Counter())
        assert played.total() > 2 * 8 * 32 * 4 * 0.8  # autoreset steps are not transitions
        assert plr.scored_steps() == dict(played)


class TestLifecycle:
    def test_close_is_idempotent_and_stops_the_worker(self, no_leaked_threads):
        plr = PrioritizedLevelReplay(2, DummyEvaluator(gym.spaces.Discrete(2)))
        plr.close()
        plr.close()

    def test_experience_after_close_is_refused(self):
        with PrioritizedLevelReplay(2, DummyEvaluator(gym.spaces.Discrete(2))) as plr:
            plr.observe(Experience("reset", 0, 1, np.zeros(2)))
        with pytest.raises(RuntimeError, match="closed"):
            plr.observe(Experience("step", 0, obs=np.zeros(2)))
        plr.observe(Experience("close", 0))  # an env closed after the curriculum: fine

    def test_close_while_producing_scores_all_it_took(self, no_leaked_threads):
        plr = PrioritizedLevelReplay(2, DummyEvaluator(gym.spaces.Discrete(2)), queue_size=4,
                                     num_steps=5)
        accepted, refused = [0], []
        started = threading.Event()

        def produce():
            plr.observe(Experience("reset", 0, 0, np.zeros(2)))
            while True:
                try:
                    plr.observe(Experience("step", 0, obs=np.zeros(2)))
                except RuntimeError as error:
                    refused.append(error)
                    return
                accepted[0] += 1
                started.set()

        thread = threading.Thread(target=produce)
        thread.start()
        started.wait()
        plr.close()
        thread.join()
        assert refused and plr.scored_steps() == {0: accepted[0]}

    def test_flush_waits_for_the_scores(self):
        with PrioritizedLevelReplay(["a", "b"], CleanRLEvaluator(LinearAgent()), gamma=GAMMA,
                                    gae_lambda=LAMBDA) as plr:
            for record in episode(0, "a", VALUES, REWARDS):
                plr.observe(record)
            plr.flush(timeout=30)
            assert plr.scored_steps() == {"a": 3}


class TestWorkerFailures:
    def failing_plr(self, **kwargs):
        agent = LinearAgent()
        evaluator = CleanRLEvaluator(agent, observation_space=gym.spaces.Box(0, 1, (1,)))
        return PrioritizedLevelReplay(["a"], evaluator, **kwargs)

    def test_surfaces_from_flush_sample_and_observe(self):
        plr = self.failing_plr()
        plr.observe(Experience("reset", 0, "a", np.zeros(3)))  # the agent takes shape [1]
        for call in (lambda: plr.flush(timeout=30), plr.sample,
                     lambda: plr.observe(Experience("step", 0, obs=np.zeros(1)))):
            with pytest.raises(EvaluationError, match="worker failed") as info:
                call()
            assert "state: expected a batch of shape [B, 1]" in str(info.value.__cause__)
        plr.observe(Experience("close", 0))  # an env closing: nothing to score, no raise
        plr.close()  # already reported: closes quietly

    def test_a_close_record_neither_raises_nor_reports_it(self, no_leaked_threads):
        before = set(threading.enumerate())
        plr = self.failing_plr()
        (worker,) = [thread for thread in threading.enumerate()
                     if thread not in before and thread.name == "PrioritizedLevelReplay worker"]
        plr.observe(Experience("reset", 0, "a", np.zeros(3)))
        worker.join(30)  # it ends by failing: nothing closed the curriculum
        assert not worker.is_alive()
        plr.observe(Experience("close", 0))
        with pytest.raises(CurriculumError, match="worker failed"):
            plr.close()  # still unreported: the curriculum's close reports it

    def test_surfaces_from_close_if_unreported(self, no_leaked_threads):
        plr = self.failing_plr()
        plr.observe(Experience("reset", 0, "a", np.zeros(3)))
        with pytest.raises(EvaluationError) as info:
            plr.close()
        assert isinstance(info.value.__cause__, ValueError)

    def test_its_own_error_type(self):
        plr = self.failing_plr()
        plr.observe(Experience("reset", 0, "a", np.zeros(3)))
        with pytest.raises(CurriculumError, match="PrioritizedLevelReplay worker failed"):
            plr.flush(timeout=30)
        plr.close()

    def test_a_blocked_producer_is_released(self):
        plr = self.failing_plr(queue_size=1, batch_size=1)
        with pytest.raises(EvaluationError):
            for _ in range(100):  # the worker dies on the first; the queue fills, then raises
                plr.observe(Experience("reset", 0, "a", np.zeros(3)))
        plr.close()

    def test_a_producer_blocked_on_a_batch_is_released(self):
        plr = self.failing_plr(queue_size=2, batch_size=1)
        with pytest.raises(EvaluationError):
            for _ in range(100):  # the worker dies on the first; the queue fills, then raises
                plr.observe_batch([Experience("reset", 0, "a", np.zeros(3))] * 2)
        plr.observe_batch([Experience("close", 0)] * 2)  # closing envs: no raise
        plr.close()

    def test_step_before_reset(self):
        plr = PrioritizedLevelReplay(2, DummyEvaluator(gym.spaces.Discrete(2)))
        plr.observe(Experience("step", 7, obs=np.zeros(2)))
        with pytest.raises(EvaluationError) as info:
            plr.close()
        assert "env 7 sent a step before a reset" in str(info.value.__cause__)


class TestBadInputs:
    def evaluator(self):
        return DummyEvaluator(gym.spaces.Discrete(2))

    def test_evaluator_without_the_query_methods(self):
        with pytest.raises(ValueError, match="evaluator: expected an object with the "
                                             "Evaluator's methods"):
            PrioritizedLevelReplay(2, object())

    def test_recurrent_evaluator_without_initial_state(self):
        class Recurrent:
            is_lstm = True

            def get_action(self, state, lstm_state=None, done=None, *, deterministic=None): ...

            def get_value(self, state, lstm_state=None, done=None): ...

            def get_action_and_value(self, state, lstm_state=None, done=None, *,
                                     deterministic=None): ...

        with pytest.raises(ValueError, match="initial_lstm_state"):
            PrioritizedLevelReplay(2, Recurrent())

    @pytest.mark.parametrize("kwargs, message", [
        ({"strategy": "x"}, r"strategy: expected one of \['positive_value_loss', 'value_l1'"),
        ({"score_transform": "x"}, r"score_transform: expected one of \['rank', 'power'"),
        ({"replay_schedule": "x"}, r"replay_schedule: expected one of"),
        ({"temperature": 0.0}, "temperature: expected a number > 0.0"),
        ({"gamma": 1.5}, r"gamma: expected a number in \[0.0, 1.0\], got float 1.5"),
        ({"staleness_coef": float("nan")}, "staleness_coef: expected a finite number"),
        ({"num_steps": 0}, "num_steps: expected an integer >= 1"),
        ({"queue_size": 2.5}, "queue_size: expected an integer >= 1"),
    ])
    def test_bad_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            PrioritizedLevelReplay(2, self.evaluator(), **kwargs)

    @pytest.mark.parametrize("record, message", [
        ("reset", "experience: expected an Experience record"),
        (Experience("start", 0), r"experience.kind: expected one of \['reset', 'step', 'close'\]"),
        (Experience("reset", 0, 5, np.zeros(2)), r"experience.task: expected one of \[0, 1\]"),
        (Experience("close", [0]), "experience.env_id: expected a hashable env id"),
    ])
    def test_bad_records(self, record, message):
        with PrioritizedLevelReplay(2, self.evaluator()) as plr, pytest.raises(
                ValueError, match=message):
            plr.observe(record)

    def test_bad_scores(self):
        with PrioritizedLevelReplay(2, self.evaluator()) as plr:
            with pytest.raises(ValueError, match="task: expected one of"):
                plr.update_score(2, 1.0)
            with pytest.raises(ValueError, match="score: expected a finite number"):
                plr.update_score(0, float("inf"))


class TestPushedWeights:
    """sync_weights_from: the worker loads pushed weights before each batch it scores."""

    def test_loaded_before_the_next_batch(self):
        pushed = []
        with PrioritizedLevelReplay(["a", "b"], CleanRLEvaluator(LinearAgent()), gamma=GAMMA,
                                    gae_lambda=LAMBDA) as plr:
            plr.sync_weights_from(lambda: pushed.pop() if pushed else None)
            for record in episode(0, "a", VALUES, REWARDS):
                plr.observe(record)
            plr.flush(timeout=30)
            pushed.append(({"critic.weight": torch.tensor([[2.0]])}, 7))
            for record in episode(1, "b", VALUES, REWARDS):
                plr.observe(record)
        # V(s) = s[0] for "a"; V doubled for "b" (worked out in tests/curricula/hosting.py)
        assert plr.task_scores() == pytest.approx({"a": (1.40625 + 0.875 + 1.5) / 3,
                                                   "b": (1.4075 + 2.65 + 1.0) / 3})
        assert plr.evaluator.weights_version == 7

    def test_weights_that_do_not_fit_fail_the_worker(self):
        plr = PrioritizedLevelReplay(["a"], CleanRLEvaluator(LinearAgent()))
        plr.sync_weights_from(lambda: ({"critic.weight": torch.zeros(3, 3)}, None))
        plr.observe(Experience("reset", 0, "a", np.zeros(1, np.float32)))
        with pytest.raises(CurriculumError, match="worker failed") as info:
            plr.flush(timeout=30)
        assert "weights: do not fit LinearAgent" in str(info.value.__cause__)
        plr.close()

    def test_bad_inputs(self):
        with PrioritizedLevelReplay(2, DummyEvaluator(gym.spaces.Discrete(2))) as plr:
            with pytest.raises(ValueError, match="pull: expected a callable"):
                plr.sync_weights_from("weights")
            with pytest.raises(ValueError, match="evaluator: expected an evaluator with "
                                                 "weights to replace"):
                plr.sync_weights_from(lambda: None)
