"""Clients of the gaspar wire protocol.

- L{pack}: frame a request, for any framework (asyncio, tornado: write it, read to EOF).
- L{request}: blocking, plain C{socket}, so eventlet and gevent can make it green.
- L{GasparClient}: Twisted; C{request()} returns a Deferred. With C{framed=True} it speaks
  the framed persistent protocol (L{gaspar_tw.wire.framed}) over a small pool of connections.
"""

from __future__ import annotations

import socket
import time
from collections import deque

from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gaspar_tw.errors import RequestTimeout
from gaspar_tw.wire import framed
from gaspar_tw.wire.frames import LENGTH, FrameSplitter

MAX_MESSAGE = 0xFFFFFFFF


def pack(message: bytes) -> bytes:
    """Return C{message} framed for a gaspar server: 4-byte big-endian length, then the bytes."""
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a gaspar message holds at most {MAX_MESSAGE} bytes")
    return LENGTH.pack(len(message)) + bytes(message)


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[::1]:port"`` -> C{(host, port)}."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} must look like 'host:port'")
    return host.strip("[]"), int(port)


def request(address: str, message: bytes, timeout: float | None = 30.0) -> bytes:
    """Send one request to a gaspar server and return its reply (blocking).

    An empty reply means the handler returned C{b""} or the request failed on the server
    (the gaspar format carries no error signal). Raises C{OSError} on network errors, and
    C{socket.timeout} (a C{TimeoutError}) when C{timeout} seconds pass without the whole
    reply: one deadline for connecting, sending and reading, however the reply trickles in.
    """
    host, port = parse_address(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(_remaining(deadline, timeout))
        sock.sendall(pack(message))
        chunks = []
        while True:
            sock.settimeout(_remaining(deadline, timeout))
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _remaining(deadline: float | None, timeout: float | None) -> float | None:
    """Seconds left until C{deadline}; C{TimeoutError} (C{socket.timeout}) once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"no whole reply within {timeout}s")
    return left


class _OneRequest(Protocol):
    def __init__(self, message: bytes, finished: Deferred) -> None:
        self.message = message
        self.finished = finished
        self.chunks: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.write(pack(self.message))

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:
        finished, self.finished = self.finished, None
        if finished is None:
            return
        if reason.check(ConnectionDone):
            finished.callback(b"".join(self.chunks))
        else:
            finished.errback(reason)


class _FramedConnection(Protocol):
    """One persistent framed connection: requests written as they come, replies in order."""

    def __init__(self, pool: _FramedPool) -> None:
        self.pool = pool
        self.waiting: deque[Deferred] = deque()
        self.ended: Deferred = Deferred()
        self._frames = FrameSplitter()

    def send(self, message: bytes, d: Deferred | None = None) -> Deferred:
        """Write a request; C{d} (or a new Deferred) fires with its reply."""
        if d is None:
            d = Deferred()
        self.waiting.append(d)
        self.transport.writeSequence([framed.request_header(len(message)), message])
        return d

    def dataReceived(self, data: bytes) -> None:
        for buffer, start, end in self._frames.feed(data):
            if not self.waiting or end == start:
                self.transport.abortConnection()  # a reply nobody asked for: out of sync
                return
            d = self.waiting.popleft()
            if d.called:
                continue  # timed out or cancelled already
            status = buffer[start]
            if status == framed.OK:
                d.callback(buffer[start + 1 : end])
            else:
                d.errback(framed.error_of(status, buffer[start + 1 : end]))

    def connectionLost(self, reason: Failure) -> None:
        self.pool.lost(self)
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            if not d.called:
                d.errback(ConnectionLost("framed connection lost before the reply"))
        self.ended.callback(None)


class _FramedPool:
    """Up to C{size} framed connections; each request goes to the least busy one."""

    def __init__(self, endpoint, size: int) -> None:
        self.endpoint = endpoint
        self.size = size
        self.connections: list[_FramedConnection] = []
        self.connecting = 0
        self.queued: deque[tuple[bytes, Deferred]] = deque()

    def request(self, message: bytes) -> Deferred:
        best = min(self.connections, key=lambda c: len(c.waiting), default=None)
        if best is not None and (not best.waiting or self._full()):
            return best.send(message)
        d: Deferred = Deferred()
        self.queued.append((message, d))
        if not self._full():
            self._connect()
        return d

    def _full(self) -> bool:
        return len(self.connections) + self.connecting >= self.size

    def _connect(self) -> None:
        self.connecting += 1
        d = self.endpoint.connect(Factory.forProtocol(lambda: _FramedConnection(self)))
        d.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, connection: _FramedConnection) -> None:
        self.connecting -= 1
        self.connections.append(connection)
        self._sendQueued()

    def _connectFailed(self, failure: Failure) -> None:
        self.connecting -= 1
        if self.connections or self.connecting:
            self._sendQueued()
            return
        queued, self.queued = self.queued, deque()
        for _, d in queued:
            if not d.called:
                d.errback(failure)

    def _sendQueued(self) -> None:
        while self.queued and self.connections:
            message, d = self.queued.popleft()
            if not d.called:
                best = min(self.connections, key=lambda c: len(c.waiting))
                best.send(message, d)

    def lost(self, connection: _FramedConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    def close(self) -> Deferred:
        """Close every connection; fires once they are all closed."""
        closing = [connection.ended for connection in self.connections]
        for connection in list(self.connections):
            connection.transport.loseConnection()
        return gatherResults(closing) if closing else succeed(None)


class GasparClient:
    """A Twisted client: C{GasparClient(reactor, "tcp:host:port").request(b"...")}.

    C{endpoint} is a Twisted client endpoint description (``tcp:127.0.0.1:10123``,
    ``unix:/run/gaspar.sock``). Each request uses its own connection, as the gaspar
    format requires. With C{framed=True}, C{endpoint} is a framed endpoint
    (``--framed-endpoint``): requests are pipelined over up to C{connections} persistent
    connections, and a failed request fails its Deferred with L{gaspar_tw.RemoteError},
    L{gaspar_tw.RequestTimeout} or L{gaspar_tw.Overloaded}. Past C{timeout} seconds without
    a reply, either way, it fails with L{gaspar_tw.RequestTimeout} (a built-in
    C{TimeoutError}). Call L{close} when done.
    """

    def __init__(
        self,
        reactor,
        endpoint: str,
        timeout: float | None = 30.0,
        *,
        framed: bool = False,
        connections: int = 4,
    ) -> None:
        self.reactor = reactor
        self.endpoint = clientFromString(reactor, endpoint)
        self.timeout = timeout
        self._pool = _FramedPool(self.endpoint, connections) if framed else None

    def close(self) -> Deferred:
        """Close the framed connections (a no-op for the gaspar format)."""
        return self._pool.close() if self._pool is not None else succeed(None)

    def request(self, message: bytes) -> Deferred:
        """Send C{message}; the Deferred fires with the reply bytes."""
        if self._pool is not None:
            return self._withTimeout(self._pool.request(bytes(message)))
        finished: Deferred = Deferred()
        connecting = self.endpoint.connect(
            Factory.forProtocol(lambda: _OneRequest(message, finished))
        )
        connecting.addErrback(lambda failure: finished.called or finished.errback(failure))
        protocolHolder: list = []
        connecting.addCallback(protocolHolder.append)

        def cancel(d: Deferred) -> None:
            if protocolHolder:
                protocolHolder[0].transport.abortConnection()
            else:
                connecting.cancel()

        result: Deferred = Deferred(cancel)

        def relay(outcome) -> None:
            # After a cancel (or timeout) C{result} has failed already; the connection's
            # end, which comes later, must not fire it a second time.
            if not result.called:
                result.callback(outcome)

        finished.addBoth(relay)
        return self._withTimeout(result)

    def _withTimeout(self, result: Deferred) -> Deferred:
        """Fail C{result} with L{gaspar_tw.RequestTimeout} if no reply comes in time."""
        if self.timeout is None:
            return result

        def timedOut(outcome, seconds):
            if isinstance(outcome, Failure) and outcome.check(CancelledError):
                return Failure(RequestTimeout(f"no reply within {seconds}s (client timeout)"))
            return outcome

        return result.addTimeout(self.timeout, self.reactor, onTimeoutCancel=timedOut)
