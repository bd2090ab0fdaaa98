"""Running out of file descriptors at a listening port, logged calmly.

When the process's limit on open files is reached, Twisted's listening port closes each new
connection at once and logs three lines for it; L{logAcceptFailures} makes that one line a
second, and pauses accepting when Twisted has no spare descriptor left to do so (its
listening socket would otherwise wake the reactor in a busy loop). Connections already open
are served throughout.
"""

from __future__ import annotations

import resource

from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger
from zope.interface import implementer

log = Logger()

#: Connections refused for want of file descriptors are reported at most this often.
ACCEPT_FAILURE_LOG_INTERVAL = 1.0
#: How long a listening port stops accepting after a failed accept it could not recover from.
ACCEPT_PAUSE_SECONDS = 0.1

# What twisted.internet.tcp._accept logs when accept() fails (tests/test_limits.py notices if
# a Twisted release changes these): with a spare descriptor it accepts and closes each waiting
# connection; without one, or on another error (ENFILE, ENOBUFS), it leaves them waiting.
_RECOVERING = "EMFILE encountered; releasing reserved file descriptor."
_CLOSED = "EMFILE recovery: Closed socket from {address}"
_RECOVERED = "Re-reserving EMFILE recovery file descriptor."
_FAILED = "Could not accept new connection ({acceptError})"
_ACCEPT_FAILURES = frozenset({_RECOVERING, _CLOSED, _RECOVERED, _FAILED})


@implementer(ILogObserver)
class AcceptFailureLog:
    """A listening port's log observer: Twisted's per-connection accept failures become one
    line a second, counted; every other event goes on to C{observer}."""

    def __init__(self, port, observer: ILogObserver, clock) -> None:
        self.port = port
        self.address = _address(port)
        self.observer = observer
        self.clock = clock
        self.closed = 0
        self.error: str | None = None
        self._nextReport = 0.0
        self._report = None
        self._resume = None

    def __call__(self, event: dict) -> None:
        form = event.get("log_format")
        if form not in _ACCEPT_FAILURES or event.get("acceptError") == "ECONNABORTED":
            self.observer(event)  # (a client that gave up while queued: BSD only, harmless)
            return
        if form == _CLOSED:
            self.closed += 1
        elif form == _FAILED:
            self.error = event.get("acceptError")
            self._pause()
        if self._report is None and form in (_RECOVERED, _FAILED):
            delay = max(0.0, self._nextReport - self.clock.seconds())
            self._report = self.clock.callLater(delay, self._logReport)

    def _pause(self) -> None:
        # The listening socket stays readable: stop watching it for a moment, not every turn.
        if self._resume is None:
            self.port.stopReading()
            self._resume = self.clock.callLater(ACCEPT_PAUSE_SECONDS, self._resumeAccepting)

    def _resumeAccepting(self) -> None:
        self._resume = None
        if self.port.connected and not self.port.disconnecting:
            self.port.startReading()

    def _logReport(self) -> None:
        self._report = None
        self._nextReport = self.clock.seconds() + ACCEPT_FAILURE_LOG_INTERVAL
        closed, self.closed = self.closed, 0
        error, self.error = self.error or "EMFILE", None
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        log.warn(
            "cannot accept connections on {address}: {error} (file descriptor limit {limit});"
            " {closed} new connections closed unserved since the last report;"
            " open connections are still served",
            address=self.address,
            error=error,
            limit=soft,
            closed=closed,
        )


def logAcceptFailures(port: IListeningPort, clock) -> IListeningPort:
    """Make C{port} (a Twisted TCP or UNIX port) log failed accepts through L{AcceptFailureLog};
    other ports are returned as they are."""
    logger = getattr(port, "_logger", None)  # tcp.Port logs accept failures through it
    if isinstance(logger, Logger) and hasattr(port, "stopReading"):
        observer = AcceptFailureLog(port, logger.observer, clock)
        port._logger = Logger(namespace=logger.namespace, source=port, observer=observer)
    return port


def _address(port) -> str:
    host = port.getHost()
    where = getattr(host, "name", None)
    if where is None:
        where = f"{host.host}:{host.port}"
    return where.decode() if isinstance(where, bytes) else str(where)
