"""Handlers the benchmark runs in every pool, importable by all of them (bench/ on the path)."""

from __future__ import annotations

#: Iterations of the CPU-bound loop: about 5 ms of pure Python on the 2-core benchmark box.
CPU_LOOP = 100_000


def echo(message: bytes) -> bytes:
    """Return the request unchanged."""
    return message


def cpu(message: bytes) -> bytes:
    """Spend about 5 ms of CPU in a pure-Python loop, then echo."""
    total = 0
    for i in range(CPU_LOOP):
        total += i * i
    return message
