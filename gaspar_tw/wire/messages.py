"""The messages between the producer and its workers, as lists of ZeroMQ frames.

Work (producer -> one worker, on that worker's PUSH socket)::

    [n + ids + sizes, body_1, ..., body_k]

Control (same socket; one frame, work has two or more)::

    [b"C" + ids]        cancel: skip these requests if not started (each is answered L{SKIPPED})
    [b"D"]              stop: every request sent has been answered (a remote worker's host
                        is stopping it)

Replies and control (every worker -> producer, on the shared PULL socket)::

    [b"H" + token, pid]                                                   worker ready
    [b"Q" + token, reason]           retire me (recycling: max_requests or max_memory, ASCII)
    [b"R" + token + busy + n + ids + statuses + sizes, body_1, ..., body_k]   replies

Every integer is little-endian, whatever the byte order of the host that sends or reads it.
C{token} is a worker process's unique number (u64), C{busy} the microseconds the handler
spent on these requests (u32, so the producer can size its batches), C{n} the number of
requests (u32), C{ids} their ids (n u64s), C{sizes} each payload's length (n u32s),
C{statuses} one byte a reply (L{OK} or L{ERROR}; an error payload is the JSON of
L{gaspar_tw.wire.failures.encode_error}), C{pid} the worker's process id in decimal ASCII.
The small fields share the first frame: every ZeroMQ frame has a fixed cost to send and
another to receive, so a message of small payloads is two frames. Small payloads travel
packed in one frame (k = 1: copying small payloads together costs less than a frame each); a
message holding a payload of L{PACK_LIMIT} bytes or more carries one frame per payload (k =
n), sent without a copy. L{encode_work} cuts a batch into messages of about
L{MESSAGE_BYTES}, so a worker can start on the first requests while the rest are on their
way.

Function calls (L{gaspar_tw.calls}) travel in I{mixed} messages, whose count has the
L{MIXED_BIT} bit set; the plain layouts above are untouched, so bytes requests pay nothing for
them. A mixed message carries one or more frames a request, and says how many::

    work     [n|MIXED_BIT + ids + kinds + counts, frames of request 1, ..., frames of request n]
    replies  [b"R" + token + busy + n|MIXED_BIT + ids + statuses + counts, frames..., ...]

C{kinds} is one byte a request (L{KIND_BYTES}: one frame, the handler's payload;
L{KIND_CALL}: a L{gaspar_tw.wire.calls.CallFrames}), C{counts} each request's or reply's
number of frames (u32s). A reply whose status is a call's (L{CALL_RESULT}, L{CALL_RAISED})
is a C{CallFrames}; any other is one frame, as in a plain message. Nothing here imports
Twisted: the worker process uses this module too.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from gaspar_tw.wire.calls import CALL_RAISED, CALL_RESULT, CallFrames

OK = 0
ERROR = 1
#: The reply status of a request the worker skipped because it was cancelled (empty payload).
SKIPPED = 2

#: Set in the count of a mixed message (one carrying calls): see the module docstring.
MIXED_BIT = 0x80000000
#: A mixed work message's kinds: a handler request (one frame), a call (its frames).
KIND_BYTES = 0
KIND_CALL = 1

HELLO = b"H"
REPLIES = b"R"
RETIRE = b"Q"

CANCEL = b"C"
STOP = b"D"

#: Payloads this large or larger are sent as frames of their own, not packed.
PACK_LIMIT = 16 * 1024
#: A batch is cut into messages of about this many payload bytes.
MESSAGE_BYTES = 256 * 1024
#: Frames this large or larger are sent without a copy; smaller ones are copied, which costs
#: less than zero-copy's release through pyzmq's garbage-collector thread (pyzmq's default
#: threshold is 64 KiB).
ZERO_COPY_BYTES = 256 * 1024

_TOKEN = struct.Struct("<Q")
_BUSY = struct.Struct("<I")
_COUNT = struct.Struct("<I")
#: The replies head: kind, token, busy microseconds, count.
_REPLIES_HEAD = struct.Struct("<cQII")


def _native_array(typecode: str, buffer) -> array:
    """The numbers in C{buffer}, written in this host's byte order."""
    numbers = array(typecode)
    numbers.frombytes(buffer)
    return numbers


def _swapped_array(typecode: str, buffer) -> array:
    """The numbers in C{buffer}, written in the byte order opposite to this host's."""
    numbers = array(typecode)
    numbers.frombytes(buffer)
    numbers.byteswap()
    return numbers


def _swapped_bytes(numbers: array) -> bytes:
    """C{numbers} in the byte order opposite to this host's (swaps C{numbers} in place)."""
    numbers.byteswap()
    return numbers.tobytes()


#: Arrays from and to the wire's byte order (little-endian), chosen once: a little-endian host
#: reads and writes its arrays as they are, without a copy; a big-endian one swaps each.
if sys.byteorder == "little":
    _array_from_wire, _array_to_wire = _native_array, array.tobytes
