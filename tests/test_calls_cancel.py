"""Cancelling pool.call()'s Deferred (so addTimeout), and max_call_bytes, with real workers."""

from __future__ import annotations

import call_targets as targets
import pytest
import pytest_twisted
from conftest import TESTS, LogLines, assert_reaped, pid_alive
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.task import deferLater

from gaspar_tw import ProcessPool
from gaspar_tw.config import Config
from gaspar_tw.options import Options

WAIT = 10
MIB = 1024 * 1024


@pytest_twisted.async_yield_fixture
async def pool():
    # handlers:slow sleeps for the seconds in a bytes request; calls ignore the handler.
    # No --timeout within a test's waits: only a cancel ends a worker here.
    pool = ProcessPool("handlers:slow", 2, pythonpath=[str(TESTS)], timeout=60, max_call_bytes=MIB)
    pool.startService()
    await pool.whenReady().addTimeout(WAIT, reactor)
    seen = set(pool.workerPids())
    yield pool, seen
    seen.update(pool.workerPids())
    await pool.stopService()
    assert_reaped(seen)


def call(pool, fn, *args, **kwargs):
    return pool.call(fn, *args, **kwargs).addTimeout(WAIT, reactor)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, f"not so after {timeout}s"
        await deferLater(reactor, 0.01, lambda: None)


async def started(pool, path, gate, seconds: float = WAIT):
    """A call of note_pid_and_wait, and the pid of the worker once it runs it."""
    d = pool.call(targets.note_pid_and_wait, str(path), str(gate), seconds)
    await until(path.exists)
    return d, int(path.read_text())


def held_by(pool, pid: int) -> set[int]:
    """The ids of the requests the worker C{pid} holds."""
    return {
        rid
        for link in pool.dispatcher._links.values()
        if link.pid == pid
        for rid in link.outstanding
    }


@pytest_twisted.ensureDeferred
async def test_a_call_cancelled_before_it_is_sent_never_runs(pool, tmp_path):
    pool, _ = pool
    cancelled, control = tmp_path / "cancelled", tmp_path / "control"
    d = pool.call(targets.create_file, str(cancelled))
    d.cancel()  # in the turn it was queued: it was not sent yet
    with pytest.raises(CancelledError):
        await d
    await call(pool, targets.create_file, str(control))
    await gatherResults([call(pool, targets.identity, n) for n in range(4)])
    await deferLater(reactor, 0.2, lambda: None)
    assert control.exists() and not cancelled.exists()
    assert pool.stats.cancelled == 1 and pool.dispatcher.pending == 0


@pytest_twisted.ensureDeferred
async def test_cancelling_a_running_call_replaces_that_worker_only(pool, tmp_path):
    pool, pids = pool
    running, victim = await started(pool, tmp_path / "running", tmp_path / "never")
    (other,) = pids - {victim}
    # The idle worker takes two (its window until the call time is known), the third waits
    # behind the running call, on its worker.
    behind = [pool.call(targets.pid).addTimeout(WAIT, reactor) for _ in range(3)]
    await until(lambda: held_by(pool, victim) & {d.rid for d in behind})
    with LogLines() as logged:
        running.cancel()
        with pytest.raises(CancelledError):
            await running
        assert victim not in await gatherResults(behind)
        await until(lambda: not pid_alive(victim))
        await pool.whenReady().addTimeout(WAIT, reactor)
    now = set(pool.workerPids())
    assert len(now) == 2 and other in now and victim not in now
    (replacement,) = now - {other}
    # The replacement serves calls: with the other worker busy, a call goes to it.
    gate = tmp_path / "gate"
    busy, busyPid = await started(pool, tmp_path / "busy", gate)
    quick = await call(pool, targets.pid)
    gate.touch()
    assert await busy.addTimeout(WAIT, reactor) == busyPid
    assert {busyPid, quick} == {other, replacement}
    killed = [line for line in logged.lines if f"killing worker pid {victim}:" in line]
    assert len(killed) == 1 and "cancelled" in killed[0] and "1 requests" in killed[0]
    assert not any("given up on while" in line for line in logged.lines)  # no stack dump
    assert pool.stats.error == 0


@pytest_twisted.ensureDeferred
async def test_cancelling_a_running_handler_request_kills_no_worker(pool):
    pool, pids = pool
    d = pool.submit(b"0.5")
    await deferLater(reactor, 0.2, lambda: None)  # the handler is running it
    assert set().union(*(held_by(pool, pid) for pid in pids)) == {d.rid}
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    assert await pool.submit(b"0").addTimeout(WAIT, reactor) == b"0"
    await deferLater(reactor, 0.5, lambda: None)  # past the end of the cancelled request
    assert set(pool.workerPids()) == pids and all(pid_alive(pid) for pid in pids)


