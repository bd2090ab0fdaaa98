"""The framed protocol's server side: pipelined requests on a persistent connection.

The bytes (requests, replies with a status byte, in request order) are
L{gaspar_tw.wire.framed}'s. Each connection holds a bounded number of requests in flight
and stops reading while its client does not take its replies.
"""

from __future__ import annotations

import select
from collections.abc import Iterable

from twisted.internet import defer
from twisted.internet import error as twisted_errors
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gaspar_tw.dispatch import IReplyReceiver
from gaspar_tw.errors import Overloaded, RemoteError, ServiceStopped
from gaspar_tw.server.gaspar import GasparFactory, _peer, log_handler_error
from gaspar_tw.server.sendnow import DIRECT_BYTES, writeNow
from gaspar_tw.wire.framed import HANDLER_ERROR, OK, REFUSED, TIMEOUT, reply_header
from gaspar_tw.wire.frames import FrameSplitter, FrameTooLong, body_of

log = Logger()


#: Requests one connection may have in flight before we stop reading from it: at most this,
#: and at most its share of C{--max-pending} (see L{connection_cap}).
MAX_IN_FLIGHT = 1024
#: One connection may hold this fraction of C{--max-pending} (requests in flight plus replies
#: its client has not taken), so that one slow reader cannot hold every slot ...
CONNECTION_SHARE = 8
#: ... but at least this many (or C{--max-pending} if lower), for pipelining.
MIN_CONNECTION_CAP = 64
#: How often connections that are not being read are checked for a client that hung up.
HANGUP_CHECK_SECONDS = 0.5


