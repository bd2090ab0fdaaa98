"""Write to a connection in the reactor turn that has the data, when its socket takes it.

Twisted's C{write} queues the data and arms the socket for writing; the data leaves on a
later reactor turn (an epoll change, an event, a C{doWrite}, another epoll change), and a
C{loseConnection} after it closes on that later turn too. A reply nearly always fits the
socket's send buffer, so L{writeNow} sends it at once when nothing is queued before it, and
L{writeAndClose} then closes the transport at once, the way Twisted's own
C{loseConnection} does when there is nothing left to write. Skipping those reactor turns
saves the producer CPU on every gaspar TCP request and shortens the framed protocol's
latency. Anything else (TLS, a non-socket transport, queued data, a
partial send, a large reply) takes Twisted's path for the rest, so what the client sees is
the same: the bytes in order, then a clean close (FIN). L{unsentMark} reads what Twisted
still holds, for the write timeout.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios

from twisted.internet import main, tcp
from twisted.internet.interfaces import ITransport
from twisted.python.failure import Failure

#: Writes up to this size are tried directly; larger ones are left to Twisted's writer.
DIRECT_BYTES = 64 * 1024

#: One Failure for every clean close, as Twisted's reactor and C{loseConnection} keep one:
#: building a Failure names every class of the exception's hierarchy, a cost on every close.
_CONNECTION_DONE = Failure(main.CONNECTION_DONE)


def _idleSocket(transport: ITransport) -> socket.socket | None:
    """The socket of a plain TCP or UNIX transport with nothing queued to write, else None.

    Reads Twisted's write-buffer attributes; if a Twisted release renames them, every write
    takes Twisted's own path (tests/test_sendnow.py notices). A registered producer does
    not matter: a direct send adds nothing to the buffer that pauses it.
    """
    if (
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_aborting", True)
        and not getattr(transport, "dataBuffer", True)
        and not getattr(transport, "_tempDataBuffer", True)
        and not getattr(transport, "TLS", False)
    ):
        return transport.getHandle()
    return None


def _sendNow(transport: ITransport, data: bytes) -> int | None:
    """Send what the socket takes of C{data} now: the bytes sent, or None if it may not."""
    sock = _idleSocket(transport) if len(data) <= DIRECT_BYTES else None
    if sock is None:
        return None
    try:
        return sock.send(data) if data else 0
    except OSError:  # would block, or the peer is gone: Twisted's path reports it
        return 0


def writeNow(transport: ITransport, data: bytes) -> None:
    """Like C{transport.write(data)}, sending at once what the socket takes."""
    sent = _sendNow(transport, data) or 0
    if sent < len(data):
        transport.write(data[sent:] if sent else data)


def writeAndClose(transport: ITransport, data: bytes) -> bool:
    """Write C{data}, then close the connection cleanly: True if that was done at once,
    False if Twisted holds some of C{data} to send later."""
    sent = _sendNow(transport, data)
    if sent == len(data):
        transport.connectionLost(_CONNECTION_DONE)
        return True
    sent = sent or 0
    transport.write(data[sent:] if sent else data)
    transport.loseConnection()
    return False


def unsentMark(transport: ITransport) -> tuple[int, int, int] | None:
    """None if Twisted holds no unsent bytes for C{transport}; else a mark that stays the
    same for as long as its client takes none of them.

    Twisted sends from C{dataBuffer} at C{offset} (a new buffer whenever it takes in the
    writes queued in C{_tempDataBuffer}), so the pair changes whenever bytes leave it. A slow
    client's progress can stay in the kernel's send queue for longer than that (the socket is
    writable again only once much of it has drained), so the queue's length is part of the
    mark. Other transports (TLS) have none of these: None.
    """
    buffer = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    if len(buffer) <= offset and not getattr(transport, "_tempDataLen", 0):
        return None
    return (id(buffer), offset, _kernelUnsent(transport))


def _kernelUnsent(transport: ITransport) -> int:
    """The bytes in the socket's send queue not yet taken by the peer (0 where unknown)."""
    try:
        fd = transport.getHandle().fileno()
        return _QUEUED.unpack(fcntl.ioctl(fd, termios.TIOCOUTQ, bytes(_QUEUED.size)))[0]
    except (AttributeError, OSError, ValueError):
        return 0


#: What the ioctl TIOCOUTQ (SIOCOUTQ on a socket) answers: a C int.
_QUEUED = struct.Struct("i")
