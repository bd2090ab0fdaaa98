"""Reload, recycling and resize of a ProcessPool's workers, under load: real processes."""

from __future__ import annotations

import sys
import textwrap
from collections import Counter

import pytest
import pytest_twisted
from conftest import TESTS, LogLines, assert_reaped
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater

from gaspar_tw import ProcessPool
from gaspar_tw.options import Options

HANDLER = """
import os
VERSION = {version!r}
RAN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ran.log")

def handle(message):
    with open(RAN, "ab") as ran:  # one line per request run: shows a request run twice
        ran.write(message + b"\\n")
    return b"%s:%d:%s" % (VERSION.encode(), os.getpid(), message)
"""


@pytest.fixture
def deployed(tmp_path, monkeypatch):
    """A directory on the path for handler modules written by the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("reloadable", "leaky"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def deploy(directory, version: str, broken: bool = False) -> None:
    text = HANDLER.format(version=version) + ("\ndef broken(:\n" if broken else "")
    (directory / "reloadable.py").write_text(textwrap.dedent(text))
    for cached in directory.glob("__pycache__/reloadable*"):
        cached.unlink()


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def until(predicate, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await sleep(0.02)
    assert predicate(), "timed out waiting"


class Load:
    """C{concurrency} clients submitting numbered requests until told to stop."""

    def __init__(self, pool: ProcessPool, concurrency: int = 8, payload=b"%d") -> None:
        self.pool = pool
        self.replies: list[bytes] = []
        self.failures: list[Exception] = []
        self.stopAfter: int | None = None
        self._next = 0
        self._payload = payload
        self.done = DeferredList([ensureDeferred(self._client()) for _ in range(concurrency)])

    async def _client(self) -> None:
        while self.stopAfter is None or self._next < self.stopAfter:
            n, self._next = self._next, self._next + 1
            try:
                payload = self._payload % n if b"%" in self._payload else self._payload
                reply = await self.pool.submit(payload).addTimeout(20, reactor)
                self.replies.append(reply)
            except Exception as e:
                self.failures.append(e)
                return  # (a failure may come at once: don't spin)

    def finish(self, more: int = 0) -> None:
        self.stopAfter = self._next + more


def pids_of(replies) -> set[int]:
    return {int(reply.split(b":")[1]) for reply in replies}


@pytest_twisted.ensureDeferred
async def test_two_reloads_under_load_replace_every_worker_and_lose_or_repeat_nothing(deployed):
    tmp_path = deployed
    deploy(tmp_path, "v1")
    pool = ProcessPool("reloadable:handle", 2, pythonpath=[str(tmp_path)], timeout=10)
    pool.startService()
    try:
        await pool.whenReady().addTimeout(15, reactor)
        first = set(pool.workerPids())
        load = Load(pool)
        await until(lambda: len(load.replies) >= 100)
        assert pool.reload()
        await until(lambda: pool.stats.reloads["ok"] == 1)
        deploy(tmp_path, "v2")
        assert pool.reload()
        await until(lambda: pool.stats.reloads["ok"] == 2)
        load.finish(more=50)
        await load.done.addTimeout(20, reactor)
        after = set(pool.workerPids())
        last = await pool.submit(b"last").addTimeout(10, reactor)
    finally:
        await pool.stopService()
    assert not load.failures
    sent = load.stopAfter
    assert sent >= 150 and len(load.replies) == sent
    ran = (tmp_path / "ran.log").read_bytes().split()
    assert sorted(ran) == sorted([b"%d" % n for n in range(sent)] + [b"last"])  # each once
    assert len(after) == 2 and not after & first
    assert last.startswith(b"v2:") and int(last.split(b":")[1]) in after
    assert pids_of(load.replies[-10:]) <= after
    assert pool.stats.recycles["reload"] == 4 and pool.stats.reloads == {"ok": 2, "failed": 0}
    assert_reaped(first | after)


@pytest_twisted.ensureDeferred
async def test_a_reload_with_a_broken_handler_keeps_the_old_workers(deployed):
    tmp_path = deployed
    deploy(tmp_path, "v1")
    pool = ProcessPool("reloadable:handle", 2, pythonpath=[str(tmp_path)], timeout=10)
    pool.startService()
    try:
        await pool.whenReady().addTimeout(15, reactor)
        before = set(pool.workerPids())
        deploy(tmp_path, "v2", broken=True)
        with LogLines() as log:
            assert pool.reload()
            await until(lambda: pool.stats.reloads["failed"] == 1)
        reply = await pool.submit(b"after").addTimeout(10, reactor)
        assert set(pool.workerPids()) == before
    finally:
        await pool.stopService()
    assert reply.startswith(b"v1:") and int(reply.split(b":")[1]) in before
    failed = [line for line in log.lines if "reload failed" in line]
    assert len(failed) == 1 and "SyntaxError" in failed[0] and "old workers keep" in failed[0]
    assert pool.stats.reloads == {"ok": 0, "failed": 1}
    assert pool.stats.recycles["reload"] == 0
    assert_reaped(before)


@pytest_twisted.ensureDeferred
async def test_max_requests_with_jitter_rotates_workers_under_load():
    pool = ProcessPool(
        "handlers:faulty",
        2,
        pythonpath=[str(TESTS)],
        max_requests=20,
        max_requests_jitter=5,
        timeout=10,
    )
    pool.startService()
    try:
        await pool.whenReady().addTimeout(15, reactor)
        first = set(pool.workerPids())
        load = Load(pool, concurrency=4, payload=b"sleep:0.005")
        await until(lambda: pool.stats.recycles["max_requests"] >= 3)
        load.finish()
        await load.done.addTimeout(20, reactor)
        now = set(pool.workerPids())
    finally:
        await pool.stopService()
    assert not load.failures and len(load.replies) == load.stopAfter
    assert not first <= now  # (a recycle may be in progress: a third pid, starting or leaving)
    served = Counter(int(reply.split(b":")[0]) for reply in load.replies)
    assert len(served) >= 4  # the first two, and at least two replacements that served
    assert all(served[pid] >= 20 for pid in first - now)  # none retired before its N


LEAKY = """
import os
import time
kept = []

