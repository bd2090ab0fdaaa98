"""Writing in the reactor turn that has the data: real TCP and UNIX sockets on this host."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from gaspar_tw import Producer
from gaspar_tw.server.sendnow import DIRECT_BYTES, _idleSocket, unsentMark, writeAndClose, writeNow
from gaspar_tw.wire.framed import OK, reply_header, request_header


class Replier(Protocol):
    """On connect: write the factory's chunks, then close (or not), recording what happened."""

    def connectionMade(self) -> None:
        chunks, close = self.factory.chunks, self.factory.close
        for chunk in chunks[:-1]:
            writeNow(self.transport, chunk)
        if close:
            writeAndClose(self.transport, chunks[-1])
        else:
            writeNow(self.transport, chunks[-1])
        self.factory.closedAtOnce.callback(bool(self.transport.disconnected))

    def dataReceived(self, data: bytes) -> None:
        pass


def read_all(address, family=socket.AF_INET) -> bytes:
    """Connect, read to EOF; a reset instead of a clean close raises."""
    with socket.socket(family) as sock:
        sock.settimeout(10)
        sock.connect(address)
        parts = []
        while part := sock.recv(1 << 20):
            parts.append(part)
        return b"".join(parts)


async def serve_once(description: str, chunks: list[bytes], close: bool = True):
    factory = Factory.forProtocol(Replier)
    factory.chunks, factory.close = chunks, close
    factory.closedAtOnce = Deferred()
    port = await serverFromString(reactor, description).listen(factory)
    return factory, port


@pytest_twisted.ensureDeferred
async def test_a_reply_that_fits_is_sent_and_the_connection_closed_in_the_same_call():
    factory, port = await serve_once("tcp:0:interface=127.0.0.1", [b"head-", b"reply"])
    try:
        received = deferToThread(read_all, ("127.0.0.1", port.getHost().port))
        assert await factory.closedAtOnce is True  # the fast path, with this Twisted
        assert await received == b"head-reply"  # then EOF: a FIN, not a reset
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_large_reply_takes_twisteds_path_and_arrives_whole():
    big = bytes(range(256)) * (4 * DIRECT_BYTES // 256 + 1)
    factory, port = await serve_once("tcp:0:interface=127.0.0.1", [b"x", big])
    try:
        received = deferToThread(read_all, ("127.0.0.1", port.getHost().port))
        assert await factory.closedAtOnce is False  # left to loseConnection
        assert await received == b"x" + big
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_writes_after_queued_data_keep_their_order(tmp_path):
    # The first write is large (queued by Twisted); the small ones after it must not jump
    # the queue by going straight to the socket.
    big = b"A" * (2 * DIRECT_BYTES)
    chunks = [big, b"B" * 10, b"C" * 10]
    factory, port = await serve_once(f"unix:{tmp_path / 's'}", chunks)
    try:
        received = deferToThread(read_all, str(tmp_path / "s"), socket.AF_UNIX)
        await factory.closedAtOnce
        assert await received == b"".join(chunks)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_write_now_without_close_leaves_the_connection_open():
    factory, port = await serve_once("tcp:0:interface=127.0.0.1", [b"hello"], close=False)
    sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
    try:
        assert await factory.closedAtOnce is False
        data = await deferToThread(sock.recv, 100)
        assert data == b"hello"
        sock.setblocking(False)
        await deferLater(reactor, 0.05, lambda: None)
        with pytest.raises(BlockingIOError):  # nothing more, and no EOF: still open
            sock.recv(100)
    finally:
        sock.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_fast_path_stays_open_on_a_framed_connection_with_its_producer_registered():
    # The framed protocol registers itself as its transport's streaming producer (to stop
    # reading while replies pile up); that must not send its replies down Twisted's slower
    # path (measured: the direct send is worth ~18% of framed throughput).
    producer = Producer(
        "gaspar_tw.examples:echo", None, 1, framed_endpoint="tcp:0:interface=127.0.0.1"
    )
    producer.privilegedStartService()
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        address = ("127.0.0.1", producer.framedPort.getHost().port)
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(request_header(5) + b"hello")
            assert await deferToThread(sock.recv, 100) == reply_header(OK, 5) + b"hello"
            [connection] = producer.framedFactory.connections
            assert connection.transport.producer is connection
            assert _idleSocket(connection.transport) is not None
    finally:
        await producer.stopService()


class Holder(Protocol):
    """Writes the factory's bytes on connect and keeps the connection open."""

    def connectionMade(self) -> None:
        self.transport.write(self.factory.data)
        self.factory.connected.callback(self)


@pytest_twisted.ensureDeferred
async def test_unsent_mark_follows_what_twisted_holds_for_a_reader():
    # The write timeout reads Twisted's buffer attributes: if a release renames them, the
    # mark is always None and stalled readers would never be dropped.
    factory = Factory.forProtocol(Holder)
    factory.data = b"z" * (8 * 1024 * 1024)
    factory.connected = Deferred()
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port.getHost().port))
        transport = (await factory.connected).transport
        await deferLater(reactor, 0.2, lambda: None)  # the kernel has taken what it will
        stalled = unsentMark(transport)
        assert stalled is not None
        await deferLater(reactor, 0.1, lambda: None)
        assert unsentMark(transport) == stalled  # nothing read, nothing sent
        await deferToThread(read_exactly, sock, 1024 * 1024)
        await deferLater(reactor, 0.1, lambda: None)
        assert unsentMark(transport) not in (None, stalled)  # some left: progress
        await deferToThread(read_exactly, sock, len(factory.data) - 1024 * 1024)
        assert unsentMark(transport) is None
    finally:
        sock.close()
        await port.stopListening()


def read_exactly(sock: socket.socket, n: int) -> None:
    while n > 0:
        n -= len(sock.recv(min(n, 1 << 20)))
