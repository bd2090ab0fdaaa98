"""The request table's rules: admission at max-pending (unsent replies included), refusals,
payloads frozen at submit, cancellation before and after dispatch, and failAll/stop.

A real L{Dispatcher} on a L{Clock}, with fake worker links that record what they are sent.
"""

from __future__ import annotations

import pytest
from dispatch_fakes import Outcomes, answer, link
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from gaspar_tw.dispatch import Dispatcher
from gaspar_tw.dispatch.requests import REFUSAL_LOG_INTERVAL
from gaspar_tw.errors import Overloaded, ServiceStopped
from gaspar_tw.wire import messages as wire

# -- admission -------------------------------------------------------------------------------


def test_requests_past_max_pending_are_refused_with_Overloaded_and_counted():
    dispatcher = Dispatcher(Clock(), max_pending=3)
    outcomes = Outcomes()
    rids = [dispatcher.submitTo(b"x", outcomes) for _ in range(3)]
    assert rids == [1, 2, 3]
    assert dispatcher.submitTo(b"over", outcomes) == 0
    assert isinstance(outcomes.failures.pop(0), Overloaded)
    assert dispatcher.stats.refused == 1 and dispatcher.pending == 3
    dispatcher.cancel(rids[0])  # room for one again
    assert dispatcher.submitTo(b"x", outcomes) == 4 and not outcomes.failures


def test_replies_being_written_count_against_max_pending():
    dispatcher = Dispatcher(Clock(), max_pending=3)
    outcomes = Outcomes()
    dispatcher.writing += 2  # a connection holds two unsent replies
    assert dispatcher.submitTo(b"x", outcomes) == 1
    assert dispatcher.submitTo(b"x", outcomes) == 0
    assert isinstance(outcomes.failures[0], Overloaded)
    dispatcher.writing -= 2  # sent
    assert dispatcher.submitTo(b"x", outcomes) == 2
    assert dispatcher.stats.refused == 1


def test_a_flood_of_refusals_is_logged_once_per_interval():
    clock = Clock()
    dispatcher = Dispatcher(clock, max_pending=1)
    logged: list[dict] = []

    def observe(event: dict) -> None:
        if "refusing requests" in event.get("log_format", ""):
            logged.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        for _ in range(101):
            dispatcher.submitTo(b"x", Outcomes())
        assert len(logged) == 1 and logged[0]["refused"] == 1
        clock.advance(REFUSAL_LOG_INTERVAL)
        dispatcher.submitTo(b"x", Outcomes())
        assert len(logged) == 2 and logged[1]["refused"] == 101
    finally:
        globalLogPublisher.removeObserver(observe)


def test_a_dispatcher_not_accepting_refuses_with_ServiceStopped():
    dispatcher = Dispatcher(Clock())
    outcomes = Outcomes()
    dispatcher.stopAccepting()
    assert not dispatcher.accepting
    assert dispatcher.submitTo(b"x", outcomes) == 0
    assert isinstance(outcomes.failures[0], ServiceStopped)
    assert dispatcher.stats.refused == 1 and dispatcher.pending == 0
    dispatcher.accepting = True  # as a producer starting again does
    assert dispatcher.submitTo(b"x", outcomes) == 1


def test_a_payload_that_could_change_while_it_waits_is_copied_at_submit():
    clock = Clock()
    dispatcher = Dispatcher(clock)
    buffer = bytearray(b"before")
    dispatcher.submitTo(buffer, Outcomes())
    dispatcher.submitTo(memoryview(b"frozen"), Outcomes())  # a view of bytes cannot change
    buffer[:] = b"after!"
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    clock.advance(0)
    assert sent.payloads == [b"before", b"frozen"]


# -- cancelling ------------------------------------------------------------------------------


