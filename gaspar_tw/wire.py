"""The messages between the producer and its workers, as lists of ZeroMQ frames.

Work (producer -> one worker, on that worker's PUSH socket)::

    [ids, sizes, body_1, ..., body_k]

Replies and control (every worker -> producer, on the shared PULL socket)::

    [b"H" + token, pid]                                               worker ready
    [b"R" + token + busy, ids, statuses, sizes, body_1, ..., body_k]  replies

C{token} is a worker process's unique number (u64), C{busy} the microseconds the handler
spent on these requests (u32, so the producer can size its batches), C{ids} the request
ids as native u64s, C{sizes} each payload's length as native u32s, C{statuses} one byte a
reply (L{OK} or L{ERROR}; an error payload is L{encode_error}'s JSON). Small payloads travel
packed in one frame (k = 1: one ZeroMQ frame costs as much as a few hundred bytes of
copying); a message holding a payload of L{PACK_LIMIT} bytes or more carries one frame per
payload (k = n), sent without a copy. L{encode_work} cuts a batch into messages of about
L{MESSAGE_BYTES}, so a worker can start on the first requests while the rest are on their way.
Nothing here imports Twisted: the worker process uses this module too.
"""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Sequence
from typing import Any

OK = 0
ERROR = 1

HELLO = b"H"
REPLIES = b"R"

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


def pack_ids(ids: Sequence[int]) -> bytes:
    return array("Q", ids).tobytes()


def unpack_ids(frame: bytes) -> array:
    ids = array("Q")
    ids.frombytes(frame)
    return ids


def pack_bodies(payloads: Sequence[Any]) -> list:
    """C{[sizes, body_1, ..., body_k]} for C{payloads}: packed if all are small."""
    sizes = array("I", map(len, payloads))
    if len(payloads) > 1 and max(sizes) < PACK_LIMIT:
        return [sizes.tobytes(), b"".join(payloads)]
    return [sizes.tobytes(), *payloads]


def unpack_bodies(sizes_frame: bytes, bodies: Sequence[Any]) -> Sequence[Any]:
    """The payloads of C{[sizes, body_1, ..., body_k]}, as a sequence of bytes."""
    sizes = array("I")
    sizes.frombytes(sizes_frame)
    if len(bodies) == len(sizes):
        return bodies
    blob = bodies[0]
    payloads = []
    offset = 0
    for size in sizes:
        end = offset + size
        payloads.append(blob[offset:end])
        offset = end
    return payloads


def encode_work(ids: Sequence[int], payloads: Sequence[Any]) -> list[list]:
    """The messages (each a list of frames) that carry a batch of requests to a worker."""
    messages = []
    start = 0
    size = 0
    for index, payload in enumerate(payloads):
        size += len(payload)
        if size >= MESSAGE_BYTES:
            end = index + 1
            messages.append([pack_ids(ids[start:end]), *pack_bodies(payloads[start:end])])
            start, size = end, 0
    if start < len(payloads):
        messages.append([pack_ids(ids[start:]), *pack_bodies(payloads[start:])])
    return messages


def decode_work(frames: Sequence[Any]) -> tuple[array, Sequence[Any]]:
    return unpack_ids(frames[0]), unpack_bodies(frames[1], frames[2:])


def encode_hello(token: int, pid: int) -> list:
    return [HELLO + _TOKEN.pack(token), str(pid).encode()]


def encode_replies(
    token: int, ids: Sequence[int], statuses: bytes, payloads: Sequence[Any], busy: float = 0.0
) -> list:
    head = REPLIES + _TOKEN.pack(token) + _BUSY.pack(min(int(busy * 1e6), 0xFFFFFFFF))
    return [head, pack_ids(ids), statuses, *pack_bodies(payloads)]


def busy_seconds(head: bytes) -> float:
    """The handler time a replies message reports (its first frame)."""
    return _BUSY.unpack_from(head, 9)[0] / 1e6


def decode_replies(frames: Sequence[Any]) -> tuple[array, bytes, Sequence[Any]]:
    """C{(ids, statuses, payloads)} of a replies message (after L{frame_kind})."""
    return unpack_ids(frames[1]), frames[2], unpack_bodies(frames[3], frames[4:])


def frame_kind(head: bytes) -> tuple[bytes, int]:
    """Split a producer-bound message's first frame into its kind and worker token."""
    return head[:1], _TOKEN.unpack_from(head, 1)[0]


def encode_error(exc: BaseException, traceback_text: str) -> bytes:
    return json.dumps(
        {"type": type(exc).__name__, "message": str(exc), "traceback": traceback_text}
    ).encode()


def decode_error(payload: bytes) -> dict:
    try:
        info = json.loads(payload)
        return {
            "type": str(info.get("type", "Exception")),
            "message": str(info.get("message", "")),
            "traceback": str(info.get("traceback", "")),
        }
    except (ValueError, AttributeError):
        return {"type": "Exception", "message": payload.decode("utf-8", "replace"), "traceback": ""}
