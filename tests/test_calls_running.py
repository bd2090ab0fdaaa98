"""Which request a local worker is running, as it publishes it: --timeout and cancelling a
call act on that one, not on a finished request whose reply the worker still holds."""

from __future__ import annotations

import os

import call_targets
import hazard_targets as targets
import pytest
import pytest_twisted
from conftest import TESTS, assert_reaped, pid_alive
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from gaspar_tw import ProcessPool
from gaspar_tw.dispatch import Dispatcher, WorkerLink
from gaspar_tw.dispatch.scheduler import RECHECK_CANCELLED_SECONDS
from gaspar_tw.errors import RequestTimeout
from gaspar_tw.wire import messages as wire
from gaspar_tw.wire.calls import CallFrames

WAIT = 15
SPIN = 200_000_000  # several seconds of sum() in one C call: longer than any wait here


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


async def until(predicate, timeout: float = WAIT) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, f"not so after {timeout}s"
        await sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def running_files(pool) -> list[str]:
    return sorted(name for name in os.listdir(pool.hub.directory) if name.startswith("running-"))


@pytest_twisted.ensureDeferred
async def test_the_pool_timeout_fails_the_running_call_not_the_finished_one_held_before_it(
    tmp_path,
):
    pool = ProcessPool(workers=1, pythonpath=[str(TESTS)], timeout=1)
    pool.startService()
    pids = set()
    try:
        await pool.whenReady().addTimeout(WAIT, reactor)
        pids.update(pool.workerPids())
        (victim,) = pids
        side = tmp_path / "ran"
        await pool.call(targets.pid)  # a warm worker: the next two travel in one batch
        first = pool.call(targets.pid)  # finishes at once; its reply is held ...
        stuck = pool.call(targets.mark_then_spin, str(side), SPIN)  # ... behind one C call
        with pytest.raises(RequestTimeout):
            await stuck.addTimeout(WAIT, reactor)
        # The finished call's reply was lost with its worker: it ran again, on the new one.
        assert await first.addTimeout(WAIT, reactor) not in (victim, None)
        await sleep(0.3)
        assert side.read_text().split() == [str(victim)], "the stuck call was run again"
        assert not pid_alive(victim)
    finally:
        pids.update(pool.workerPids())
        await pool.stopService()
        assert_reaped(pids)


@pytest_twisted.ensureDeferred
async def test_each_worker_publishes_its_running_call_in_a_file_removed_with_it(tmp_path):
    pool = ProcessPool(workers=1, pythonpath=[str(TESTS)], timeout=60)
    pool.startService()
    pids = set()
    try:
        await pool.whenReady().addTimeout(WAIT, reactor)
        pids.update(pool.workerPids())
        await pool.call(call_targets.pid)
        before = open_fds()
        for n in range(4):  # each cancel kills the worker running the call; it is replaced
            (link,) = pool.dispatcher._links.values()
            assert running_files(pool) == [f"running-{link.token}"]
            path, gate = tmp_path / f"running{n}", tmp_path / "never"
            d = pool.call(call_targets.note_pid_and_wait, str(path), str(gate), WAIT)
            d.addErrback(lambda f: None)
            await until(path.exists)
            assert link.running() == d.rid
            d.cancel()
            await until(lambda link=link: not pid_alive(link.pid))
            await pool.whenReady().addTimeout(WAIT, reactor)
            pids.update(pool.workerPids())
            assert await pool.call(call_targets.pid).addTimeout(WAIT, reactor) != link.pid
        (link,) = pool.dispatcher._links.values()
        assert link.running() == 0  # between calls
        assert running_files(pool) == [f"running-{link.token}"]
        assert open_fds() == before
        directory = pool.hub.directory
    finally:
        pids.update(pool.workerPids())
        await pool.stopService()
        assert_reaped(pids)
    assert not os.path.exists(directory)


class Far:
    """The far end of a local link on a L{Clock}: what it was sent, and the request it says
    it is running (C{running}, read by the dispatcher)."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.cancels: list[int] = []
        self.killed = 0
        self.running = 0

    def send(self, messages: list[list]) -> None:
        for frames in messages:
            if len(frames) == 1 and frames[0][:1] == wire.CANCEL:
                self.cancels += wire.decode_cancel(frames[0])
            else:
                self.sent += wire.decode_mixed_work(frames)[0]

    def kill(self, stack: bool = True) -> None:
        self.killed += 1


def local_worker() -> tuple[Clock, Dispatcher, WorkerLink, Far]:
    clock = Clock()
    dispatcher = Dispatcher(clock, window=8, timeout=None)
    dispatcher.handler_time = 0.0  # known and short: a whole window at once
    far = Far()
    link = WorkerLink(1, 1001, far.send, far.kill, local=True, running=lambda: far.running)
    dispatcher.workerReady(link)
    return clock, dispatcher, link, far


def test_a_cancelled_call_its_worker_starts_after_all_gets_its_worker_killed():
    clock, dispatcher, link, far = local_worker()
    calls = [dispatcher.submitCall(CallFrames([b"call"])) for _ in range(3)]
    for d in calls:
        d.addErrback(lambda f: None)
    clock.advance(0)
    first, cancelled, behind = (d.rid for d in calls)
    assert far.sent == [first, cancelled, behind]
    far.running = first
    calls[1].cancel()  # not running: told to skip it, and checked on
    assert far.cancels == [cancelled] and not far.killed
    clock.advance(RECHECK_CANCELLED_SECONDS)
    assert not far.killed  # still on the first
    far.running = cancelled  # it had started before it read the cancel
    clock.advance(RECHECK_CANCELLED_SECONDS)
    assert far.killed == 1 and dispatcher.workerCount == 0
    assert dispatcher.queued == 2  # the first (finished, its reply lost) and the one behind
    assert not clock.getDelayedCalls()  # nothing left to check on


def test_a_cancelled_call_its_worker_skips_is_checked_on_no_more():
    clock, dispatcher, link, far = local_worker()
    calls = [dispatcher.submitCall(CallFrames([b"call"])) for _ in range(2)]
    calls[1].addErrback(lambda f: None)
    clock.advance(0)
    far.running = calls[0].rid
    calls[1].cancel()
    clock.advance(RECHECK_CANCELLED_SECONDS)
    dispatcher.repliesReceived(1, far.sent, bytes([wire.OK, wire.SKIPPED]), [b"", b""])
    far.running = calls[1].rid  # (an id it will never run again: never read now)
    clock.advance(RECHECK_CANCELLED_SECONDS)
    assert not far.killed and dispatcher.workerCount == 1
    assert not clock.getDelayedCalls()
