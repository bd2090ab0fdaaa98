"""Handlers bench/faults.py runs in its daemons' workers (``--pythonpath bench/``)."""

from __future__ import annotations

import os
import time


def echo(message: bytes) -> bytes:
    """Return the request unchanged."""
    return message


def sized(message: bytes) -> bytes:
    """Answer as many bytes as the request's decimal number says."""
    return b"x" * int(message)


def sleeps(message: bytes) -> bytes:
    """``sleep:SECONDS`` prints a line (the daemon logs it), sleeps, then echoes; else echo."""
    if message.startswith(b"sleep:"):
        print("sleeping", message[6:].decode(), flush=True)
        time.sleep(float(message[6:]))
    return message


def marks(message: bytes) -> bytes:
    """``PATH SECONDS``: create PATH (so that the caller can count the requests that ran),
    then sleep; anything without a space is echoed."""
    path, _, seconds = message.partition(b" ")
    if seconds:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY))
        time.sleep(float(seconds))
    return message


def forks(message: bytes) -> bytes:
    """Fork a child that sleeps for the request's seconds, holding this worker's stdout and
    stderr; answer b"<worker pid>:<child pid>"."""
    child = os.fork()
    if child == 0:
        try:
            time.sleep(float(message))
        finally:
            os._exit(0)
    return b"%d:%d" % (os.getpid(), child)


def prints(message: bytes) -> bytes:
    """Write as many bytes as the request says to stdout, with no newline; answer b"done"."""
    data = memoryview(b"x" * int(message))
    while data:
        data = data[os.write(1, data) :]
    return b"done"
