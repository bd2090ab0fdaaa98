"""The framed protocol's bytes: pipelined requests, replies with a status byte, in order.

A request is ``[u32 length][payload]``; each reply is ``[u32 length][u8 status][payload]``,
where C{length} counts the status byte and the payload (both big-endian, like gaspar's).
Replies come back in the order the requests were sent. Status:

- L{OK} (0): the payload is the handler's reply;
- L{HANDLER_ERROR} (1): the handler raised (or its worker died); the payload is
  ``"Type: message"`` in UTF-8;
- L{TIMEOUT} (2): the request was not answered in time;
- L{REFUSED} (3): the producer is overloaded or stopping; the request was not run.

Both ends use this module: the server (L{gaspar_tw.server.framed}) and the client
(L{gaspar_tw.client.GasparClient} with C{framed=True}), which turns a status back into
its exception with L{error_of}.
"""

from __future__ import annotations

import struct

from gaspar_tw.errors import Overloaded, RemoteError, RequestTimeout
from gaspar_tw.wire.frames import LENGTH

OK = 0
HANDLER_ERROR = 1
TIMEOUT = 2
REFUSED = 3

_HEADER = struct.Struct("!IB")


def request_header(payload_length: int) -> bytes:
    """The C{[u32 length]} that precedes a request's payload."""
    return LENGTH.pack(payload_length)


def reply_header(status: int, payload_length: int) -> bytes:
    """The C{[u32 length][u8 status]} that precedes a reply's payload."""
    return _HEADER.pack(payload_length + 1, status)


def error_of(status: int, text: bytes) -> Exception:
    """The exception a reply's non-zero status and text stand for (the client's side)."""
    message = text.decode("utf-8", "replace")
    if status == TIMEOUT:
        return RequestTimeout(message)
    if status == REFUSED:
        return Overloaded(message)
    kind, sep, detail = message.partition(": ")
    return RemoteError(kind, detail) if sep else RemoteError("Exception", message)
