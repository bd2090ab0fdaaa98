"""Write a connection's last bytes and close it, in the same reactor turn when the socket allows.

Twisted's C{write} + C{loseConnection} arm the socket for writing and finish on a later
reactor turn: an epoll change, an event, a C{doWrite}, another epoll change, then the close.
A gaspar reply on a fresh connection nearly always fits the socket's send buffer, so
L{writeAndClose} sends it at once and, when all of it went, closes the transport at once,
the way Twisted's own C{loseConnection} does when there is nothing left to write. Measured
on the benchmark (bench/run.py, gaspar TCP echo), this cut the parent's CPU per request
by about 15%. Anything else (TLS, a partial send, a non-socket transport) takes the usual
path, so the behaviour seen by the client is the same: the reply, then a clean close (FIN).
"""

from __future__ import annotations

from twisted.internet import main, tcp
from twisted.internet.interfaces import ITransport
from twisted.python.failure import Failure

#: Replies up to this size are tried directly; larger ones are left to Twisted's writer.
DIRECT_BYTES = 64 * 1024


def writeAndClose(transport: ITransport, data: bytes) -> None:
    """Write C{data}, then close the connection cleanly."""
    if (
        isinstance(transport, tcp.Connection)
        and len(data) <= DIRECT_BYTES
        and transport.connected
        and not transport.disconnecting
        and not transport._aborting
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.producer is None
        and not getattr(transport, "TLS", False)
    ):
        try:
            sent = transport.getHandle().send(data)
        except OSError:  # would block, or the peer is gone: the usual path reports it
            sent = 0
        if sent == len(data):
            transport.connectionLost(Failure(main.CONNECTION_DONE))
            return
        data = data[sent:]
    transport.write(data)
    transport.loseConnection()
