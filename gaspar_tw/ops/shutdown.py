"""SIGTERM under twistd: drain the producer first, then stop the reactor so twistd exits 0.

twistd's reactor answers SIGTERM by stopping at once and remembering the signal; once the
reactor has stopped, twistd kills itself with that signal again (C{_exitSignal} in
C{twisted.application.app}), so even an orderly stop exits "killed by SIGTERM". This service
takes SIGTERM over once the reactor runs: it drains the producer while the reactor keeps
running, then calls C{reactor.stop()} itself, so no exit signal is recorded and a completed
drain exits 0. If the drain times out, or a second SIGTERM ends it early, it hands the signal
to the reactor's own handler: twistd then exits by the signal, as it always did, which tells
a supervisor that requests were cut off.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from twisted.application import service
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from gaspar_tw.ops.signals import OperatorSignals

log = Logger()


class DrainOnTerm(service.Service):
    """Make SIGTERM mean "drain C{producer}, then exit 0" (see the module docstring); and,
    through L{OperatorSignals}, SIGHUP reload and SIGTTIN/SIGTTOU resize it.

    C{onDrain}, if given, is called (in the reactor thread) as the drain starts.
    """

    def __init__(self, producer, reactor=None, onDrain: Callable[[], None] | None = None) -> None:
        self.producer = producer
        self.reactor = reactor
        self.onDrain = onDrain
        self.signals = OperatorSignals(producer, reactor)
        self._reactorHandler = None
        self._terminating = False
        self._termBeforeRun = False

    def startService(self) -> None:
        super().startService()
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        self.signals.reactor = self.reactor
        self.signals.startService()
        # A daemonising twistd returns to its caller before the reactor runs and installs its
        # handlers: a SIGTERM sent then (say, `kill $(cat twistd.pid)` at once) would kill the
        # process outright, leaving its pid file. Remember it, and drain once running.
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, self._onEarlyTerm)
        # The reactor installs its own handlers as it starts; take over after that.
        self.reactor.callWhenRunning(self._install)

    def _onEarlyTerm(self, signum: int, frame) -> None:
        self._termBeforeRun = True

    def stopService(self) -> None:
        super().stopService()
        self.signals.stopService()
        handler = signal.getsignal(signal.SIGTERM)
        if self._reactorHandler is not None and handler == self._onTerm:
            signal.signal(signal.SIGTERM, self._reactorHandler)
        elif handler == self._onEarlyTerm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _install(self) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if handler == self._onEarlyTerm:  # a reactor that installs no handlers of its own
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if self._termBeforeRun:
                signal.raise_signal(signal.SIGTERM)
        elif callable(handler) and self.running:  # else no reactor handler to defer to
            self._reactorHandler = handler
            signal.signal(signal.SIGTERM, self._onTerm)
            if self._termBeforeRun:
                self._onTerm(signal.SIGTERM, None)

    def _onTerm(self, signum: int, frame) -> None:
        if self._terminating:
            log.warn("second SIGTERM: ending the drain now")
            self.producer.endDrain()
            return
        self._terminating = True
        log.info("received SIGTERM: draining, then stopping")
        self.reactor.callFromThread(self._drainThenStop, signum)

    def _drainThenStop(self, signum: int) -> None:
        def stop(completed: bool) -> None:
            if not completed:
                self._reactorHandler(signum, None)
                return
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass

        if self.onDrain is not None:
            self.onDrain()
        self.producer.drain().addCallback(stop)