else:
    _array_from_wire, _array_to_wire = _swapped_array, _swapped_bytes


def unpack_ids(frame, offset: int, n: int) -> array:
    """The C{n} request ids (u64s) that start at C{offset} of C{frame}."""
    return _array_from_wire("Q", memoryview(frame)[offset : offset + 8 * n])


def pack_bodies(payloads: Sequence[Any]) -> tuple[bytes, list]:
    """C{(sizes, [body_1, ..., body_k])} for C{payloads}: packed if all are small."""
    sizes = array("I", map(len, payloads))
    if len(payloads) > 1 and max(sizes) < PACK_LIMIT:
        return _array_to_wire(sizes), [b"".join(payloads)]
    return _array_to_wire(sizes), list(payloads)


def unpack_bodies(frame, offset: int, n: int, bodies: Sequence[Any]) -> Sequence[Any]:
    """The payloads of a message whose sizes start at C{offset} of C{frame}."""
    if len(bodies) == n:
        return bodies
    sizes = _array_from_wire("I", memoryview(frame)[offset : offset + 4 * n])
    blob = bodies[0]
    payloads = []
    start = 0
    for size in sizes:
        end = start + size
        payloads.append(blob[start:end])
        start = end
    return payloads


def _work_message(ids: Sequence[int], payloads: Sequence[Any]) -> list:
    sizes, bodies = pack_bodies(payloads)
    return [_COUNT.pack(len(ids)) + _array_to_wire(array("Q", ids)) + sizes, *bodies]


def _cut(ids: Sequence[int], payloads: Sequence[Any], message: Callable) -> list[list]:
    """C{message(ids, payloads)} of each part of a batch of about L{MESSAGE_BYTES}."""
    messages = []
    start = 0
    size = 0
    for index, payload in enumerate(payloads):
        size += len(payload)
        if size >= MESSAGE_BYTES:
            end = index + 1
            messages.append(message(ids[start:end], payloads[start:end]))
            start, size = end, 0
    if start < len(payloads):
        messages.append(message(ids[start:], payloads[start:]))
    return messages


def encode_work(ids: Sequence[int], payloads: Sequence[Any]) -> list[list]:
    """The messages (each a list of frames) that carry a batch of requests to a worker."""
    return _cut(ids, payloads, _work_message)


def decode_work(frames: Sequence[Any]) -> tuple[array, Sequence[Any]]:
    """C{(ids, payloads)} of a plain work message (see L{is_mixed_work})."""
    meta = frames[0]
    (n,) = _COUNT.unpack_from(meta)
    return unpack_ids(meta, 4, n), unpack_bodies(meta, 4 + 8 * n, n, frames[1:])


def is_mixed_work(frames: Sequence[Any]) -> bool:
    """True for a work message that carries calls (read it with L{decode_mixed_work})."""
    return bool(_COUNT.unpack_from(frames[0])[0] & MIXED_BIT)


def _frames_of(payload: Any) -> list:
    return payload.frames if type(payload) is CallFrames else [payload]


#: A frame's entry in a mixed message's sizes: it travels as a frame of its own.
OWN_FRAME = 0xFFFFFFFF


def _pack_frames(parts: list[list]) -> tuple[bytes, list]:
    """C{(counts + sizes, frames)} of a mixed message's requests or replies: each request's
    frames as C{parts}, those under L{PACK_LIMIT} packed together in the first frame, the
    others (L{OWN_FRAME}) each a frame of its own, after it."""
    sizes = array("I")
    packed = []
    own = []
    for frames in parts:
        for frame in frames:
            size = len(frame)
            if size < PACK_LIMIT:
                sizes.append(size)
                packed.append(frame)
            else:
                sizes.append(OWN_FRAME)
                own.append(frame)
    counts = _array_to_wire(array("I", map(len, parts)))
    return counts + _array_to_wire(sizes), [b"".join(packed), *own]


def _unpack_frames(meta, offset: int, n: int, frames: Sequence[Any]) -> list[list]:
    """Each request's (or reply's) frames, from the counts and sizes at C{offset} of C{meta}
    and a mixed message's frames after its first (see L{_pack_frames})."""
    view = memoryview(meta)
    counts = _array_from_wire("I", view[offset : offset + 4 * n])
    offset += 4 * n
    sizes = _array_from_wire("I", view[offset : offset + 4 * sum(counts)])
    blob = frames[0]
    own = iter(frames[1:])
    flat = []
    start = 0
    for size in sizes:
        if size == OWN_FRAME:
            flat.append(next(own))
        else:
            end = start + size
            flat.append(blob[start:end])
            start = end
    parts = []
    start = 0
    for count in counts:
        end = start + count
        parts.append(flat[start:end])
        start = end
    return parts


def _mixed_work_message(ids: Sequence[int], payloads: Sequence[Any]) -> list:
    kinds = bytes(KIND_CALL if type(p) is CallFrames else KIND_BYTES for p in payloads)
    layout, frames = _pack_frames([_frames_of(p) for p in payloads])
    head = _COUNT.pack(len(ids) | MIXED_BIT) + _array_to_wire(array("Q", ids)) + kinds + layout
    return [head, *frames]


