"""A part of the worker process that fails ends the whole process at once, in one line."""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

from gaspar_tw.handler import error_location

#: Exit status of a worker whose loop or relay thread failed. Not one of the statuses of
#: L{gaspar_tw.wire.control}: its parent (a pool or a worker host) treats it as any crash and
#: starts another worker, waiting longer each time one dies soon after its start.
EXIT_CRASHED = 1

#: The directory gaspar_tw is in: a failure is shown where our code was when it happened.
_TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PACKAGE = os.path.join(_TOP, "gaspar_tw", "")


def crashed(part: str, error: BaseException) -> NoReturn:
    """Say on stderr that C{part} failed with C{error} (and where), then exit now.

    Callable from any thread: the process ends even while another thread runs a handler
    or waits for work that can no longer come.
    """
    where = _ours(error) or error_location(error)
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    line = f"gaspar_tw worker: {part} failed: {name}: {error}"
    line += (f" ({where})" if where else "") + "; exiting"
    try:
        print(" ".join(line.splitlines()), file=sys.stderr, flush=True)
        sys.stdout.flush()  # what the handler printed, if anything is left
    finally:
        os._exit(EXIT_CRASHED)


def _ours(error: BaseException) -> str | None:
    """The innermost frame of C{error}'s traceback in gaspar_tw, as ``"file, line N"``."""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename.startswith(_PACKAGE):
            return f"{os.path.relpath(frame.filename, _TOP)}, line {frame.lineno}"
    return None
