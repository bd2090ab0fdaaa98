"""Multipart ZeroMQ messages sent and received with plain-int flags, for the hot paths.

pyzmq's C{send_multipart}/C{recv_multipart} combine C{zmq.Flag} enum members for every frame,
and that Python-level enum arithmetic is a large share of a small message's cost; these
helpers pass plain ints instead. Same semantics: every frame but the last is sent with
SNDMORE; the receive raises C{zmq.Again} if nothing waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

NOBLOCK = int(zmq.NOBLOCK)
BLOCK = 0
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def send_frames(
    socket: zmq.Socket, frames: Sequence[Any], copy: bool = True, flags: int = NOBLOCK
) -> None:
    """Send C{frames} as one message (C{NOBLOCK}: C{zmq.Again} at the high-water mark)."""
    send = socket.send
    more = flags | _SNDMORE
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        send(frame, flags if index == last else more, copy=copy)


def recv_frames(socket: zmq.Socket) -> list[bytes]:
    """The next message's frames, as bytes; raises C{zmq.Again} if none is waiting."""
    recv = socket.recv
    frames = [recv(NOBLOCK)]
    more = socket.getsockopt
    while more(_RCVMORE):
        frames.append(recv(NOBLOCK))
    return frames


def waiting(socket: zmq.Socket) -> bool:
    """True if a message can be received now: cheaper than a receive raising C{zmq.Again}
    (pyzmq builds that exception, its message and errno lookup, each time)."""
    return bool(socket.getsockopt(_EVENTS) & _POLLIN)
