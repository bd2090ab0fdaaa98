"""The operator's signals under twistd: SIGHUP reloads the workers, SIGTTIN adds one, SIGTTOU
retires one; SIGUSR2 is ignored (each logged).

Without this, SIGHUP kills twistd (exit 129), SIGTTIN and SIGTTOU stop it (state C{T}) and
SIGUSR2 kills it. The handlers are installed as the service starts (twistd installs none of
its own for these) and only schedule the work on the reactor.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gaspar_tw.ops.systemd import notify_ready, notify_reloading

log = Logger()


class Resizable(Protocol):
    """What the signals act on: a L{gaspar_tw.ProcessPool} or a worker host."""

    @property
    def workers(self) -> int: ...
    def reload(self) -> bool: ...
    def whenReloaded(self) -> Deferred: ...
    def addWorker(self) -> int: ...
    def removeWorker(self) -> int: ...


class OperatorSignals(service.Service):
    """Route SIGHUP, SIGTTIN, SIGTTOU and SIGUSR2 to C{target} (see the module docstring)."""

    def __init__(self, target: Resizable, reactor: Any = None) -> None:
        self.target = target
        self.reactor = reactor
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2):
            self._previous[signum] = signal.signal(signum, self._onSignal)

    def stopService(self) -> None:
        super().stopService()
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._onSignal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _onSignal(self, signum: int, frame) -> None:
        self.reactor.callFromThread(self.handle, signum)

    def handle(self, signum: int) -> None:
        """Act on C{signum} (on the reactor thread)."""
        name = signal.Signals(signum).name
        if getattr(self.target, "draining", False) and signum != signal.SIGUSR2:
            log.warn("received {name} while draining (stopping): ignored", name=name)
            return
        if signum == signal.SIGHUP:
            log.info(
                "received SIGHUP: replacing every worker with one that imports the handler anew"
            )
            if self.target.reload():
                notify_reloading()  # systemd, if it asked (NOTIFY_SOCKET)
                self.target.whenReloaded().addCallback(self._reloaded)
            else:
                log.warn("no local worker to reload")
        elif signum == signal.SIGTTIN:
            log.info("received SIGTTIN: {n} workers now", n=self.target.addWorker())
        elif signum == signal.SIGTTOU:
            before = self.target.workers
            after = self.target.removeWorker()
            if after < before:
                log.info("received SIGTTOU: {n} workers now", n=after)
            else:
                log.warn("received SIGTTOU: keeping the last worker ({n})", n=after)
        else:
            log.warn("received {name}: it has no meaning here; ignored", name=name)

    @staticmethod
    def _reloaded(outcome: str | None) -> None:
        if outcome in ("ok", "failed"):  # not "stopped": no READY=1 after STOPPING=1
            notify_ready(f"serving (reload {outcome})")
