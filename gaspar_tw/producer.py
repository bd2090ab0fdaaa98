"""The producer: a process pool with TCP front ends (the gaspar port and the framed port)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from gaspar_tw.addresses import ANOTHER_GASPAR, TCPAddress, cannot
from gaspar_tw.config import DEFAULT_BACKLOG, FRONT_ENDS, POOL, Config
from gaspar_tw.consumer import Consumer
from gaspar_tw.errors import HandlerError, ListenError
from gaspar_tw.handler import Handler
from gaspar_tw.ops.limits import raise_file_limit
from gaspar_tw.pool import ProcessPool, chained
from gaspar_tw.proctitle import address_text, producer_title, set_title
from gaspar_tw.server.accept import logAcceptFailures
from gaspar_tw.server.framed import FramedFactory
from gaspar_tw.server.gaspar import GasparFactory

log = Logger()


class _Default:
    """The C{endpoint} not given: the config's (port 10123 by default)."""

    def __repr__(self) -> str:
        return "DEFAULT_PORT"


_UNSET: Any = _Default()


def endpoint_description(endpoint: int | str | None) -> str | None:
    """C{10123} -> C{"tcp:10123:backlog=1024"}; a string is a Twisted server endpoint."""
    if endpoint is None or isinstance(endpoint, str):
        return endpoint
    return f"tcp:{int(endpoint)}:backlog={DEFAULT_BACKLOG}"


