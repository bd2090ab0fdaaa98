"""How requests are batched: the adaptive window, and replies that do not wait for their batch."""

from __future__ import annotations

import time

import pytest_twisted
from conftest import TESTS, pid_alive
from twisted.internet import reactor
from twisted.internet.task import Clock

from gaspar_tw import Producer
from gaspar_tw.dispatch.dispatcher import INITIAL_WINDOW, WINDOW_SECONDS, Dispatcher


def test_window_shrinks_for_slow_handlers_and_stays_full_for_fast_ones():
    dispatcher = Dispatcher(Clock(), window=32)
    assert dispatcher.handler_time is None and dispatcher._window() == INITIAL_WINDOW  # unknown
    for _ in range(50):
        dispatcher.handlerTime(10, 10 * 0.000002)  # 2 us a request
    assert dispatcher._window() == 32
    for _ in range(50):
        dispatcher.handlerTime(1, 0.005)  # 5 ms a request
    assert dispatcher._window() == 2
    for _ in range(50):
        dispatcher.handlerTime(4, 4 * WINDOW_SECONDS / 8)
    assert 7 <= dispatcher._window() <= 8


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
