"""A worker's report of an exception, its type, message and traceback as JSON (both ends use
it: a handler's error and a call's)."""

from __future__ import annotations

import json


def _message(exc: BaseException) -> str:
    """C{str(exc)}, or what C{traceback} prints when that raises."""
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def encode_error(exc: BaseException, traceback_text: str) -> bytes:
    """The report of C{exc}: never raises, whatever C{exc}'s C{__str__} does."""
    return json.dumps(
        {"type": type(exc).__name__, "message": _message(exc), "traceback": traceback_text}
    ).encode()


def decode_error(payload: bytes) -> dict:
    """C{{"type", "message", "traceback"}} of a report, read leniently (a payload that is not
    one becomes an C{Exception} whose message is the payload)."""
    try:
        info = json.loads(payload)
        return {
            "type": str(info.get("type", "Exception")),
            "message": str(info.get("message", "")),
            "traceback": str(info.get("traceback", "")),
        }
    except (ValueError, AttributeError):
        return {"type": "Exception", "message": payload.decode("utf-8", "replace"), "traceback": ""}
