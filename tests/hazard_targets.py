"""Functions tests/test_calls_hazards.py calls in worker processes (importable there)."""

from __future__ import annotations

import os
import signal
import sys


def pid() -> int:
    return os.getpid()


def mark_then_spin(path: str, n: int) -> int:
    """Append this worker's pid to C{path}, then spend a while in one C call (no Python
    signal handler runs until it returns, as in numpy, zlib or hashlib)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return sum(range(n))


class StrFails(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception has no str")


def raise_str_fails():
    raise StrFails()


def exit_3():
    sys.exit(3)  # what argparse's parser.error() does, say


def own_alarm():
    """Bound its own work with SIGALRM, as timeout decorators do, and cancel the alarm."""

    def expired(signum, frame):
        raise TimeoutError("own_alarm's alarm")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    try:
        return "done"
    finally:
        signal.alarm(0)


def sleep(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds
