"""Functions and types that tests/test_calls.py calls in worker processes (importable there)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    x: int
    y: float
    label: str


def echo(*args, **kwargs):
    """What it was given, as C{(args, kwargs)}."""
    return args, kwargs


def identity(value):
    return value


def pid() -> int:
    return os.getpid()


def scale(point: Point, factor: int) -> Point:
    return Point(point.x * factor, point.y * factor, point.label)


class Refused(ValueError):
    """An exception type the caller can catch by class."""


def refuse(reason: str):
    raise Refused(reason)


class NeedsTwoArguments(Exception):
    """Pickles with one argument and so cannot be unpickled: a RemoteError in the caller."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_unpicklable():
    raise NeedsTwoArguments(1, 2)


def unpicklable_result():
    return threading.Lock()


def length(data: bytes) -> int:
    return len(data)


def with_pid(value):
    """C{(the worker's pid, value)}: which process ran the call."""
    return os.getpid(), value


# -- tests/test_calls_cancel.py ----------------------------------------------------------


def create_file(path: str) -> None:
    """Create C{path}: the side effect a call cancelled before it was sent must not have."""
    open(path, "w").close()


def note_pid_and_wait(path: str, gate: str, seconds: float) -> int:
    """Write this worker's pid to C{path}, then wait up to C{seconds} for the file C{gate}
    (a call that runs until released, or until cancelled); returns the pid."""
    import time

    with open(path + ".part", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".part", path)
    deadline = time.monotonic() + seconds
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def bytes_of_size(n: int) -> bytes:
    return b"r" * n


# -- tests/test_calls_map.py -------------------------------------------------------------


def item_and_pid(item):
    """C{(item, the pid of the worker that ran it)}."""
    return item, os.getpid()


def refuse_at(bad, item):
    """C{item}, or L{Refused} for item C{bad}."""
    if item == bad:
        raise Refused(f"item {item} is bad")
    return item


def raise_unpicklable_at(bad, item):
    """C{item}, or an exception that does not unpickle in the caller for item C{bad}."""
    if item == bad:
        raise NeedsTwoArguments(item, "bad")
    return item


def mark_or_refuse(directory: str, bad: int, item: int) -> int:
    """Leave a file named C{item} in C{directory}; raise L{Refused} for item C{bad}, and take
    a while (50 ms) on the others, so the items sent after it still wait when it fails."""
    import time

    with open(os.path.join(directory, str(item)), "w"):
        pass
    if item == bad:
        raise Refused(f"item {item} is bad")
    time.sleep(0.05)
    return item
