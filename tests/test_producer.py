"""The producer in-process, under pytest-twisted: submit(), the Deferred client, stop."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from conftest import TESTS, pid_alive
from twisted.internet import reactor

from gaspar_tw import GasparClient, Producer, RemoteError, ServiceStopped


async def started(handler: str, workers: int = 2, **kwargs) -> Producer:
    producer = Producer(
        handler, "tcp:0:interface=127.0.0.1", workers, pythonpath=[str(TESTS)], **kwargs
    )
    producer.privilegedStartService()
    producer.startService()
    await producer.whenReady().addTimeout(15, reactor)
    return producer


@pytest.fixture
def producers():
    """Producers made by a test; each is stopped and its workers checked gone."""
    made: list[Producer] = []
    yield made
    for producer in made:
        pids = producer.workerPids()
        if producer.running:
            pytest_twisted.blockon(producer.stopService())
        assert not any(pid_alive(pid) for pid in pids)


@pytest_twisted.ensureDeferred
async def test_submit_runs_handler_in_worker(producers):
    producers.append(producer := await started("handlers:tagged"))
    reply = await producer.submit(b"hello")
    pid, _, body = reply.partition(b":")
    assert body == b"hello" and int(pid) in producer.workerPids()
    assert int(pid) != os.getpid()


@pytest_twisted.ensureDeferred
async def test_concurrent_submits_all_answered_by_all_workers(producers):
    from twisted.internet.defer import gatherResults

    producers.append(producer := await started("handlers:tagged", workers=2, window=4))
    messages = [b"m%d-%s" % (i, os.urandom(4).hex().encode()) for i in range(500)]
    replies = await gatherResults([producer.submit(m) for m in messages])
    pids = set()
    for message, reply in zip(messages, replies, strict=False):
        pid, _, body = reply.partition(b":")
        assert body == message
        pids.add(int(pid))
    assert pids == set(producer.workerPids())


@pytest_twisted.ensureDeferred
async def test_str_result_is_utf8_and_other_results_are_errors(producers):
    producers.append(await started("handlers:text"))
    assert await producers[0].submit(b"caf\xc3\xa9") == "café ok".encode()
    producers.append(bad := await started("handlers:returns_int", workers=1))
    with pytest.raises(RemoteError, match="expected bytes or str"):
        await bad.submit(b"x")


@pytest_twisted.ensureDeferred
async def test_handler_exception_is_a_remote_error_with_traceback(producers):
    producers.append(producer := await started("handlers:fail", workers=1))
    with pytest.raises(RemoteError) as info:
        await producer.submit(b"widget")
    assert info.value.type == "KeyError"
    assert "no such thing: widget" in info.value.message
    assert "handlers.py" in info.value.traceback and "raise KeyError" in info.value.traceback


@pytest_twisted.ensureDeferred
async def test_deferred_client_over_tcp(producers):
    producers.append(producer := await started("gaspar_tw.examples:upper"))
    client = GasparClient(reactor, f"tcp:127.0.0.1:{producer.port.getHost().port}", timeout=10)
    from twisted.internet.defer import gatherResults

    replies = await gatherResults([client.request(b"abc%d" % i) for i in range(50)])
    assert replies == [b"ABC%d" % i for i in range(50)]


@pytest_twisted.ensureDeferred
async def test_stop_service_reaps_workers_and_refuses_new_work(producers):
    producer = await started("gaspar_tw.examples:echo")
    pids = producer.workerPids()
    assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    await producer.stopService()
    assert not any(pid_alive(pid) for pid in pids)
    with pytest.raises(ServiceStopped):
        await producer.submit(b"late")
