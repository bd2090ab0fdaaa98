"""``--log-format json``: twistd's log events as one JSON object a line, where text would go.

Each line is Twisted's own L{eventAsJSON} (every structured field, C{log_namespace},
C{log_time}, C{log_format}, ...) plus two plain strings for log shippers: C{level} and
C{text}, the formatted message (with the traceback, for a failure).
"""

from __future__ import annotations

import signal
import sys
from typing import IO

from twisted.logger import FileLogObserver, ILogObserver, eventAsJSON, formatEvent
from twisted.python.logfile import LogFile


def _line(event: dict) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    level = event.get("log_level")
    record = dict(event, text=text, level=getattr(level, "name", None))
    return eventAsJSON(record) + "\n"


def jsonLinesObserver(outFile: IO[str]) -> FileLogObserver:
    """An observer writing each event to C{outFile} as one line of JSON."""
    return FileLogObserver(outFile, _line)


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
