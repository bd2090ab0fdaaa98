"""Stats counted by a real producer: outcomes, latency, refusals, bad input, worker restarts."""

from __future__ import annotations

import os
import signal
import struct

import pytest
import pytest_twisted
from test_producer import producers as producers  # noqa: F401 - the fixture, shared
from test_producer import started
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from gaspar_tw import Overloaded, RemoteError
from gaspar_tw.stats import LATENCY_BUCKETS, latency_bucket


def test_latency_buckets_are_upper_bounds():
    assert LATENCY_BUCKETS[latency_bucket(0.0001)] == 0.0005
    assert LATENCY_BUCKETS[latency_bucket(0.0005)] == 0.0005
    assert LATENCY_BUCKETS[latency_bucket(0.003)] == 0.005
    assert LATENCY_BUCKETS[latency_bucket(99.0)] == float("inf")


class _Closed(Protocol):
    def connectionMade(self):
        from twisted.internet.defer import Deferred

        self.closed = Deferred()

    def connectionLost(self, reason):
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_outcomes_latency_and_served_are_counted(producers):
    producers.append(producer := await started("handlers:echo_or_fail", max_length=100))
    stats = producer.stats
    assert len(stats.workers) == 2 and stats.outcomes() == dict.fromkeys(stats.outcomes(), 0)
    await gatherResults([producer.submit(b"m%d" % i) for i in range(30)])
    with pytest.raises(RemoteError):
        await producer.submit(b"boom")
    assert stats.ok == 30 and stats.error == 1
    assert sum(stats.latency_counts) == 31 and 0 < stats.latency_sum < 31 * 10
    assert sum(w.served for w in stats.workers.values()) == 31
    assert {w.pid for w in stats.workers.values()} == set(producer.workerPids())

    # An over-long length prefix is bad input: the connection is closed unread.
    port = producer.port.getHost().port
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Closed())
    client.transport.write(struct.pack("!I", 101) + b"x" * 101)
    await client.closed.addTimeout(10, reactor)
    assert stats.bad_input == 1 and stats.ok == 30


@pytest_twisted.ensureDeferred
async def test_refusals_and_worker_restarts_are_counted(producers):
    producers.append(producer := await started("handlers:slow", workers=1, max_pending=1))
    stats = producer.stats
    first = producer.submit(b"0.2")
    with pytest.raises(Overloaded):
        await producer.submit(b"0")
    assert await first == b"0.2"
    assert stats.refused == 1 and stats.ok == 1

    (victim,) = producer.workerPids()
    os.kill(victim, signal.SIGKILL)
    from twisted.internet import task

    for _ in range(300):
        if stats.worker_restarts == 1 and len(stats.workers) == 1:
            break
        await task.deferLater(reactor, 0.05)
    assert stats.worker_restarts == 1
    assert [w.pid for w in stats.workers.values()] != [victim]
    assert await producer.submit(b"0") == b"0"


@pytest_twisted.ensureDeferred
async def test_requests_whose_client_left_are_counted_cancelled(producers):
    producers.append(producer := await started("handlers:slow", workers=1))
    stats = producer.stats
    port = producer.port.getHost().port
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), _Closed())
    client.transport.write(struct.pack("!I", 3) + b"0.3")
    from twisted.internet import task

    for _ in range(200):  # until the producer has the request
        if producer.dispatcher.pending == 1:
            break
        await task.deferLater(reactor, 0.01)
    client.transport.loseConnection()  # hangs up before the reply
    await client.closed.addTimeout(10, reactor)
    waiting = producer.submit(b"0.3")
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    assert await producer.submit(b"0") == b"0"  # the worker finished both, replies dropped
    assert stats.cancelled == 2 and stats.ok == 1 and stats.error == 0
