"""Replies of one batch that do not wait for each other. The window's rules:
test_dispatch_scheduler.py; the wire messages: test_wire.py."""

from __future__ import annotations

import time

import pytest_twisted
from conftest import TESTS, pid_alive
from twisted.internet import reactor

from gaspar_tw import Producer


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
