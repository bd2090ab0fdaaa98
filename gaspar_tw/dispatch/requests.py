"""The table of requests accepted and not yet answered: their ids, admission and cancellation."""

from __future__ import annotations

import sys
from itertools import count
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gaspar_tw.errors import Overloaded, ServiceStopped
from gaspar_tw.stats import Stats
from gaspar_tw.wire.calls import CallFrames

if TYPE_CHECKING:
    from gaspar_tw.dispatch.receivers import IReplyReceiver

log = Logger()

#: At most one "refusing requests" log line per this many seconds under a flood.
REFUSAL_LOG_INTERVAL = 1.0


def _frozenView(payload) -> bool:
    """True for a view of immutable bytes (what the protocols pass for large bodies)."""
    return type(payload) is memoryview and type(payload.obj) is bytes


class Request:
    """One accepted request: its id, payload, receiver, and when it was queued."""

    __slots__ = ("rid", "payload", "receiver", "queued", "queuedAt")

    def __init__(
        self, rid: int, payload: bytes, receiver: IReplyReceiver, queued: float, queuedAt: int
    ) -> None:
        if (
            type(payload) is not bytes
            and not _frozenView(payload)
            and type(payload) is not CallFrames
        ):
            payload = bytes(payload)  # a mutable buffer could change while it waits
        self.rid = rid
        self.payload = payload
        self.receiver = receiver
        self.queued = queued  # monotonic() at submit, for the latency histogram
        self.queuedAt = queuedAt  # the sweep count when it (last) joined a queue


class RequestTable:
    """Requests by id (C{requests}), from admission until their outcome is delivered or they
    are cancelled; C{ids} numbers them.

    A request is admitted while fewer than C{capacity} are pending. C{capacity} follows the
    rules: none once C{accepting} is false; else C{max_pending} (C{None}: no limit) less the
    replies still being written (C{writing}). It is kept up to date as they change, so that
    admitting a request is a single comparison; L{refuse} turns one away.
    """

    def __init__(self, clock: IReactorTime, stats: Stats, max_pending: int | None) -> None:
        #: The requests, by id; the other parts share this dict.
        self.requests: dict[int, Request] = {}
        self.ids = count(1)
        self.capacity = 0
        self._accepting = True
        self._max_pending = max_pending
        self._writing = 0
        self._clock = clock
        self._stats = stats
        self._nextRefusalLog = 0.0
        self._updateCapacity()

    def _updateCapacity(self) -> None:
        if not self._accepting:
            self.capacity = 0
        elif self._max_pending is None:
            self.capacity = sys.maxsize
        else:
            self.capacity = self._max_pending - self._writing

    @property
    def accepting(self) -> bool:
        return self._accepting

    @accepting.setter
    def accepting(self, accepting: bool) -> None:
        self._accepting = accepting
        self._updateCapacity()

    @property
    def max_pending(self) -> int | None:
        return self._max_pending

    @max_pending.setter
    def max_pending(self, limit: int | None) -> None:
        self._max_pending = limit
        self._updateCapacity()

    @property
    def writing(self) -> int:
        """Replies handed to a connection that could not send them at once (a client reading
        slowly or not at all): each counts against C{max_pending} until sent (a framed
        connection's) or its connection is closed, so unread replies are bounded as pending
        requests are."""
        return self._writing

    @writing.setter
    def writing(self, count: int) -> None:
        self._writing = count
        self._updateCapacity()

    def refuse(self, receiver: IReplyReceiver) -> None:
        """Turn a request away (the table is at C{capacity}): fail it, count it, log it."""
        self._stats.requestRefused()
        if not self._accepting:
            receiver.requestFailed(
                0, ServiceStopped("gaspar_tw is not running (stopped, or not started)")
            )
            return
        held = len(self.requests) + self._writing
        now = self._clock.seconds()
        if now >= self._nextRefusalLog:
            self._nextRefusalLog = now + REFUSAL_LOG_INTERVAL
            log.warn(
                "refusing requests: {pending} already pending (max-pending {limit});"
                " {refused} refused so far",
                pending=held,
                limit=self._max_pending,
                refused=self._stats.refused,
            )
        receiver.requestFailed(0, Overloaded(f"{held} requests already pending"))

    def cancel(self, rid: int) -> Request | None:
        """Forget request C{rid} and count it cancelled; C{None} if it is not pending."""
        request = self.requests.pop(rid, None)
        if request is not None:
            self._stats.requestCancelled()
        return request

    def takeAll(self) -> list[Request]:
        """Empty the table; returns what it held."""
        requests = list(self.requests.values())
        self.requests.clear()
        return requests
