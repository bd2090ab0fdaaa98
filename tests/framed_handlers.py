"""Handlers for the framed-protocol tests: b"fail..." raises, b"sleep:S" sleeps S seconds,
b"size:N" answers N bytes; anything else is echoed."""

import time


def mixed(message: bytes) -> bytes:
    if message.startswith(b"fail"):
        raise ValueError("asked to fail: " + message.decode())
    if message.startswith(b"sleep:"):
        print("sleeping", message[6:].decode(), flush=True)  # tests wait for this log line
        time.sleep(float(message[6:]))
    if message.startswith(b"size:"):
        return b"x" * int(message[5:])
    return message