def test_a_request_cancelled_before_it_is_sent_never_reaches_a_worker():
    clock = Clock()
    dispatcher = Dispatcher(clock)
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    outcomes = Outcomes()
    first, second = dispatcher.submitTo(b"x", outcomes), dispatcher.submitTo(b"x", outcomes)
    dispatcher.cancel(first)
    dispatcher.cancel(first)  # twice is once
    assert dispatcher.queued == 1 and dispatcher.pending == 1
    clock.advance(0)
    assert sent.batches == [[second]] and not sent.cancels
    answer(dispatcher, worker)
    assert list(outcomes.replies) == [second] and not outcomes.failures
    assert dispatcher.stats.cancelled == 1


def test_cancelling_a_request_a_worker_holds_tells_the_worker_unless_it_is_running():
    clock = Clock()
    dispatcher = Dispatcher(clock)
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    ids = [dispatcher.submitTo(b"x", Outcomes()) for _ in range(4)]
    clock.advance(0)
    for rid in ids:
        dispatcher.cancel(rid)
    assert sent.cancels == [ids[1]]  # the first is running; the last two never left the queue
    assert dispatcher.queued == 0 and dispatcher.pending == 0
    # The worker answers the running one and reports the cancelled one skipped.
    dispatcher.repliesReceived(worker.token, ids[:2], bytes([wire.OK, wire.SKIPPED]), [b"", b""])
    assert not worker.outstanding and dispatcher.stats.cancelled == 4


def test_a_skipped_request_is_neither_delivered_nor_served_nor_in_the_handler_time():
    clock = Clock()
    dispatcher = Dispatcher(clock)
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    dispatcher.stats.workerReady(worker.token, 0, worker.pid)
    outcomes = Outcomes()
    ids = [dispatcher.submitTo(b"x", outcomes) for _ in range(2)]
    clock.advance(0)
    dispatcher.cancel(ids[1])
    # One request ran for 10 ms, the other was skipped: the handler takes 10 ms, not 5.
    statuses = bytes([wire.OK, wire.SKIPPED])
    dispatcher.repliesReceived(worker.token, ids, statuses, [b"ran", b""], busy=0.01)
    assert dispatcher.handler_time == pytest.approx(0.01)
    assert dispatcher.stats.workers[worker.token].served == 1
    assert outcomes.replies == {ids[0]: b"ran"} and not outcomes.failures
    assert dispatcher.stats.ok == 1 and dispatcher.stats.cancelled == 1


def test_cancelling_the_deferred_of_submit_cancels_its_request():
    clock = Clock()
    dispatcher = Dispatcher(clock)
    d = dispatcher.submit(b"x")
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert failures and failures[0].check(CancelledError)
    assert dispatcher.pending == 0 and dispatcher.queued == 0
    assert dispatcher.stats.cancelled == 1


# -- the end ---------------------------------------------------------------------------------


def test_failAll_fails_every_pending_request_and_stop_leaves_nothing_on_the_clock():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=5)
    dispatcher.start()
    (a, _), (b, _) = link(1), link(2)
    dispatcher.workerReady(a)
    dispatcher.workerReady(b)
    outcomes = Outcomes()
    rids = [dispatcher.submitTo(b"x", outcomes) for _ in range(4)]
    clock.advance(0)  # a and b hold two each
    dispatcher.workerLost(a.token)  # a's two wait to be retried alone
    rids += [dispatcher.submitTo(b"x", outcomes) for _ in range(2)]  # these two are queued
    assert clock.getDelayedCalls()  # a flush and the sweep
    dispatcher.stopAccepting()
    dispatcher.stop()
    assert clock.getDelayedCalls() == []
    held = list(b.outstanding)
    reason = ServiceStopped("stopped")
    dispatcher.failAll(reason)
    assert sorted(outcomes.failures) == rids
    assert all(failure is reason for failure in outcomes.failures.values())
    assert dispatcher.pending == 0 and dispatcher.queued == 0 and not b.outstanding
    assert dispatcher.stats.error == 6
    dispatcher.repliesReceived(b.token, held, bytes(2), [b"", b""])  # too late: dropped
    assert not outcomes.replies and clock.getDelayedCalls() == []
