"""Worker processes against real processes: forked children, fd exhaustion, restarts, output.

The numbers in the test names are the points of issue 10.
"""

from __future__ import annotations

import os
import signal
import time

import pytest_twisted
from conftest import TESTS, pid_alive
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gaspar_tw import GasparClient, Producer
from gaspar_tw.workerhost import WorkerHost


async def poll(predicate, timeout: float) -> bool:
    """Wait in the reactor until C{predicate()} is true, at most C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
    return predicate()


# -- 8. restart ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_8_a_stopped_producer_starts_again_like_the_first_time():
    producer = Producer("handlers:tagged", "tcp:0:interface=127.0.0.1", 1, pythonpath=[str(TESTS)])
    producer.privilegedStartService()
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        first = producer.workerPids()
        assert (await producer.submit(b"one")).endswith(b":one")
        await producer.stopService()
        assert not any(pid_alive(pid) for pid in first)
        producer.startService()
        await producer.whenReady().addTimeout(5, reactor)
        (pid,) = producer.workerPids()
        assert pid not in first
        assert await producer.submit(b"two").addTimeout(5, reactor) == b"%d:two" % pid
        client = GasparClient(reactor, f"tcp:127.0.0.1:{producer.port.getHost().port}", 5)
        assert await client.request(b"three") == b"%d:three" % pid
    finally:
        pids = producer.workerPids()
        if producer.running:
            await producer.stopService()
    assert not any(pid_alive(pid) for pid in pids)


@pytest_twisted.ensureDeferred
async def test_8_a_stopped_worker_host_starts_again_and_replaces_its_dead():
    producer = Producer(
        "handlers:tagged", None, 0, bind="tcp://127.0.0.1:*", pythonpath=[str(TESTS)]
    )
    producer.startService()
    host = WorkerHost("handlers:tagged", producer.remote.boundAddress, 1, pythonpath=[str(TESTS)])
    seen: list[int] = []
    try:
        host.startService()
        seen += [int((await producer.submit(b"one").addTimeout(15, reactor)).split(b":")[0])]
        await host.stopService()
        host.startService()
        seen += [int((await producer.submit(b"two").addTimeout(15, reactor)).split(b":")[0])]
        assert seen[1] != seen[0]
        os.kill(seen[1], signal.SIGKILL)
        assert await poll(lambda: set(host.pool.pids()) - set(seen), 5), "not replaced"
        seen += host.pool.pids()
        reply = await producer.submit(b"three").addTimeout(15, reactor)
        assert reply == b"%d:three" % seen[-1]
    finally:
        if host.running:
            await host.stopService()
        await producer.stopService()
    assert not any(pid_alive(pid) for pid in seen)
