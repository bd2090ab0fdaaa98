"""Delivery of workers' answers: replies, handler errors as RemoteError, the calls run once
per batch (afterReplies), wire replies messages, and replies from a worker given up on.

A real L{Dispatcher} on a L{Clock}, with fake worker links that record what they are sent.
"""

from __future__ import annotations

import pytest
from dispatch_fakes import Outcomes, link, tick
from twisted.internet.task import Clock

from gaspar_tw.dispatch import Dispatcher
from gaspar_tw.errors import RemoteError, RequestTimeout
from gaspar_tw.wire import messages as wire
from gaspar_tw.wire.failures import encode_error


def serving() -> tuple[Clock, Dispatcher, object, object]:
    clock = Clock()
    dispatcher = Dispatcher(clock)
    dispatcher.handlerTime(1, 0.00001)
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    dispatcher.stats.workerReady(worker.token, 0, worker.pid)
    return clock, dispatcher, worker, sent


def test_a_handler_error_is_delivered_as_a_RemoteError_with_its_traceback():
    clock, dispatcher, worker, _ = serving()
    outcomes = Outcomes()
    rid = dispatcher.submitTo(b"x", outcomes)
    clock.advance(0)
    error = encode_error(ValueError("bad input"), "Traceback: line 1")
    dispatcher.repliesReceived(worker.token, [rid], bytes([wire.ERROR]), [error])
    failure = outcomes.failures[rid]
    assert isinstance(failure, RemoteError)
    assert (failure.type, failure.message, failure.traceback) == (
        "ValueError",
        "bad input",
        "Traceback: line 1",
    )
    assert dispatcher.stats.error == 1 and dispatcher.stats.ok == 0


def test_calls_registered_with_afterReplies_run_once_the_whole_batch_is_delivered():
    clock, dispatcher, worker, _ = serving()
    events: list[str] = []

    class Writer:
        """Writes its replies once per batch, as the framed protocol does."""

        due = False

        def replyReceived(self, rid: int, reply: bytes) -> None:
            events.append(f"reply {rid}")
            if not self.due:
                self.due = True
                dispatcher.afterReplies(self.write)

        def requestFailed(self, rid: int, reason: Exception) -> None:
            raise AssertionError(reason)

        def write(self) -> None:
            self.due = False
            events.append("write")

    writer = Writer()
    rids = [dispatcher.submitTo(b"x", writer) for _ in range(3)]
    clock.advance(0)
    dispatcher.repliesReceived(worker.token, rids, bytes(3), [b""] * 3)
    assert events == ["reply 1", "reply 2", "reply 3", "write"]
    rid = dispatcher.submitTo(b"x", writer)
    clock.advance(0)
    dispatcher.repliesReceived(worker.token, [rid], bytes(1), [b""])
    assert events[4:] == ["reply 4", "write"]


def test_a_replies_message_is_decoded_and_delivered_with_its_handler_time():
    clock, dispatcher, worker, _ = serving()
    outcomes = Outcomes()
    rids = [dispatcher.submitTo(b"x", outcomes) for _ in range(2)]
    clock.advance(0)
    frames = wire.encode_replies(worker.token, rids, bytes(2), [b"one", b"two"], 0.5)
    dispatcher.repliesMessage(worker.token, frames)
    assert {rid: bytes(reply) for rid, reply in outcomes.replies.items()} == {
        rids[0]: b"one",
        rids[1]: b"two",
    }
    assert dispatcher.handler_time == pytest.approx(0.00001 + (0.25 - 0.00001) * 0.2)
    assert dispatcher.stats.workers[worker.token].served == 2
    assert sum(dispatcher.stats.latency_counts) == 2 and not worker.outstanding


def test_a_late_reply_from_a_worker_given_up_on_still_answers_its_request():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=1.0)
    dispatcher.start()
    stuck, _ = link(1)
    dispatcher.workerReady(stuck)
    outcomes = Outcomes()
    first, behind = dispatcher.submitTo(b"x", outcomes), dispatcher.submitTo(b"x", outcomes)
    clock.advance(0)
    tick(clock, 1.3)  # abandoned: first failed, behind back in the queue
    assert isinstance(outcomes.failures[first], RequestTimeout) and dispatcher.queued == 1
    dispatcher.repliesReceived(stuck.token, [first, behind], bytes(2), [b"late", b"ok"])
    assert outcomes.replies == {behind: b"ok"}  # first was answered already: dropped
    assert dispatcher.queued == 0 and dispatcher.pending == 0
    other, other_sent = link(2)
    dispatcher.workerReady(other)
    clock.advance(0)
    assert not other_sent.batches  # it is not run a second time
    dispatcher.stop()