def encode_mixed_work(ids: Sequence[int], payloads: Sequence[Any]) -> list[list]:
    """L{encode_work} for a batch that may hold calls: the plain messages if it holds none."""
    if not any(type(p) is CallFrames for p in payloads):
        return encode_work(ids, payloads)
    return _cut(ids, payloads, _mixed_work_message)


def decode_mixed_work(frames: Sequence[Any]) -> tuple[array, list]:
    """C{(ids, payloads)} of a mixed work message: a call is a C{CallFrames}, a handler
    request its one frame."""
    meta = frames[0]
    n = _COUNT.unpack_from(meta)[0] & ~MIXED_BIT
    ids = unpack_ids(meta, 4, n)
    kinds = meta[4 + 8 * n : 4 + 9 * n]
    payloads = [
        CallFrames(part) if kind == KIND_CALL else part[0]
        for kind, part in zip(kinds, _unpack_frames(meta, 4 + 9 * n, n, frames[1:]), strict=True)
    ]
    return ids, payloads


def encode_cancel(ids: Sequence[int]) -> list:
    """The control message that cancels requests C{ids} a worker holds."""
    return [CANCEL + _array_to_wire(array("Q", ids))]


def decode_cancel(frame) -> array:
    """The ids of a cancel message's frame."""
    return unpack_ids(frame, 1, (len(frame) - 1) // 8)


def encode_hello(token: int, pid: int) -> list:
    return [HELLO + _TOKEN.pack(token), str(pid).encode()]


def encode_retire(token: int, reason: str) -> list:
    """A worker asks to be recycled: its replacement starts, then it is retired."""
    return [RETIRE + _TOKEN.pack(token), reason.encode()]


def encode_replies(
    token: int, ids: Sequence[int], statuses: bytes, payloads: Sequence[Any], busy: float = 0.0
) -> list:
    micros = min(round(busy * 1e6), 0xFFFFFFFF)
    sizes, bodies = pack_bodies(payloads)
    head = _REPLIES_HEAD.pack(REPLIES, token, micros, len(ids))
    return [head + _array_to_wire(array("Q", ids)) + statuses + sizes, *bodies]


def encode_mixed_replies(
    token: int, ids: Sequence[int], statuses: bytes, payloads: Sequence[Any], busy: float = 0.0
) -> list:
    """L{encode_replies} for replies that may hold calls' outcomes (C{CallFrames}): plain if
    none does."""
    if not any(type(p) is CallFrames for p in payloads):
        return encode_replies(token, ids, statuses, payloads, busy)
    micros = min(round(busy * 1e6), 0xFFFFFFFF)
    layout, frames = _pack_frames([_frames_of(p) for p in payloads])
    head = _REPLIES_HEAD.pack(REPLIES, token, micros, len(ids) | MIXED_BIT)
    return [head + _array_to_wire(array("Q", ids)) + statuses + layout, *frames]


def is_mixed_replies(head) -> bool:
    """True for a replies message (its first frame) that may carry calls' outcomes."""
    return len(head) >= _REPLIES_HEAD.size and bool(
        _COUNT.unpack_from(head, _REPLIES_HEAD.size - 4)[0] & MIXED_BIT
    )


def busy_seconds(head: bytes) -> float:
    """The handler time a replies message reports (its first frame)."""
    return _BUSY.unpack_from(head, 9)[0] / 1e6


def decode_replies(frames: Sequence[Any]) -> tuple[array, bytes, Sequence[Any]]:
    """C{(ids, statuses, payloads)} of a replies message (after L{frame_kind})."""
    head = frames[0]
    offset = _REPLIES_HEAD.size
    (n,) = _COUNT.unpack_from(head, offset - 4)
    if n & MIXED_BIT:
        return _decode_mixed_replies(head, n & ~MIXED_BIT, frames)
    ids = unpack_ids(head, offset, n)
    offset += 8 * n
    statuses = head[offset : offset + n]
    return ids, statuses, unpack_bodies(head, offset + n, n, frames[1:])


def _decode_mixed_replies(head: bytes, n: int, frames: Sequence[Any]) -> tuple:
    offset = _REPLIES_HEAD.size
    ids = unpack_ids(head, offset, n)
    offset += 8 * n
    statuses = head[offset : offset + n]
    parts = _unpack_frames(head, offset + n, n, frames[1:])
    payloads = [
        CallFrames(part) if status in (CALL_RESULT, CALL_RAISED) else part[0]
        for status, part in zip(statuses, parts, strict=True)
    ]
    return ids, statuses, payloads


def frame_kind(head: bytes) -> tuple[bytes, int]:
    """Split a producer-bound message's first frame into its kind and worker token."""
    return head[:1], _TOKEN.unpack_from(head, 1)[0]
