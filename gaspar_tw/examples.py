"""Handlers that ship with gaspar_tw, for trying the daemon and for benchmarks."""

from __future__ import annotations

import hashlib


def echo(message: bytes) -> bytes:
    """Return the request unchanged."""
    return message


def upper(message: bytes) -> bytes:
    """Return the request in upper case."""
    return message.upper()


def sha256(message: bytes) -> bytes:
    """Return the hex SHA-256 digest of the request."""
    return hashlib.sha256(message).hexdigest().encode()


def burn(message: bytes) -> bytes:
    """Spend a fixed amount of CPU (a pure-Python loop), then echo: a CPU-bound stand-in."""
    total = 0
    for i in range(60_000):
        total += i * i
    return message
