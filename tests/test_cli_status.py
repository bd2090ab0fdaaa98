"""``gaspar-tw status`` of a producer whose workers are all remote, and the version in /status."""

from __future__ import annotations

import pytest_twisted
from conftest import TESTS, assert_reaped
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gaspar_tw import Producer
from gaspar_tw.host.service import WorkerHost
from gaspar_tw.metrics import status
from gaspar_tw.ops.cli import format_status
from gaspar_tw.version import version


@pytest_twisted.ensureDeferred
async def test_status_of_a_producer_with_only_remote_workers():
    producer = Producer(
        "handlers:tagged", None, 0, bind="tcp://127.0.0.1:*", pythonpath=[str(TESTS)]
    )
    producer.startService()
    host = WorkerHost("handlers:tagged", producer.remote.boundAddress, 2, pythonpath=[str(TESTS)])
    host.startService()
    try:
        for _ in range(300):  # the remote workers say hello in their own time
            if len(producer.remote.pids()) == 2:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert sorted(producer.remote.pids()) == sorted(host.pool.pids()), "no hello from them"
        pids = host.pool.pids()
        shown = status(producer)
        assert shown["version"] == version()
        assert shown["workers_configured"] == 0 and shown["workers_remote"] == 2
        lines = format_status(shown).splitlines()
        assert lines[0].startswith(f"gaspar-tw {version()} producer pid ")
        assert (
            lines[1].startswith("up 0m 0")
            and "; workers 2 remote (none local), 0 restarts;" in lines[1]
        )
        assert [line.split()[1] for line in lines[-2:]] == ["-", "-"]  # no slot: remote
    finally:
        await host.stopService()
        await producer.stopService()
    assert_reaped(pids)