@pytest_twisted.ensureDeferred
async def test_add_timeout_is_a_per_call_timeout(pool, tmp_path):
    pool, pids = pool
    slow = pool.call(targets.note_pid_and_wait, str(tmp_path / "slow"), str(tmp_path / "never"), 60)
    began = reactor.seconds()
    slow.addTimeout(0.5, reactor)
    others = [call(pool, targets.identity, n) for n in range(10)]
    with pytest.raises(defer.TimeoutError):
        await slow
    assert 0.5 <= reactor.seconds() - began < 5
    assert await gatherResults(others) == list(range(10))  # one was behind the slow call
    assert reactor.seconds() - began < 5
    victim = int((tmp_path / "slow").read_text())
    await until(lambda: not pid_alive(victim))
    await pool.whenReady().addTimeout(WAIT, reactor)
    now = set(pool.workerPids())
    assert len(now) == 2 and victim not in now and now & pids == pids - {victim}
    assert await call(pool, targets.identity, "after") == "after"


@pytest_twisted.ensureDeferred
async def test_cancelling_a_call_on_a_retiring_worker_does_not_replace_it(pool, tmp_path):
    pool, pids = pool
    gate = tmp_path / "gate"
    first, firstPid = await started(pool, tmp_path / "first", gate)
    second, secondPid = await started(pool, tmp_path / "second", gate)
    assert {firstPid, secondPid} == pids
    assert pool.removeWorker() == 1  # retires one of the two (both are busy)
    retiring = next(p.pid for p in pool.local.processes.values() if p.retiring)
    d, other = (first, secondPid) if retiring == firstPid else (second, firstPid)
    d.cancel()
    await until(lambda: not pid_alive(retiring))
    await deferLater(reactor, 0.3, lambda: None)  # a replacement would have been spawned
    assert pool.workerPids() == [other] and pool.workers == 1
    gate.touch()
    await (second if d is first else first).addTimeout(WAIT, reactor)
    assert await call(pool, targets.pid) == other


@pytest_twisted.ensureDeferred
async def test_max_call_bytes_bounds_a_call_and_its_result(pool):
    pool, pids = pool
    d = pool.call(targets.length, b"a" * MIB)
    assert d.called  # failed in the caller: no worker saw it
    with pytest.raises(
        ValueError,
        match=r"^the call of call_targets\.length is 1,048,\d{3} bytes pickled, more than"
        r" max_call_bytes \(1,048,576\); pass large data another way",
    ):
        await d
    assert await call(pool, targets.length, b"a" * (MIB - 1024)) == MIB - 1024
    # A result over the limit fails its call in the worker (never sent); the worker lives on.
    with pytest.raises(
        ValueError,
        match=r"^the result of call_targets\.bytes_of_size is 1,048,\d{3} bytes pickled,"
        r" more than max_call_bytes \(1,048,576\)",
    ):
        await call(pool, targets.bytes_of_size, MIB)
    assert len(await call(pool, targets.bytes_of_size, MIB - 1024)) == MIB - 1024
    assert set(pool.workerPids()) == pids
    # The producer checks again as a result arrives (a remote worker is not told the limit).
    pool.dispatcher.max_call_bytes = 1000
    with pytest.raises(ValueError, match=r"^a call's result is 2,0\d\d bytes pickled"):
        await call(pool, targets.bytes_of_size, 2000)
    assert await call(pool, targets.identity, 7) == 7


def test_a_bad_max_call_bytes_is_one_line():
    assert Config().max_call_bytes == 1024**3
    with pytest.raises(ValueError, match=r"^max_call_bytes must be at least 1, not 0$"):
        ProcessPool("gaspar_tw.examples:upper", 1, max_call_bytes=0)
    with pytest.raises(ValueError, match=r"^max_call_bytes must be a whole number, not '1G'$"):
        Config(max_call_bytes="1G")
    options = Options()
    options.parseOptions(["--handler", "mod:fn", "--max-call-bytes", "1048576"])
    assert options.config.max_call_bytes == MIB
    with pytest.raises(SystemExit) as exited:
        Options().parseOptions(["--handler", "mod:fn", "--max-call-bytes", "1G"])
    assert exited.value.code == "twistd gaspar: --max-call-bytes must be a whole number, not '1G'"
