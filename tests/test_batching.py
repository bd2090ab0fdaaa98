"""How requests are batched: wire messages (packing, cutting, replies), and replies of one
batch that do not wait for each other. The window's rules: test_dispatch_scheduler.py."""

from __future__ import annotations

import time

import pytest_twisted
from conftest import TESTS, pid_alive
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor

from gaspar_tw import Producer
from gaspar_tw.wire import messages as wire

payload_lists = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.integers(0, 255).map(lambda i: bytes([i]) * wire.PACK_LIMIT),
    ),
    max_size=12,
)


@settings(max_examples=40)
@given(payload_lists)
def test_work_messages_carry_every_payload_in_order(payloads):
    ids = list(range(100, 100 + len(payloads)))
    messages = wire.encode_work(ids, payloads)
    got_ids, got = [], []
    for frames in messages:
        message_ids, message_payloads = wire.decode_work(frames)
        got_ids += list(message_ids)
        got += [bytes(p) for p in message_payloads]
    assert got_ids == ids and got == payloads


def test_a_big_batch_is_cut_into_messages_of_about_message_bytes():
    size = wire.MESSAGE_BYTES * 2 // 5
    payloads = [bytes([i]) * size for i in range(5)]
    messages = wire.encode_work([1, 2, 3, 4, 5], payloads)
    assert [list(wire.decode_work(m)[0]) for m in messages] == [[1, 2, 3], [4, 5]]


def test_small_payloads_travel_packed_in_one_frame():
    [frames] = wire.encode_work([1, 2, 3], [b"a", b"bb", b""])
    assert len(frames) == 2  # ids and sizes, one packed body
    [big] = wire.encode_work([1, 2], [b"a", b"x" * wire.PACK_LIMIT])
    assert len(big) == 3  # a frame per payload once one of them is large


@settings(max_examples=40)
@given(payload_lists, st.floats(min_value=0, max_value=3600))
def test_replies_round_trip_with_their_busy_time(payloads, busy):
    ids = list(range(len(payloads)))
    statuses = bytes(i % 2 for i in ids)
    frames = wire.encode_replies(7, ids, statuses, payloads, busy)
    assert wire.frame_kind(frames[0]) == (wire.REPLIES, 7)
    got_ids, got_statuses, got = wire.decode_replies(frames)
    assert list(got_ids) == ids and got_statuses == statuses
    assert [bytes(p) for p in got] == payloads
    assert abs(wire.busy_seconds(frames[0]) - busy) < 1e-6 + 1e-9 * busy


@pytest_twisted.ensureDeferred
async def test_a_slow_request_does_not_hold_back_the_replies_before_it():
    # One worker gets both requests in one message. The fast one's reply must not wait for
    # the slow one (the producer takes a worker's first unanswered request for the one it
    # runs: that is how --timeout picks which request to fail).
    producer = Producer("framed_handlers:mixed", None, 1, pythonpath=[str(TESTS)])
    producer.privilegedStartService()
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        fast, slow = producer.submit(b"fast"), producer.submit(b"sleep:2")
        started = time.monotonic()
        assert await fast == b"fast"
        assert time.monotonic() - started < 1.0
        assert not slow.called
        assert await slow == b"sleep:2"
    finally:
        pids = producer.workerPids()
        await producer.stopService()
        assert not any(pid_alive(pid) for pid in pids)
