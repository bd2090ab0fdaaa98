"""Delivery of each request's outcome to its receiver, exactly once, counted in the stats."""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gaspar_tw.dispatch.requests import Request
from gaspar_tw.errors import RemoteError
from gaspar_tw.stats import Stats, latency_bucket
from gaspar_tw.wire.calls import CALL_RESULT, too_large, unpack_outcome
from gaspar_tw.wire.failures import decode_error
from gaspar_tw.wire.messages import OK

log = Logger()


class IReplyReceiver(Interface):
    """Where L{Dispatcher.submitTo} delivers the outcome of a request, exactly once.

    The protocols implement it themselves: a TCP request then costs no Deferred, whose
    creation, callbacks and firing would be a noticeable share of the producer's work per
    request.
    """

    def replyReceived(rid: int, reply: bytes) -> None:
        """The handler returned C{reply} for request C{rid}."""

    def requestFailed(rid: int, reason: Exception) -> None:
        """Request C{rid} failed: one of the errors L{Dispatcher.submit} documents."""


@implementer(IReplyReceiver)
class ReplyDeferred(Deferred):
    """The Deferred L{Dispatcher.submit} returns, as its own receiver."""

    rid = 0

    def replyReceived(self, rid: int, reply: bytes) -> None:
        self.callback(reply)

    def requestFailed(self, rid: int, reason: Exception) -> None:
        self.errback(reason)


def fail(request: Request, error: Exception) -> None:
    """Tell C{request}'s receiver it failed with C{error} (the caller counts the outcome)."""
    try:
        request.receiver.requestFailed(request.rid, error)
    except Exception:
        log.failure("delivering the failure of request {rid} failed", rid=request.rid)


class Delivery:
    """Hands workers' answers to the receivers of the requests in C{requests}.

    Replies come in batches (one worker message each); the calls registered with
    L{afterReplies} while a batch is delivered run once it is all delivered. A call's outcome
    larger than C{max_call_bytes} (pickled) fails the call, unread.
    """

    def __init__(self, requests: dict[int, Request], stats: Stats, max_call_bytes: int) -> None:
        self._requests = requests
        self.stats = stats
        self.max_call_bytes = max_call_bytes
        self._afterReplies: list[Callable[[], None]] = []

    def replies(self, outstanding: dict, ids, statuses: bytes, payloads) -> None:
        """Deliver a batch a worker answered: the ids leave its C{outstanding}, and those
        still in the table (not cancelled, not answered by a retry) reach their receivers."""
        requests = self._requests
        stats = self.stats
        # Latency: one clock read per batch; requests queued in the same reactor turn share
        # their submit time, so their histogram bucket is found once.
        now = monotonic()
        latency_counts = stats.latency_counts
        deliver = self.deliver
        last_queued = None
        for rid, status, payload in zip(ids, statuses, payloads, strict=False):
            outstanding.pop(rid, None)
            request = requests.pop(rid, None)
            if request is None:
                continue  # cancelled, or answered by a retry already
            if request.queued is not last_queued:
                last_queued = request.queued
                seconds = now - last_queued
                bucket = latency_bucket(seconds)
            latency_counts[bucket] += 1
            stats.latency_sum += seconds
            deliver(request, status, payload)
        if self._afterReplies:
            self._repliesDelivered()

    def lateReplies(self, ids, statuses: bytes, payloads) -> set[int]:
        """Deliver a batch from a worker given up on; returns the ids it answered (requests
        that may have been queued again, to be taken off the queue)."""
        answered = set()
        requests = self._requests
        for rid, status, payload in zip(ids, statuses, payloads, strict=False):
            request = requests.pop(rid, None)
            if request is None:
                continue
            answered.add(rid)
            self.deliver(request, status, payload)
        if self._afterReplies:
            self._repliesDelivered()
        return answered

    def deliver(self, request: Request, status: int, payload: bytes) -> None:
        """Hand one answer to its request's receiver, and count it."""
        if status == OK:
            self.stats.ok += 1
            try:
                request.receiver.replyReceived(request.rid, payload)
            except Exception:
                log.failure("delivering the reply to request {rid} failed", rid=request.rid)
        elif status >= CALL_RESULT:
            self._deliverCall(request, status, payload)
        else:
            self.stats.error += 1
            info = decode_error(payload)
            fail(request, RemoteError(info["type"], info["message"], info["traceback"]))

    def _deliverCall(self, request: Request, status: int, outcome) -> None:
        """A call's outcome: its unpickled result, or the exception it raised."""
        try:
            if outcome.nbytes > self.max_call_bytes:  # a worker not told the limit (remote)
                what = "a call's result" if status == CALL_RESULT else "a call's exception"
                raise too_large(what, outcome.nbytes, self.max_call_bytes)
            result = unpack_outcome(status, outcome)
        except BaseException as e:  # what the call raised (SystemExit too): its Deferred's
            self.stats.error += 1
            fail(request, e)
            return
        self.stats.ok += 1
        try:
            request.receiver.replyReceived(request.rid, result)
        except Exception:
            log.failure("delivering the result of call {rid} failed", rid=request.rid)

    def afterReplies(self, call: Callable[[], None]) -> None:
        """Have C{call} run once the batch of replies being delivered now is all delivered."""
        self._afterReplies.append(call)

    def _repliesDelivered(self) -> None:
        calls, self._afterReplies = self._afterReplies, []
        for call in calls:
            try:
                call()
            except Exception:
                log.failure("writing a batch of replies failed")
