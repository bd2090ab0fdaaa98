"""Handlers and functions the benchmark runs in every pool, importable by all of them (bench/
on the path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def add(a: int, b: int) -> int:
    """The tiny function of the call() rows: two small integers in, one out."""
    return a + b


def square(x: int) -> int:
    """The tiny function the map rows apply to every item."""
    return x * x


def caller(run: Callable[..., Any], handler: str) -> Callable[[bytes], Any]:
    """C{payload -> run(function, *arguments)} for a function-call row, chosen once: for
    C{"add"}, C{run(add, 1, 2)} (the payload unused); otherwise C{run(handler, payload)}."""
    if handler == "add":
        return lambda payload: run(add, 1, 2)
    function = globals()[handler]
    return lambda payload: run(function, payload)
