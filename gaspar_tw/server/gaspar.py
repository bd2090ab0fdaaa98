"""The gaspar wire protocol: one length-prefixed request per connection, raw reply, close.

A request is a 4-byte unsigned big-endian length and that many bytes. The reply is the
handler's bytes, written raw, then the server closes the connection: a client reads to EOF.
A failed request (handler error, timeout, overload) is a close with no reply bytes, and so
is bad input: a length over the limit (closed before the body is read) or a request that
stops arriving for C{idleTimeout} seconds (one periodic sweep, no timer per connection).
The same sweep drops a connection whose client takes none of its reply for that long. A
reply that does not leave at once keeps its place in C{--max-pending} until its connection
is closed, so replies nobody reads are bounded as requests are.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from gaspar_tw.config import Config
from gaspar_tw.dispatch import Dispatcher, IReplyReceiver
from gaspar_tw.dispatch.sweep import Sweep
from gaspar_tw.errors import GasparError, Overloaded, RemoteError
from gaspar_tw.server.sendnow import unsentMark, writeAndClose
from gaspar_tw.stats import Stats
from gaspar_tw.wire.frames import LENGTH, FrameSplitter, FrameTooLong, body_of

log = Logger()


@implementer(IReplyReceiver)
class GasparProtocol(Int32StringReceiver):
    """Serve one request: read the frame, submit it, write the reply, close.

    A request split over reads goes through L{FrameSplitter}, which joins it once, when
    complete (the base class re-joins its whole buffer on every read, which is quadratic for
    multi-megabyte requests). Bytes after the first
    request are ignored: a gaspar connection carries exactly one request. The protocol
    receives its request's outcome itself (L{IReplyReceiver}).
    """

    _frames: FrameSplitter | None = None  # made when a request arrives over several reads
    _rid = 0  # the request being answered, 0 when none
    _done = False
    _lost = False
    _unsent = False  # the reply is being written: it counts in Dispatcher.writing

    def connectionMade(self) -> None:
        self.MAX_LENGTH = self.factory.maxLength
        self.heardAt = self.factory.idleSweep.count
        self.factory.connections.add(self)

    @property
    def reading(self) -> bool:
        """True until the whole request has arrived (or the connection was refused)."""
        return not self._done

    @property
    def started(self) -> bool:
        """True once the client has sent anything: a drain waits for this connection."""
        return self._done or self._frames is not None

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self.heardAt = self.factory.idleSweep.count
        if self._frames is None:
            if len(data) >= 4:
                # The usual case: the header (and often the whole request) in one read.
                (length,) = LENGTH.unpack_from(data)
                if length <= self.MAX_LENGTH and len(data) - 4 >= length:
                    self._done = True
                    self.stringReceived(body_of(data, 4, 4 + length))
                    return
            self._frames = FrameSplitter(self.MAX_LENGTH, most=1)
        try:
            frames = self._frames.feed(data)
        except FrameTooLong as e:
            self._done = True
            self.lengthLimitExceeded(e.length)
            return
        if frames:
            self._done = True
            self.stringReceived(body_of(*frames[0]))

    def stringReceived(self, request: bytes) -> None:
        self._rid = self.factory.dispatcher.submitTo(request, self)

    def lengthLimitExceeded(self, length: int) -> None:
        self.factory.stats.badInput()
        log.warn(
            "closing {peer}: request of {length} bytes is over the {limit}-byte limit",
            peer=_peer(self.transport),
            length=length,
            limit=self.MAX_LENGTH,
        )
        self.transport.loseConnection()

    def replyReceived(self, rid: int, reply: bytes) -> None:
        self._rid = 0
        if not writeAndClose(self.transport, reply) and not self._lost:
            self._unsent = True
            self.factory.dispatcher.writing += 1

    def requestFailed(self, rid: int, reason: Exception) -> None:
        self._rid = 0
        if isinstance(reason, RemoteError):
            log_handler_error(reason, self.transport)
        elif isinstance(reason, Overloaded):
            pass  # counted, and logged once a second, by the dispatcher
        elif isinstance(reason, GasparError):
            peer = _peer(self.transport)
            log.warn("request from {peer} failed: {error}", peer=peer, error=reason)
        else:
            peer = _peer(self.transport)
            log.error("request from {peer} failed: {error!r}", peer=peer, error=reason)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self._done = self._lost = True
        self.factory.connections.discard(self)
        if self._unsent:
            self._unsent = False
            self.factory.dispatcher.writing -= 1
        if self._rid:
            rid, self._rid = self._rid, 0
            self.factory.dispatcher.cancel(rid)


class GasparFactory(Factory):
    """Builds L{GasparProtocol}s that hand each request to C{dispatcher}; drops idle clients.

    C{connections} holds every open connection. Every C{idleTimeout/4} seconds (at most 1 s)
    one sweep drops clients stalled mid-request and those that took none of the reply bytes
    waiting for them for C{idleTimeout} (progress, not speed: a slow reader stays).
    """

    protocol = GasparProtocol
    noisy = False

    def __init__(
        self,
        dispatcher: Dispatcher,
        maxLength: int = Config.max_length,
        stats: Stats | None = None,
        idleTimeout: float | None = Config.idle_timeout,
        clock=None,
    ) -> None:
        self.dispatcher = dispatcher
        self.maxLength = maxLength
        self.stats = Stats() if stats is None else stats
        self.idleTimeout = idleTimeout or None
        self.connections: set[GasparProtocol] = set()
        self.clock = clock
        self.idleSweep = Sweep(self.idleTimeout, self._sweep, clock)
        # Connections holding unsent reply bytes at the last sweep: their unsentMark then,
        # and the sweep count since which it has not changed.
        self._unsent: dict = {}

    def startIdleSweep(self) -> None:
        """Every C{idleTimeout/4} seconds (at most 1 s), drop clients stalled either way."""
        self.idleSweep.start()

    def stopIdleSweep(self) -> None:
        self.idleSweep.stop()

    def _sweep(self) -> None:
        expired = self.idleSweep.expired
        idle = [p for p in self.connections if p.reading and expired(p.heardAt)]
        self._drop(idle, "sent part of a request and then nothing")
        self._drop(self._stalledReaders(), "took no reply bytes")

    def _stalledReaders(self) -> list:
        """Connections whose client took none of the reply bytes queued for it for
        C{idleTimeout} (the bytes the kernel would not take wait in the transport)."""
        sweep = self.idleSweep
        seen, self._unsent = self._unsent, {}
        since = sweep.count - 1  # a change seen now happened after the previous sweep
        stalled = []
        for protocol in self.connections:
            mark = unsentMark(protocol.transport)
            if mark is None:
                continue
            last = seen.get(protocol)
            if last is None or last[0] != mark:
                self._unsent[protocol] = (mark, since)
            elif sweep.expired(last[1]):
                stalled.append(protocol)
            else:
                self._unsent[protocol] = last
        return stalled

    def _drop(self, protocols: list, what: str) -> None:
        """Abort C{protocols} (counted as bad input), logged in one line."""
        if not protocols:
            return
        log.warn(
            "dropping {n} connections that {what} for {timeout}s (--idle-timeout), e.g. {peer}",
            n=len(protocols),
            what=what,
            timeout=self.idleTimeout,
            peer=_peer(protocols[0].transport),
        )
        for protocol in protocols:
            self.stats.badInput()
            protocol.transport.abortConnection()


def log_handler_error(error: RemoteError, transport) -> None:
    """Log a handler's exception with its traceback and the client it was for."""
    log.error(
        "handler raised {type}: {reason} (request from {peer})\n{traceback}",
        type=error.type,
        reason=error.message,
        peer=_peer(transport),
        traceback=error.traceback,
    )


def _peer(transport) -> str:
    try:
        address = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(getattr(address, "name", address))
