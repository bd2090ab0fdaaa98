"""Handlers used by the tests; workers import them via --pythonpath tests/."""

import os
import time


def tagged(message: bytes) -> bytes:
    """Return the worker's pid and the request: b"<pid>:<request>"."""
    return b"%d:%s" % (os.getpid(), message)


def text(message: bytes) -> str:
    return message.decode() + " ok"


def returns_int(message: bytes) -> int:
    return 42


def fail(message: bytes) -> bytes:
    raise KeyError("no such thing: " + message.decode())


def slow(message: bytes) -> bytes:
    """Sleep for the number of seconds in the request, then answer."""
    time.sleep(float(message or b"0"))
    return message


def echo_or_fail(message: bytes) -> bytes:
    """Echo the request, except b"boom", which raises."""
    if message == b"boom":
        raise ValueError("boom requested")
    return message
