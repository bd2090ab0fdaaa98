"""The messages between the producer and its workers, as lists of ZeroMQ frames.

Work (producer -> one worker, on that worker's PUSH socket)::

    [ids, payload_1, ..., payload_n]

Replies and control (every worker -> producer, on the shared PULL socket)::

    [b"H" + token, pid]                                   worker ready
    [b"R" + token, ids, statuses, payload_1, ..., payload_n]   replies

C{token} is a worker process's unique number (u64), C{ids} the request ids as native u64s,
C{statuses} one byte a reply (L{OK} or L{ERROR}; an error payload is L{encode_error}'s JSON).
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

_TOKEN = struct.Struct("<Q")


def pack_ids(ids: Sequence[int]) -> bytes:
    return array("Q", ids).tobytes()


def unpack_ids(frame: bytes) -> array:
    ids = array("Q")
    ids.frombytes(frame)
    return ids


def encode_work(ids: Sequence[int], payloads: Sequence[Any]) -> list:
    return [pack_ids(ids), *payloads]


def decode_work(frames: Sequence[Any]) -> tuple[array, Sequence[Any]]:
    return unpack_ids(frames[0]), frames[1:]


def encode_hello(token: int, pid: int) -> list:
    return [HELLO + _TOKEN.pack(token), str(pid).encode()]


def encode_replies(
    token: int, ids: Sequence[int], statuses: bytes, payloads: Sequence[Any]
) -> list:
    return [REPLIES + _TOKEN.pack(token), pack_ids(ids), statuses, *payloads]


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