class Producer(ProcessPool):
    """Serve a L{Consumer}'s handler on C{endpoint} with C{workers} processes.

    C{endpoint} is a port number (default 10123), a server endpoint string (``"tcp:10123"``,
    ``"unix:/run/gaspar.sock"``), an L{IStreamServerEndpoint}, or C{None} for no listener
    (in-process L{submit} only). C{framed_endpoint}, if given, also serves the framed
    persistent protocol (L{gaspar_tw.wire.framed}) there. The other settings
    (C{max_pending}, C{timeout}, C{retry_on_crash}, C{idle_timeout}, C{drain_timeout},
    C{bind}, C{curve_keys}, ...) are L{gaspar_tw.config.Config}'s and work as the twistd
    options of the same names (see the README, "Operations"). Use it as a service
    (C{startService}/C{stopService}, e.g. under a C{MultiService} or twistd), or call
    L{start} to run a reactor until stopped.
    """

    scope = (POOL, FRONT_ENDS)
    kind = "producer"

    def __init__(
        self,
        consumer: Consumer | str | Handler,
        endpoint: int | str | IStreamServerEndpoint | None = _UNSET,
        workers: int | None = None,
        *,
        reactor: Any = None,
        config: Config | None = None,
        **settings: Any,
    ) -> None:
        if consumer is None:  # a pool's handler is optional; the producer serves its own
            raise HandlerError(
                "a producer serves its handler on TCP, and was given none: pass one"
                " ('mymodule:work' or a function); for calls only, use ProcessPool(workers=...)"
            )
        if endpoint is not _UNSET:
            settings["endpoint"] = endpoint
        self.factory: GasparFactory | None = None
        self.framedFactory: FramedFactory | None = None
        self.port: IListeningPort | None = None
        self.framedPort: IListeningPort | None = None
        self._listening: Deferred | None = None
        self._framedListening: Deferred | None = None
        super().__init__(consumer, workers, reactor=reactor, config=config, **settings)

    def whenReady(self) -> Deferred:
        """Fires when every worker is ready and the listeners (if any) are bound."""
        d = super().whenReady()
        for listening in (self._listening, self._framedListening):
            if listening is not None:
                d.addCallback(lambda _, listening=listening: chained(listening))
        return d.addCallback(lambda _: self)

    # -- the service -----------------------------------------------------------------------

    def _build(self) -> None:
        if self.dispatcher is not None:
            return
        super()._build()
        config = self.config
        arguments = (self.dispatcher, config.max_length, self.stats, config.idle_timeout_or_none)
        self.factory = GasparFactory(*arguments, self.reactor)
        self.framedFactory = FramedFactory(*arguments, self.reactor)

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges, and fail loudly now if the port is taken.
        super().privilegedStartService()
        self._unlessItFails(self._listen)

    def startService(self) -> None:
        self._unlessItFails(super().startService)

    def _unlessItFails(self, start: Callable[[], None]) -> None:
        """Run C{start}; if it raises, stop listening where this start began to (a port left
        open would take connections nobody answers) before the error goes on."""
        try:
            start()
        except BaseException:
            for d in (self._listening, self._framedListening):
                if d is not None:
                    d.addCallback(lambda port: port and port.stopListening())
                    d.addErrback(lambda failure: None)
            self._listening = self._framedListening = None
            self.port = self.framedPort = None
            raise

    def _startFrontEnds(self) -> None:
        self.factory.startIdleSweep()
        self.framedFactory.startIdleSweep()
        self.framedFactory.draining = False
        self._listen()
        if self.config.proctitle and self.endpoint is None:
            set_title(producer_title())

    def _listen(self) -> None:
        if self.endpoint is not None and self._listening is None:
            self._listening = self._listenOn(self.endpoint, self.factory, self._listened)
        if self.config.framed_endpoint is not None and self._framedListening is None:
            self._framedListening = self._listenOn(
                self.config.framed_endpoint, self.framedFactory, self._framedListened
            )

    def _listenOn(self, endpoint, factory, listened) -> Deferred:
        description = None
        if not IStreamServerEndpoint.providedBy(endpoint):
            description = endpoint_description(endpoint)
            endpoint = serverFromString(self.reactor, description)
        d = endpoint.listen(factory)
        failures = []
        d.addErrback(failures.append)
        if failures:  # synchronous failure (port in use, bad address): raise it to the caller
            error = failures[0].value
            if isinstance(error, CannotListenError | OSError):
                raise ListenError(_cannotListen(error, description or str(endpoint))) from error
            failures[0].raiseException()
        return d.addCallback(logAcceptFailures, self.reactor).addCallback(listened)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        log.info("gaspar_tw producer listening on {address}", address=_describe(port.getHost()))
        if self.config.proctitle:
            set_title(producer_title(port.getHost()))
        return port

    def _framedListened(self, port: IListeningPort) -> IListeningPort:
        self.framedPort = port
        log.info(
            "gaspar_tw producer listening on {address} (framed protocol)",
            address=_describe(port.getHost()),
        )
        return port

    # -- stopping --------------------------------------------------------------------------

    async def _stopIntake(self) -> None:
        listening = [d for d in (self._listening, self._framedListening) if d is not None]
        self._listening = self._framedListening = None
        for d in listening:
            d.addErrback(lambda f: None)
            port = await d
            if port is not None:
                await maybeDeferred(port.stopListening)
        self.port = self.framedPort = None
        self.framedFactory.draining = True

    def _busyConnections(self) -> int:
        # A client that has sent nothing yet is not waited for.
        return sum(1 for connection in self.factory.connections if connection.started)

    def _busy(self) -> bool:
        return super()._busy() or bool(self._busyConnections())

    def _logDraining(self) -> None:
        log.info(
            "draining {n} pending requests and {c} open connections (up to {t}s)",
            n=self.dispatcher.pending,
            c=self._busyConnections(),
            t=self.config.drain_timeout,
        )

    def _logDrainEnded(self) -> None:
        log.warn(
            "drain ended with {n} requests and {c} connections still open"
            " (--drain-timeout {t}s, or a second SIGTERM); failing them",
            n=self.dispatcher.pending,
            c=self._busyConnections(),
            t=self.config.drain_timeout,
        )

    def _afterFailAll(self) -> None:
        self.factory.stopIdleSweep()
        self.framedFactory.stopIdleSweep()
        for connection in list(self.factory.connections):
            if connection.reading:  # the others are closing already, after a reply or error
                connection.transport.abortConnection()
        for connection in list(self.framedFactory.connections):
            connection.close()  # its replies are all written by now

    # -- running stand-alone ---------------------------------------------------------------

    def start(self) -> None:
        """Run the reactor with this producer until SIGINT/SIGTERM (blocks).

        The process is taken to be the producer's own: its title is set and its soft limit
        on open files raised to the hard one (L{gaspar_tw.ops.limits.raise_file_limit}). If
        it cannot start (a port in use: L{gaspar_tw.errors.ListenError}), that error is
        raised once the reactor has stopped.
        """
        from twisted.logger import globalLogBeginner, textFileLogObserver

        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stderr)], redirectStandardIO=False
        )
        raise_file_limit()
        self.config = replace(self.config, proctitle=True)
        self.reactor.callWhenRunning(self._startOrStop)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stopIfRunning)
        self._startFailure: Failure | None = None
        self.reactor.run()
        if self._startFailure is not None:
            self._startFailure.raiseException()

    def _startOrStop(self) -> None:
        try:
            self.privilegedStartService()
            self.startService()
        except Exception:
            self._startFailure = Failure()
            log.error("gaspar_tw producer failed to start: {error}", error=self._startFailure.value)
            self.reactor.stop()

    def _stopIfRunning(self):
        if self.running:
            return self.stopService()
        return None


def _cannotListen(error: CannotListenError | OSError, description: str) -> str:
    """C{cannot listen on tcp:10123: address already in use (...)}, as twistd says it first."""
    if not isinstance(error, CannotListenError):
        return cannot("listen on", description, error)
    if error.interface is None:  # a UNIX socket: its port is the path
        path = os.fsdecode(error.port)
        if error.socketError == "Cannot acquire lock":
            return f"cannot listen on unix:{path}: its lock file is held ({ANOTHER_GASPAR})"
        return cannot("listen on", f"unix:{path}", error.socketError)
    address = TCPAddress(error.interface, error.port, ":" in error.interface)
    return cannot("listen on", address, error.socketError, address)


def _describe(address) -> str:
    """C{tcp 127.0.0.1:10123}, C{tcp [::1]:10123} or C{unix /run/gaspar.sock}, for the log."""
    kind = "unix" if getattr(address, "host", None) is None else str(address.type).lower()
    return f"{kind} {address_text(address)}"
