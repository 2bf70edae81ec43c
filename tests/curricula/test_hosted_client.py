"""The client logic both transports share, on a fake transport that records what it sends:
batches, draws ahead, failures, and the records' packing."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

from syllabus_eval import CurriculumError
from syllabus_eval.curricula import Experience
from syllabus_eval.curricula.hosted import HostedClient
from syllabus_eval.curricula.hosted.client import FIELDS, Link, pack_records, unpack_records


class FakeLink(Link):
    """Answers at once: draw requests with the next integers, every message logged."""

    def __init__(self, client: FakeClient) -> None:
        super().__init__(client)
        self.sent, self.next_task = client.sent, 0

    def _send(self, fields, draws):
        if self.sent is None:
            raise self.fail("the host is gone")
        self.sent.append((len(fields) // FIELDS, draws))
        self.deliver(list(range(self.next_task, self.next_task + draws)))
        self.next_task += draws

    def _await_tasks(self, k, deadline):
        pass

    def _sync(self, timeout):
        pass


class FakeClient(HostedClient):
    def __init__(self, **settings):
        super().__init__(True, **settings)
        self.sent: list | None = []

    def _connect(self):
        return FakeLink(self)


def step(env_id=0, reward=0.0):
    return Experience("step", env_id, obs=np.zeros(2, np.float32), reward=reward)


class TestBatches:
    def test_records_go_in_batches(self):
        client = FakeClient(batch_records=4, max_delay=60)
        for _ in range(10):
            client.observe(step())
        assert client.sent == [(4, 0), (4, 0)]  # two left in the buffer
        client.flush()
        assert client.sent[-1] == (2, 0)

    def test_a_close_record_ships_at_once(self):
        client = FakeClient(batch_records=64)
        client.observe(step())
        client.observe(Experience("close", 0))
        assert client.sent == [(2, 0)]

    def test_old_records_ship_at_the_next_one(self):
        client = FakeClient(batch_records=64, max_delay=0.0)
        client.observe(step())
        assert client.sent == [(1, 0)]


    def test_buffered_records_set_off_no_garbage_collection(self):
        # Held as records (tuples the collector tracks), a few thousand of them set off
        # collections, the full ones walking the whole of a torch process.
        client = FakeClient(batch_records=20_000, max_delay=60)
        gc.collect()
        before = gc.get_stats()[0]["collections"]
        for _ in range(5_000):
            client.observe(step())
        assert gc.get_stats()[0]["collections"] == before
        client.flush()
        assert client.sent == [(5_000, 0)]


class TestDrawsAhead:
    def test_one_request_per_half_of_the_draws_ahead(self):
        client = FakeClient(prefetch=8)
        assert client.sample(1) == [0]
        assert client.sent == [(0, 9)]  # the one needed and 8 ahead
        assert [client.sample(1)[0] for _ in range(3)] == [1, 2, 3]
        assert len(client.sent) == 1  # no round trip
        assert client.sample(1) == [4]
        assert client.sent[-1] == (0, 4)  # at 4 left: back up to 8 ahead
        assert [client.sample(1)[0] for _ in range(8)] == list(range(5, 13))
        assert client.sent[1:] == [(0, 4)] * 3

    def test_records_go_with_the_request(self):
        client = FakeClient(prefetch=2)
        client.observe(step())
        client.sample(1)
        assert client.sent == [(1, 3)]

    def test_no_draws_ahead(self):
        client = FakeClient(prefetch=0)
        assert client.sample(2) == [0, 1] and client.sample(1) == [2]
        assert client.sent == [(0, 2), (0, 1)]


class TestFailures:
    def test_raised_every_time_but_never_by_a_close_record(self):
        client = FakeClient(batch_records=1)
        client.observe(step())
        client.sent = None  # the host goes
        client._link.sent = None
        for call in (lambda: client.observe(step()), client.sample, client.flush):
            with pytest.raises(CurriculumError, match="the host is gone"):
                call()
        client.observe(Experience("close", 0))

    def test_the_client_pickles_without_its_connection(self):
        client = FakeClient()
        client.sample(1)
        copy = pickle.loads(pickle.dumps(client))
        assert copy._link is None and copy.prefetch == client.prefetch

    def test_bad_records(self):
        client = FakeClient()
        with pytest.raises(ValueError, match="experience: expected an Experience record"):
            client.observe(("step", 0))
        with pytest.raises(ValueError, match=r"experience.kind: expected one of \['reset', "
                                             r"'step', 'close'\]"):
            client.observe(Experience("start", 0))
        with pytest.raises(ValueError, match="k: expected an integer >= 1"):
            client.sample(0)


def packed(records):
    """The records packed as a link buffers them: their fields one after the other."""
    return pack_records([field for record in records for field in record])


class TestPacking:
    def test_records_come_back_as_they_went(self):
        records = [Experience("reset", "e0", "a", np.arange(3, dtype=np.float32)),
                   Experience("step", "e0", obs=np.ones(3, np.float32), reward=1.5,
                              truncated=True),
                   Experience("close", "e0"),
                   Experience("reset", 7, ("t", 1), np.zeros(3, np.float32))]
        back = unpack_records(pickle.loads(pickle.dumps(packed(records))))
        assert [r._replace(obs=None) for r in back] == [r._replace(obs=None) for r in records]
        for got, sent in zip(back, records):
            np.testing.assert_array_equal(got.obs, sent.obs)

    def test_observations_of_other_shapes_or_kinds(self):
        records = [Experience("reset", 0, "a", {"x": np.zeros(2)}),
                   Experience("step", 0, obs=np.zeros(3)), Experience("step", 0, obs=[1, 2])]
        back = unpack_records(packed(records))
        np.testing.assert_array_equal(back[0].obs["x"], np.zeros(2))
        assert back[2].obs == [1, 2] and back[1].obs.shape == (3,)

    def test_observations_of_other_dtypes_keep_theirs(self):
        records = [Experience("reset", 0, "a", np.zeros(2, np.float32)),
                   Experience("step", 0, obs=np.ones(2, np.float64)),
                   Experience("step", 0, obs=np.ones(2, np.int64))]
        back = unpack_records(pickle.loads(pickle.dumps(packed(records))))
        assert [r.obs.dtype for r in back] == [np.float32, np.float64, np.int64]

    def test_a_batch_of_closes_only(self):
        records = [Experience("close", 0), Experience("close", "e1")]
        assert unpack_records(packed(records)) == records
