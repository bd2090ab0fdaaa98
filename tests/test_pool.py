"""ProcessPool, the core service, on its own: real worker processes, any reactor."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from conftest import TESTS, assert_reaped, child_env
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gaspar_tw import ProcessPool, Producer, RemoteError, ServiceStopped
from gaspar_tw.host.service import WorkerHost
from gaspar_tw.metrics import status
from gaspar_tw.ops.cli import format_status


@pytest_twisted.ensureDeferred
async def test_a_pool_answers_submit_and_stops_its_workers():
    pool = ProcessPool("handlers:faulty", 2, pythonpath=[str(TESTS)], timeout=5)
    early = pool.submit(b"early")  # before the start: waits for a worker
    ready = pool.whenReady()
    pool.startService()
    try:
        assert await ready.addTimeout(15, reactor) is pool
        pids = pool.workerPids()
        assert len(pids) == 2
        assert (await early.addTimeout(15, reactor)).endswith(b":early")
        reply = await pool.submit(b"hello").addTimeout(15, reactor)
        pid, _, body = reply.partition(b":")
        assert body == b"hello" and int(pid) in pids
        with pytest.raises(RemoteError):
            await pool.submit(b"raise:no").addTimeout(15, reactor)
        infos = pool.workerInfo()
        assert [(i.where, i.slot) for i in infos] == [("local", 0), ("local", 1)]
        assert sum(i.served for i in infos) == 3 and all(i.ready_at for i in infos)
    finally:
        await pool.stopService()
    assert_reaped(pids)
    with pytest.raises(ServiceStopped, match="not running"):
        await pool.submit(b"late").addTimeout(5, reactor)


def test_a_pool_runs_under_the_asyncio_reactor_installed_after_the_import(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        import gaspar_tw, gaspar_tw.client, gaspar_tw.aio
        from gaspar_tw import Producer, ProcessPool
        assert "twisted.internet.reactor" not in sys.modules
        pool = ProcessPool("gaspar_tw.examples:upper", 1)  # constructing installs none either
        assert "twisted.internet.reactor" not in sys.modules
        from twisted.internet import asyncioreactor
        asyncioreactor.install()
        from twisted.internet import reactor
        from twisted.internet.defer import ensureDeferred

        async def main():
            pool.startService()
            try:
                await pool.whenReady().addTimeout(15, reactor)
                print("reply", (await pool.submit(b"abc").addTimeout(15, reactor)).decode())
                print("pids", *pool.workerPids())
            finally:
                await pool.stopService()

        def run():
            d = ensureDeferred(main())
            d.addErrback(lambda f: (print(f.getTraceback()), f)[1])
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(run)
        reactor.run()
        print("reactor", type(reactor).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert lines["reply"] == "ABC" and lines["reactor"] == "AsyncioSelectorReactor"
    assert_reaped([int(pid) for pid in lines["pids"].split()])


@pytest_twisted.ensureDeferred
async def test_status_lists_remote_workers_with_their_host():
    producer = Producer(
        "handlers:tagged", None, 1, bind="tcp://127.0.0.1:*", pythonpath=[str(TESTS)]
    )
    producer.startService()
    host = WorkerHost("handlers:tagged", producer.remote.boundAddress, 1, pythonpath=[str(TESTS)])
    host.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        for _ in range(300):  # the remote worker says hello in its own time
            if producer.remote.pids():
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert producer.remote.pids() == host.pool.pids(), "the remote worker never said hello"
        [remote_pid] = host.pool.pids()
        pids = producer.workerPids()
        shown = status(producer)
        where = {worker["pid"]: worker["where"] for worker in shown["workers"]}
        assert where[remote_pid] == socket.gethostname()
        assert list(where.values()).count("local") == 1
        assert shown["workers_alive"] == 2 and shown["workers_remote"] == 1
        assert "1/1 alive + 1 remote" in format_status(shown)
    finally:
        await host.stopService()
        await producer.stopService()
    assert_reaped(pids)


@pytest_twisted.ensureDeferred
async def test_a_handler_error_whose_str_raises_fails_that_request_only():
    pool = ProcessPool("handlers:raises_str_fails", 1, pythonpath=[str(TESTS)], timeout=20)
    pool.startService()
    try:
        await pool.whenReady().addTimeout(15, reactor)
        [pid] = pool.workerPids()
        with pytest.raises(RemoteError) as info:
            await pool.submit(b"x").addTimeout(15, reactor)
        assert info.value.type == "StrFails" and "str() failed" in info.value.message
        assert pool.workerPids() == [pid]  # the worker lived on
    finally:
        pids = set(pool.workerPids())
        await pool.stopService()
    assert_reaped(pids)
