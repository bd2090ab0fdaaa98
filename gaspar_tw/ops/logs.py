"""``--log-format json``: twistd's log events as one flat JSON object a line, where text would go.

Each line holds C{time} (ISO 8601, UTC), C{level}, C{namespace}, C{message} (the formatted
text, with the traceback for a failure), C{error} (the exception's type, for a failure) and the
fields the log call passed, each as plain JSON (C{repr} of what has no JSON form). Twisted's
bookkeeping (C{log_*}) is left out; a field named like a key of the line's own (those five, and
C{system}) is written as C{field_NAME}.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from string import Formatter
from time import time
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.python.reflect import qual, safe_repr, safe_str

#: The keys a line has of its own; an event's field of the same name is written as field_NAME.
RESERVED = frozenset({"time", "level", "namespace", "message", "error", "system"})
#: What twisted.python.log (the legacy API) adds to its events; the text already says it.
_LEGACY = frozenset({"message", "time", "system", "isError", "failure", "why", "format", "printed"})
#: How deep lists and dicts in a field are turned into JSON before the rest is repr()'d.
_MAX_DEPTH = 4


def eventAsRecord(event: Mapping[str, Any]) -> dict[str, Any]:
    """The flat, JSON-ready dict that L{jsonLinesObserver} writes for C{event}."""
    legacy = event.get("log_namespace") == "log_legacy"
    message = _message(event)
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        message += "\n" + failure.getTraceback()
    elif legacy and event.get("isError"):
        failure = event.get("failure")  # log.err(): its text already has the traceback
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _isoTime(event.get("log_time")),
        "level": str(getattr(level, "name", level or "info")),
        "namespace": str(event.get("log_namespace", "")),
        "message": message,
    }
    if isinstance(failure, Failure):
        record["error"] = _typeName(failure.type)
    system = event.get("log_system")
    if system not in (None, "-"):
        record["system"] = _plain(system)
    for key, value in event.items():
        key = str(key)
        if key.startswith("log_") or key == "__class_uuid__" or (legacy and key in _LEGACY):
            continue
        record[f"field_{key}" if key in RESERVED else key] = _plain(value)
    return record


def _line(event: Mapping[str, Any]) -> str:
    try:
        record = eventAsRecord(event)
    except Exception as e:  # a line that says so beats an observer Twisted disables
        record = {
            "time": _isoTime(event.get("log_time")),
            "level": "error",
            "namespace": __name__,
            "message": f"unable to write a log event as JSON: {safe_repr(e)}: {safe_repr(event)}",
        }
    # ensure_ascii: no raw U+2028 or U+0085 either, which some readers split lines on.
    return json.dumps(record, ensure_ascii=True, allow_nan=False) + "\n"


def jsonLinesObserver(outFile: IO[str]) -> FileLogObserver:
    """An observer writing each event to C{outFile} as one line of flat JSON."""
    return FileLogObserver(outFile, _line)


def _isoTime(when: Any) -> str:
    if not isinstance(when, (int, float)) or not math.isfinite(when):
        when = time()
    stamp = datetime.fromtimestamp(when, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _CallingFields(Mapping):
    """An event's fields for C{str.format}, where C{{name()}} calls the field, as Twisted's."""

    def __init__(self, event: Mapping[str, Any]) -> None:
        self._event = event

    def __getitem__(self, key: str) -> Any:
        if key.endswith("()"):
            return self._event[key[:-2]]()
        return self._event[key]

    def __iter__(self):
        return iter(self._event)

    def __len__(self) -> int:
        return len(self._event)


def _message(event: Mapping[str, Any]) -> str:
    """The event's text; for a format that cannot be filled, the format and why."""
    form = event.get("log_format")
    if form is None:
        return ""
    if isinstance(form, bytes):
        form = form.decode("utf-8", "replace")
    if not isinstance(form, str):
        return f"unformattable log_format {safe_repr(form)}"
    try:
        return str(Formatter().vformat(form, (), _CallingFields(event)))
    except Exception as e:
        if "log_flattened" in event:  # an event rebuilt from JSON: only its flattened text is left
            return formatEvent(event)
        return f"{form} [unformattable: {_typeName(type(e))}: {safe_str(e)}]"


def _typeName(kind: Any) -> str:
    if isinstance(kind, type) and kind.__module__ == "builtins":
        return kind.__qualname__
    return qual(kind) if isinstance(kind, type) else str(kind)


def _plain(value: Any, depth: int = 0) -> Any:
    """C{value} as JSON: itself if it already is, bytes decoded, containers in turn, else repr."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # an IntEnum as its number
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return repr(data)
    if depth < _MAX_DEPTH:
        if isinstance(value, (list, tuple)):
            return [_plain(item, depth + 1) for item in value]
        if isinstance(value, dict):
            return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    return safe_repr(value)


def twistdLogFile(config) -> IO[str]:
    """The file twistd would log text to, given its (parent) options: stdout or --logfile."""
    logfile = config.get("logfile")
    if logfile == "-" or (config.get("nodaemon") and not logfile):
        if logfile == "-" and not config.get("nodaemon"):
            raise SystemExit("Daemons cannot log to stdout, exiting!")
        return sys.stdout
    logFile = LogFile.fromFullPath(logfile or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):  # rotate on SIGUSR1, as twistd's text log does

        def rotate(signum, frame):
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return logFile


def useForApplication(application, observer: ILogObserver) -> None:
    """Make twistd log to C{observer}: an Application's ILogObserver, unless --logger is given."""
    setComponent = getattr(application, "setComponent", None)
    if setComponent is not None:
        setComponent(ILogObserver, observer)