def handle(message):
    kept.append(bytearray(1024 * 1024))  # 1 MB more every request, never freed
    time.sleep(0.02)
    return b"%d" % os.getpid()
"""


@pytest_twisted.ensureDeferred
async def test_a_leaking_worker_over_max_memory_is_recycled_before_the_hard_limit(deployed):
    tmp_path = deployed
    (tmp_path / "leaky.py").write_text(LEAKY)
    pool = ProcessPool(
        "leaky:handle",
        1,
        pythonpath=[str(tmp_path)],
        max_memory=60,
        max_memory_hard=300,
        timeout=10,
    )
    pool.startService()
    try:
        await pool.whenReady().addTimeout(15, reactor)
        first = set(pool.workerPids())
        load = Load(pool, concurrency=2)
        await until(lambda: pool.stats.recycles["max_memory"] >= 2)
        load.finish()
        await load.done.addTimeout(20, reactor)
        now = set(pool.workerPids())
    finally:
        await pool.stopService()
    assert not load.failures and len(load.replies) == load.stopAfter
    assert pool.stats.recycles["hard_memory"] == 0
    assert not now & first  # (a recycle may be in progress: two pids)
    assert len(pids_of([b"x:" + r for r in load.replies])) >= 2


@pytest_twisted.ensureDeferred
async def test_a_worker_over_max_memory_hard_is_killed_and_its_request_retried(deployed):
    tmp_path = deployed
    (tmp_path / "leaky.py").write_text(LEAKY)
    pool = ProcessPool(
        "leaky:handle", 1, pythonpath=[str(tmp_path)], max_memory_hard=60, timeout=10
    )
    pool.startService()
    try:
        await pool.whenReady().addTimeout(15, reactor)
        load = Load(pool, concurrency=1)
        await until(lambda: pool.stats.recycles["hard_memory"] >= 1)
        load.finish()
        await load.done.addTimeout(20, reactor)
    finally:
        await pool.stopService()
    assert not load.failures and len(load.replies) == load.stopAfter
    assert pool.stats.recycles["max_memory"] == 0


@pytest_twisted.ensureDeferred
async def test_adding_and_removing_workers_never_goes_below_one():
    pool = ProcessPool("handlers:tagged", 1, pythonpath=[str(TESTS)], timeout=10)
    pool.startService()
    try:
        await pool.whenReady().addTimeout(15, reactor)
        first = pool.workerPids()
        assert pool.addWorker() == 2
        await pool.whenReady().addTimeout(15, reactor)
        assert len(pool.workerPids()) == 2
        assert pool.removeWorker() == 1
        await until(lambda: len(pool.workerPids()) == 1)
        assert pool.removeWorker() == 1  # never below one
        reply = await pool.submit(b"x").addTimeout(10, reactor)
        left = pool.workerPids()
    finally:
        await pool.stopService()
    assert int(reply.split(b":")[0]) in left
    assert pool.stats.recycles["resize"] == 1 and pool.workers == 1
    assert_reaped(first + left)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-requests", "-1"), "--max-requests must be at least 0, not -1"),
        (("--max-requests", "many"), "--max-requests must be a whole number, not 'many'"),
        (("--max-requests-jitter", "-5"), "--max-requests-jitter must be at least 0, not -5"),
        (("--max-memory", "1.5"), "--max-memory must be a whole number, not '1.5'"),
        (("--max-memory-hard", "-1"), "--max-memory-hard must be at least 0, not -1"),
        (
            ("--max-memory", "200", "--max-memory-hard", "100"),
            "--max-memory-hard must be above --max-memory (200 MB), not 100",
        ),
    ],
)
def test_a_bad_recycling_flag_is_one_line(args, message):
    options = Options()
    with pytest.raises(SystemExit) as exited:
        options.parseOptions(["--handler", "mod:fn", *args])
    assert exited.value.code == f"twistd gaspar: {message}"


def test_a_bad_recycling_keyword_is_one_line():
    with pytest.raises(ValueError, match="^max_requests must be at least 0, not -1$"):
        ProcessPool("gaspar_tw.examples:echo", 1, max_requests=-1)
    with pytest.raises(ValueError, match=r"^max_memory_hard must be above max_memory \(9 MB\)"):
        ProcessPool("gaspar_tw.examples:echo", 1, max_memory=9, max_memory_hard=9)