def connection_cap(max_pending: int | None) -> int:
    """How many requests in flight (and replies unsent) one connection may hold."""
    if max_pending is None:
        return MAX_IN_FLIGHT
    share = max(max_pending // CONNECTION_SHARE, min(MIN_CONNECTION_CAP, max_pending))
    return max(1, min(MAX_IN_FLIGHT, share))


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


@implementer(IReplyReceiver, IPushProducer)
class FramedProtocol(Protocol):
    """Read pipelined requests, submit each, write the replies back in request order.

    The protocol receives its requests' outcomes itself (L{IReplyReceiver}), by request id.
    It stops reading while it has C{cap} requests in flight (L{connection_cap}: an eighth of
    C{--max-pending}, at least 64, at most L{MAX_IN_FLIGHT}), until half of them are answered;
    requests that arrived past the cap wait, unparsed. As its transport's streaming producer
    (L{IPushProducer}) it also stops reading while the transport holds more unsent reply bytes
    than its C{bufferSize}, until all are sent. Each reason to pause is kept apart, so one never
    ends the other.

    Replies written while the transport is that full (and those that filled it) count in
    C{Dispatcher.writing}, so against C{--max-pending} as pending requests do, and in the
    connection's own cap, until the transport has sent everything or the connection is lost.
    """

    factory: FramedFactory

    def connectionMade(self) -> None:
        factory = self.factory
        factory.connections.add(self)
        self.heardAt = factory.idleSweep.count
        self._frames = FrameSplitter(factory.maxLength)
        self._cap = connection_cap(factory.dispatcher.max_pending)
        self._sent = 0  # requests submitted on this connection
        self._written = 0  # replies written
        self._unsent = 0  # replies written while the transport is over its bufferSize
        self._done: dict[int, tuple[int, bytes]] = {}  # finished, waiting for earlier ones
        self._pending: dict[int, int] = {}  # request id -> index on this connection
        self._submitting = 0  # the index being submitted (a refusal comes back at once)
        self._out: list[bytes] = []  # replies ready to write, in order
        self._flushPending = False  # a write is due once the current batch is delivered
        self._reading = False  # in _read: refusals are written once, at its end
        self._full = False  # paused: C{_cap} requests in flight
        self._writeBlocked = False  # paused: the transport's write buffer is full
        self._paused = False  # the transport is not being read (for either reason)
        self._closed = False
        self.transport.registerProducer(self, True)

    @property
    def reading(self) -> bool:
        """True while a request is half sent (what C{--idle-timeout} drops when it stalls).

        A connection between requests is not reading: persistent clients may stay idle; nor
        is a paused one: it is waiting for us.
        """
        return self._frames.midFrame and not self._paused and not self._closed

    def dataReceived(self, data: bytes) -> None:
        self.heardAt = self.factory.idleSweep.count
        self._read(data)

    def _read(self, data: bytes) -> None:
        """Submit the requests held back and those in C{data}, up to C{_cap} in flight."""
        self._reading = True
        try:
            while True:
                room = self._cap - self._held()
                try:
                    frames = self._frames.feed(data, room)
                except FrameTooLong as e:
                    self._tooLong(e.length)  # the connection closes: its requests get no reply
                    return
                if frames:
                    self._submit(frames)
                if self._out and not self._flushPending:
                    self._write()  # refusals
                if len(frames) < room:
                    return  # all parsed
                if self._held() >= self._cap:
                    self._full = True  # the rest waits for replies (or for them to be sent)
                    self._pause()
                    return
                data = b""  # refusals were written: room for more of what is held back
        finally:
            self._reading = False

    def _submit(self, frames: list[tuple[bytes, int, int]]) -> None:
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
        if not self._flushPending and not self._reading:
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
        self._write()
        if self._paused:
            self._resumeIfFree()

    def _write(self) -> None:
        out, self._out = self._out, []
        if self._closed or not out:
            return
        if sum(map(len, out)) > DIRECT_BYTES:
            self.transport.writeSequence(out)  # large replies: no copy
        else:
            writeNow(self.transport, b"".join(out))
        if self._writeBlocked:  # Twisted holds them until the client reads: count them
            self._unsent += len(out) // 2  # a header and a payload per reply
            self.factory.dispatcher.writing += len(out) // 2

    def _forgetUnsent(self) -> None:
        """The replies counted in C{_unsent} are sent, or will never be: uncount them."""
        if self._unsent:
            self.factory.dispatcher.writing -= self._unsent
            self._unsent = 0

    # -- flow control ------------------------------------------------------------------------

    def _held(self) -> int:
        """What this connection holds against its cap: requests in flight, replies unsent."""
        return self._sent - self._written + self._unsent

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()
            self.factory.watchPaused(self)

    def _resumeIfFree(self) -> None:
        """Read again, held-back requests first, once no reason to pause holds."""
        if self._writeBlocked or self._closed:
            return
        if self._full:
            if self._held() > self._cap // 2:
                return
            self._full = False
            self._read(b"")
            if self._full or self._writeBlocked or self._closed:
                return
        self._paused = False
        self.heardAt = self.factory.idleSweep.count
        self.factory.unwatchPaused(self)
        self.transport.resumeProducing()

    def pauseProducing(self) -> None:
        """The transport holds too many unsent bytes: read no requests until it sent them."""
        self._writeBlocked = True
        self._pause()

    def resumeProducing(self) -> None:
        """The transport has sent everything it held."""
        self._writeBlocked = False
        self._forgetUnsent()
        if self._paused:
            self._resumeIfFree()

    def stopProducing(self) -> None:
        """The connection is gone; L{connectionLost} cleans up."""

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close once the replies already written are sent; write no more."""
        if self._closed:
            return
        self._closed = True
        self.factory.unwatchPaused(self)
        self.transport.unregisterProducer()  # else a paused producer holds the close back
        self.transport.loseConnection()

    def _tooLong(self, length: int) -> None:
        log.warn(
            "closing framed connection from {peer}: request of {length} bytes is over the"
            " {limit}-byte limit",
            peer=_peer(self.transport),
            length=length,
            limit=self.factory.maxLength,
        )
        self.factory.stats.badInput()
        self.close()

    def connectionLost(self, reason: Failure) -> None:
        self.factory.connections.discard(self)
        self.factory.unwatchPaused(self)
        self._closed = True
        self._forgetUnsent()
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
    Paused connections (in C{paused}; they are not read, so a hang-up would go unseen) are
    polled every L{HANGUP_CHECK_SECONDS}; one whose client has closed or reset it is aborted,
    which cancels its requests. The poll's timer starts with the first pause and runs until
    L{stopIdleSweep} (doing nothing while no connection is paused): pauses come and go many
    times a second under load, and a timer started and stopped with each would cost more.
    """

    protocol = FramedProtocol
    draining = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.paused: set[FramedProtocol] = set()
        self._hangUpCheck = LoopingCall(self._closeHungUp)
        if self.clock is not None:
            self._hangUpCheck.clock = self.clock
        self._stopped = False  # stopIdleSweep was called: start no timer

    def startIdleSweep(self) -> None:
        super().startIdleSweep()
        self._stopped = False

    def stopIdleSweep(self) -> None:
        """Stop the idle sweep and the hang-up check: no timer is left running."""
        super().stopIdleSweep()
        self._stopped = True
        if self._hangUpCheck.running:
            self._hangUpCheck.stop()

    def watchPaused(self, protocol: FramedProtocol) -> None:
        self.paused.add(protocol)
        if not self._hangUpCheck.running and not self._stopped:
            self._hangUpCheck.start(HANGUP_CHECK_SECONDS, now=False)

    def unwatchPaused(self, protocol: FramedProtocol) -> None:
        self.paused.discard(protocol)

    def _closeHungUp(self) -> None:
        if not self.paused:
            return
        gone = hungUp(self.paused)
        if not gone:
            return
        log.info(
            "{n} framed connections hung up while paused, e.g. {peer}: closing them and"
            " cancelling their {requests} requests",
            n=len(gone),
            peer=_peer(gone[0].transport),
            requests=sum(len(protocol._pending) for protocol in gone),
        )
        for protocol in gone:
            self.unwatchPaused(protocol)
            protocol.transport.abortConnection()


#: poll(2) events that say the peer closed (a FIN, even behind unread data) or reset.
_HUNG_UP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def hungUp(protocols: Iterable[Protocol]) -> list[Protocol]:
    """Those of C{protocols} whose peer has closed or reset the connection (one poll(2))."""
    poller = select.poll()
    byFd = {}
    for protocol in protocols:
        try:
            fd = protocol.transport.getHandle().fileno()
        except Exception:  # no socket to look at: not watched
            continue
        poller.register(fd, _HUNG_UP)
        byFd[fd] = protocol
    return [byFd[fd] for fd, _ in poller.poll(0)] if byFd else []
