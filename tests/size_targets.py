"""Functions tests/test_calls_sizes_and_paths.py calls in worker processes."""

from __future__ import annotations

import os
import time


def size(data) -> int:
    return len(data)


def make(n: int) -> bytes:
    return b"r" * n


def identity(x):
    return x


def fail_at(x, bad=5):
    if x == bad:
        raise ValueError(f"item {x}")
    return x


def slow_fail(x):
    """Item 0 raises late; item 1 raises at once."""
    if x == 0:
        time.sleep(0.5)
        raise ValueError("item 0")
    if x == 1:
        raise ValueError("item 1")
    return x


def spin(seconds: float) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return os.getpid()


def mark(path: str) -> int:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return os.getpid()


def module_file(name: str) -> str:
    """Where the worker imports the module C{name} from."""
    import importlib

    return importlib.import_module(name).__file__
