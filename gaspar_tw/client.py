"""Clients of the gaspar wire protocol.

- L{pack}: frame a request, for any framework (asyncio, tornado: write it, read to EOF).
- L{request}: blocking, plain C{socket}, so eventlet and gevent can make it green.
- L{GasparClient}: Twisted; C{request()} returns a Deferred.
"""

from __future__ import annotations

import socket
import struct

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

MAX_MESSAGE = 0xFFFFFFFF


def pack(message: bytes) -> bytes:
    """Return C{message} framed for a gaspar server: 4-byte big-endian length, then the bytes."""
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"a gaspar message holds at most {MAX_MESSAGE} bytes")
    return struct.pack("!I", len(message)) + bytes(message)


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[::1]:port"`` -> C{(host, port)}."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} must look like 'host:port'")
    return host.strip("[]"), int(port)


def request(address: str, message: bytes, timeout: float | None = 30.0) -> bytes:
    """Send one request to a gaspar server and return its reply (blocking).

    An empty reply means the handler returned C{b""} or the request failed on the server
    (the gaspar format carries no error signal). Raises C{OSError} (C{socket.timeout}
    included) on network errors.
    """
    host, port = parse_address(address)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(pack(message))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


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


class GasparClient:
    """A Twisted client: C{GasparClient(reactor, "tcp:host:port").request(b"...")}.

    C{endpoint} is a Twisted client endpoint description (``tcp:127.0.0.1:10123``,
    ``unix:/run/gaspar.sock``). Each request uses its own connection, as the gaspar
    format requires.
    """

    def __init__(self, reactor, endpoint: str, timeout: float | None = 30.0) -> None:
        self.reactor = reactor
        self.endpoint = clientFromString(reactor, endpoint)
        self.timeout = timeout

    def request(self, message: bytes) -> Deferred:
        """Send C{message}; the Deferred fires with the reply bytes (read to EOF)."""
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
        if self.timeout is not None:
            result.addTimeout(self.timeout, self.reactor)
        return result
