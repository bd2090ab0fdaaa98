"""Functions tests/test_calls_edges.py calls in worker processes (importable there)."""

from __future__ import annotations

import sys
import threading


def kilobytes(n: int) -> bytes:
    return b"x" * (n * 1024)


def lock_at(index: int, at: int = 3):
    """C{index}, or a lock (which cannot be pickled) for item C{at}."""
    return threading.Lock() if index == at else index


def path() -> list[str]:
    return list(sys.path)


async def coroutine(x):
    return x


async def async_generator(x):
    yield x
