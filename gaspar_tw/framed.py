"""The framed protocol: a persistent connection carrying pipelined requests, replies in order.

A request is ``[u32 length][payload]``; each reply is ``[u32 length][u8 status][payload]``,
where C{length} counts the status byte and the payload (both big-endian, like gaspar's).
Replies come back in the order the requests were sent. Status:

- L{OK} (0): the payload is the handler's reply;
- L{HANDLER_ERROR} (1): the handler raised (or its worker died); the payload is
  ``"Type: message"`` in UTF-8;
- L{TIMEOUT} (2): the request was not answered in time;
- L{REFUSED} (3): the producer is overloaded or stopping; the request was not run.
"""

from __future__ import annotations

import struct

from twisted.internet import defer
from twisted.internet import error as twisted_errors
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gaspar_tw.dispatch import IReplyReceiver
from gaspar_tw.errors import Overloaded, RemoteError, ServiceStopped
from gaspar_tw.frames import LENGTH, FrameSplitter, FrameTooLong, body_of
from gaspar_tw.protocol import GasparFactory, _peer, log_handler_error
from gaspar_tw.sendnow import DIRECT_BYTES, writeNow

log = Logger()

OK = 0
HANDLER_ERROR = 1
TIMEOUT = 2
REFUSED = 3

#: Requests one connection may have in flight before we stop reading from it.
MAX_IN_FLIGHT = 1024

_HEADER = struct.Struct("!IB")


def request_header(payload_length: int) -> bytes:
    """The C{[u32 length]} that precedes a request's payload."""
    return LENGTH.pack(payload_length)


def reply_header(status: int, payload_length: int) -> bytes:
    """The C{[u32 length][u8 status]} that precedes a reply's payload."""
    return _HEADER.pack(payload_length + 1, status)


def status_of(error: BaseException) -> tuple[int, bytes]:
    """Map a failed request's exception to its reply status and error text."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, RemoteError):
        text = f"{error.type}: {error.message}"
        return HANDLER_ERROR, text.encode("utf-8", "replace")
    if isinstance(error, Overloaded | ServiceStopped):
        return REFUSED, text.encode("utf-8", "replace")
    if isinstance(error, TimeoutError | defer.TimeoutError | twisted_errors.TimeoutError):
        return TIMEOUT, text.encode("utf-8", "replace")
    return HANDLER_ERROR, text.encode("utf-8", "replace")


@implementer(IReplyReceiver)
class FramedProtocol(Protocol):
    """Read pipelined requests, submit each, write the replies back in request order.

    The protocol receives its requests' outcomes itself (L{IReplyReceiver}), by request id.
    """

    factory: FramedFactory

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self.heardAt = self.factory.idleSweep.count
        self._frames = FrameSplitter(self.factory.maxLength)
        self._sent = 0  # requests submitted on this connection
        self._written = 0  # replies written
        self._done: dict[int, tuple[int, bytes]] = {}  # finished, waiting for earlier ones
        self._pending: dict[int, int] = {}  # request id -> index on this connection
        self._submitting = 0  # the index being submitted (a refusal comes back at once)
        self._out: list[bytes] = []  # replies ready to write, in order
        self._flushPending = False  # a write is due once the current batch is delivered
        self._paused = False
        self._closed = False

    @property
    def reading(self) -> bool:
        """True while a request is half sent (what C{--idle-timeout} drops when it stalls).

        A connection between requests is not reading: persistent clients may stay idle.
        """
        return self._frames.midFrame and not self._closed

    def dataReceived(self, data: bytes) -> None:
        self.heardAt = self.factory.idleSweep.count
        try:
            frames = self._frames.feed(data)
        except FrameTooLong as e:
            self._tooLong(e.length)  # the connection closes: its requests get no reply
            return
        factory = self.factory
        submitTo = factory.dispatcher.submitTo
        pending = self._pending
        for buffer, start, end in frames:
            index = self._sent
            self._sent = index + 1
            self._submitting = index
            if factory.draining:
                self.requestFailed(0, ServiceStopped("gaspar_tw producer is stopping"))
                continue
            rid = submitTo(body_of(buffer, start, end), self)
            if rid:
                pending[rid] = index
        if not self._paused and self._sent - self._written >= MAX_IN_FLIGHT:
            self._paused = True
            self.transport.pauseProducing()

    def replyReceived(self, rid: int, reply: bytes) -> None:
        # Replies come in batches: they are written once the batch is delivered, one write
        # per connection per batch instead of one per reply.
        self._finish(self._pending.pop(rid), OK, reply)
        if self._out and not self._flushPending:
            self._flushPending = True
            self.factory.dispatcher.afterReplies(self._flushReplies)

    def requestFailed(self, rid: int, reason: Exception) -> None:
        index = self._pending.pop(rid) if rid else self._submitting
        status, text = status_of(reason)
        if isinstance(reason, RemoteError):
            log_handler_error(reason, self.transport)
        self._finish(index, status, text)
        if not self._flushPending:
            self._flushReplies()

    def _finish(self, index: int, status: int, payload: bytes) -> None:
        """Queue reply C{index} for writing, with any later ones it was holding back."""
        if self._closed:
            return
        if index != self._written:
            self._done[index] = (status, payload)
            return
        out = self._out
        out += (reply_header(status, len(payload)), payload)
        written = index + 1
        done = self._done
        while written in done:
            status, payload = done.pop(written)
            out += (reply_header(status, len(payload)), payload)
            written += 1
        self._written = written

    def _flushReplies(self) -> None:
        self._flushPending = False
        out, self._out = self._out, []
        if self._closed or not out:
            return
        if sum(map(len, out)) > DIRECT_BYTES:
            self.transport.writeSequence(out)  # large replies: no copy
        else:
            writeNow(self.transport, b"".join(out))
        if self._paused and self._sent - self._written < MAX_IN_FLIGHT // 2:
            self._paused = False
            self.transport.resumeProducing()

    def _tooLong(self, length: int) -> None:
        log.warn(
            "closing framed connection from {peer}: request of {length} bytes is over the"
            " {limit}-byte limit",
            peer=_peer(self.transport),
            length=length,
            limit=self.factory.maxLength,
        )
        self.factory.stats.badInput()
        self._closed = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.factory.connections.discard(self)
        self._closed = True
        self._done.clear()
        self._out = []
        pending, self._pending = self._pending, {}
        cancel = self.factory.dispatcher.cancel
        for rid in pending:
            cancel(rid)


class FramedFactory(GasparFactory):
    """Builds L{FramedProtocol}s that hand each request to C{dispatcher}.

    While C{draining} (the producer is stopping), requests that arrive on open connections
    are answered L{REFUSED} at once, so a pipelining client cannot hold a drain open.
    """

    protocol = FramedProtocol
    draining = False
