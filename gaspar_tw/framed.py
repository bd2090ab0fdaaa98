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

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gaspar_tw.errors import Overloaded, RemoteError, ServiceStopped
from gaspar_tw.protocol import GasparFactory, _peer, log_handler_error

log = Logger()

OK = 0
HANDLER_ERROR = 1
TIMEOUT = 2
REFUSED = 3

#: Requests one connection may have in flight before we stop reading from it.
MAX_IN_FLIGHT = 1024

_LENGTH = struct.Struct("!I")
_HEADER = struct.Struct("!IB")


def request_header(payload_length: int) -> bytes:
    """The C{[u32 length]} that precedes a request's payload."""
    return _LENGTH.pack(payload_length)


def reply_header(status: int, payload_length: int) -> bytes:
    """The C{[u32 length][u8 status]} that precedes a reply's payload."""
    return _HEADER.pack(payload_length + 1, status)


def status_of(failure: Failure) -> tuple[int, bytes]:
    """Map a failed request to its reply status and error text."""
    error = failure.value
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, RemoteError):
        text = f"{error.type}: {error.message}"
        return HANDLER_ERROR, text.encode("utf-8", "replace")
    if isinstance(error, Overloaded | ServiceStopped):
        return REFUSED, text.encode("utf-8", "replace")
    if isinstance(error, TimeoutError) or failure.check(
        "twisted.internet.defer.TimeoutError", "twisted.internet.error.TimeoutError"
    ):
        return TIMEOUT, text.encode("utf-8", "replace")
    return HANDLER_ERROR, text.encode("utf-8", "replace")


class FrameTooLong(ValueError):
    """A frame announced more bytes than allowed."""

    def __init__(self, length: int) -> None:
        super().__init__(f"frame of {length} bytes is over the limit")
        self.length = length


class FrameSplitter:
    """Cut a byte stream into C{[u32 length][body]} frames.

    A frame split over many reads is kept as a list of chunks and joined once, when
    complete: no buffer that grows, or moves, with every read.
    """

    def __init__(self, limit: int = 0xFFFFFFFF) -> None:
        self.limit = limit
        self._partial: list[bytes] = []
        self._partialSize = 0
        self._need = 4  # bytes the incomplete frame needs before it can be parsed

    @property
    def midFrame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return bool(self._partial)

    def feed(self, data: bytes) -> list[tuple[bytes, int, int]]:
        """The complete frames now available, as C{(buffer, start, end)} of their bodies.

        Raises L{FrameTooLong} for a frame longer than C{limit}; the stream cannot be
        parsed further.
        """
        if self._partial:
            self._partial.append(data)
            self._partialSize += len(data)
            if self._partialSize < self._need:
                return []
            data = b"".join(self._partial)
            self._partial = []
            self._partialSize = 0
        frames = []
        offset = 0
        end = len(data)
        need = 4
        while end - offset >= 4:
            (length,) = _LENGTH.unpack_from(data, offset)
            if length > self.limit:
                raise FrameTooLong(length)
            start = offset + 4
            if end - start < length:
                need = 4 + length
                break
            offset = start + length
            frames.append((data, start, offset))
        if offset < end:
            rest = data[offset:] if offset else data
            self._partial = [rest]
            self._partialSize = len(rest)
            self._need = need
        return frames


class FramedProtocol(Protocol):
    """Read pipelined requests, submit each, write the replies back in request order."""

    factory: FramedFactory

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self.heardAt = self.factory.idleSweep.count
        self._frames = FrameSplitter(self.factory.maxLength)
        self._sent = 0  # requests submitted on this connection
        self._written = 0  # replies written
        self._done: dict[int, tuple[int, bytes]] = {}  # finished, waiting for earlier ones
        self._pending: dict[int, Deferred] = {}
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
        submit = self.factory.submit if not self.factory.draining else _refuseWhileDraining
        for buffer, start, end in frames:
            index = self._sent
            self._sent = index + 1
            d = submit(buffer[start:end])
            if not d.called:
                self._pending[index] = d
            d.addCallbacks(self._succeeded, self._failed, (index,), None, (index,))
        if not self._paused and self._sent - self._written >= MAX_IN_FLIGHT:
            self._paused = True
            self.transport.pauseProducing()

    def _succeeded(self, reply: bytes, index: int) -> None:
        self._finish(index, OK, reply)

    def _failed(self, failure: Failure, index: int) -> None:
        if failure.check(CancelledError) and self._closed:
            return
        status, text = status_of(failure)
        if status == HANDLER_ERROR and failure.check(RemoteError):
            log_handler_error(failure.value, self.transport)
        self._finish(index, status, text)

    def _finish(self, index: int, status: int, payload: bytes) -> None:
        self._pending.pop(index, None)
        if self._closed:
            return
        if index != self._written:
            self._done[index] = (status, payload)
            return
        out = [reply_header(status, len(payload)), payload]
        written = index + 1
        done = self._done
        while written in done:
            status, payload = done.pop(written)
            out += (reply_header(status, len(payload)), payload)
            written += 1
        self._written = written
        self.transport.writeSequence(out)
        if self._paused and self._sent - written < MAX_IN_FLIGHT // 2:
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
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.cancel()


class FramedFactory(GasparFactory):
    """Builds L{FramedProtocol}s that hand each request to C{submit}.

    While C{draining} (the producer is stopping), requests that arrive on open connections
    are answered L{REFUSED} at once, so a pipelining client cannot hold a drain open.
    """

    protocol = FramedProtocol
    draining = False


def _refuseWhileDraining(payload: bytes) -> Deferred:
    return fail(ServiceStopped("gaspar_tw producer is stopping"))
