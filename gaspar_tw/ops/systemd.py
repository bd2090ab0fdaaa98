"""systemd's notify protocol: READY, RELOADING, STOPPING, WATCHDOG and STATUS on NOTIFY_SOCKET.

Nothing happens unless systemd (or a test) set C{NOTIFY_SOCKET}: each message is one datagram
of newline-separated C{NAME=value} lines on that C{AF_UNIX} socket, whose address starting
with C{@} is in the abstract namespace. L{SystemdNotifier} is the service twistd runs: it says
C{READY=1} once its C{whenReady} fires, pings C{WATCHDOG=1} at half of C{WATCHDOG_USEC} (when
the watchdog is meant for this process) and says C{STOPPING=1} when the drain starts or the
service stops. A graceful reload calls L{notify_reloading} as it starts and L{notify_ready}
once the new workers serve (or fails and keeps the old ones): systemd waits between the two
before C{systemctl reload} returns.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()

__all__ = [
    "SystemdNotifier",
    "notify",
    "notify_ready",
    "notify_reloading",
    "notify_socket_address",
    "watchdog_interval",
]


def notify_socket_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The address in C{NOTIFY_SOCKET} (abstract-namespace C{@name} as C{b"\\0name"}), or
    C{None} when it is unset or empty."""
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send C{lines} (C{"READY=1"}, C{"STATUS=..."}) as one message to systemd; C{False}
    when there is no C{NOTIFY_SOCKET} or the message could not be sent (as C{sd_notify})."""
    address = notify_socket_address(environ)
    if address is None:
        return False
    message = "\n".join(lines).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message, address)
        except OSError:
            return False
    return True


def notify_reloading(environ: Mapping[str, str] | None = None) -> bool:
    """C{RELOADING=1} (with C{MONOTONIC_USEC}, as C{Type=notify-reload} wants): a reload
    started; say L{notify_ready} when it is over."""
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading", environ=environ
    )


def notify_ready(status: str = "serving", environ: Mapping[str, str] | None = None) -> bool:
    """C{READY=1} and a one-line C{STATUS=}: serving (after start, or after a reload)."""
    return notify("READY=1", f"STATUS={status}", environ=environ)


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between C{WATCHDOG=1} pings: half of C{WATCHDOG_USEC}, if it is set and
    C{WATCHDOG_PID} is unset or this process's; else C{None}."""
    environ = os.environ if environ is None else environ
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def monotonic_usec() -> int:
    """C{CLOCK_MONOTONIC} in microseconds, as C{RELOADING=1} wants it in C{MONOTONIC_USEC}."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier(service.Service):
    """Tell systemd how this process is doing, when it runs under C{Type=notify}.

    C{whenReady} is called at start; C{READY=1} is sent when its Deferred fires, with
    C{status()} (a one-line C{STATUS=}) beside it. Start it after the services it watches.
    twistd's services find it by its name, L{NAME}.
    """

    NAME = "systemd"

    def __init__(
        self,
        whenReady: Callable[[], Deferred],
        status: Callable[[], str],
        reactor=None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.whenReady = whenReady
        self.status = status
        self.reactor = reactor
        self.environ = os.environ if environ is None else environ
        self.stopping = False
        self._watchdog = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether systemd asked for notifications (C{NOTIFY_SOCKET} is set)."""
        return notify_socket_address(self.environ) is not None

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        self.stopping = False
        interval = watchdog_interval(self.environ)
        if interval is not None:
            from twisted.internet.task import LoopingCall

            self._watchdog = LoopingCall(self._send, "WATCHDOG=1")
            self._watchdog.clock = self.reactor
            self._watchdog.start(interval, now=True)
        # Not before the reactor runs: until it has installed its signal handlers, a SIGTERM
        # sent by a service manager that was told READY would kill the process outright.
        self.reactor.callWhenRunning(
            lambda: self.whenReady().addCallbacks(lambda _: self.ready(), lambda _: None)
        )

    def ready(self) -> None:
        """C{READY=1}: serving (at start, and after a reload)."""
        if self.running and not self.stopping:
            self._sent(notify_ready(self.status(), self.environ))

    def reloading(self) -> None:
        """C{RELOADING=1}: a reload started; call L{ready} when it is done."""
        if self.running and not self.stopping:
            self._sent(notify_reloading(self.environ))

    def draining(self) -> None:
        """C{STOPPING=1}: the drain before exit started (said once)."""
        if not self.stopping and self.running:
            self.stopping = True
            self._send("STOPPING=1", "STATUS=stopping")

    def stopService(self):
        self.draining()
        super().stopService()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.running:
            watchdog.stop()

    def _send(self, *lines: str) -> None:
        self._sent(notify(*lines, environ=self.environ))

    def _sent(self, delivered: bool) -> None:
        if not delivered and not self._warned and self.enabled:
            self._warned = True
            log.warn(
                "cannot notify systemd at NOTIFY_SOCKET={address}: its messages are lost"
                " (is the socket there?)",
                address=self.environ.get("NOTIFY_SOCKET"),
            )
