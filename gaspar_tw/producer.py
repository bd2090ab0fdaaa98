"""The producer: a Twisted service that owns the TCP listener, the workers and the dispatcher."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from gaspar_tw.consumer import Consumer
from gaspar_tw.dispatch.dispatcher import DEFAULT_TIMEOUT, Dispatcher, default_max_pending
from gaspar_tw.errors import ServiceStopped
from gaspar_tw.handler import Handler
from gaspar_tw.ops.limits import raise_file_limit
from gaspar_tw.ops.shutdown import DEFAULT_DRAIN_TIMEOUT
from gaspar_tw.proctitle import address_text, producer_title, set_title
from gaspar_tw.server.accept import logAcceptFailures
from gaspar_tw.server.framed import FramedFactory
from gaspar_tw.server.gaspar import (
    DEFAULT_BACKLOG,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LENGTH,
    GasparFactory,
)
from gaspar_tw.stats import Stats
from gaspar_tw.wire import messages
from gaspar_tw.workers.local import WorkerPool

log = Logger()

DEFAULT_PORT = 10123
#: How often a drain checks whether every request and connection is done.
DRAIN_POLL_SECONDS = 0.05


def default_worker_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def endpoint_description(endpoint: int | str | None) -> str | None:
    """C{10123} -> C{"tcp:10123:backlog=1024"}; a string is a Twisted server endpoint."""
    if endpoint is None or isinstance(endpoint, str):
        return endpoint
    return f"tcp:{int(endpoint)}:backlog={DEFAULT_BACKLOG}"


class Producer(service.Service):
    """Serve a L{Consumer}'s handler on C{endpoint} with C{workers} processes.

    C{endpoint} is a port number, a server endpoint string (``"tcp:10123"``,
    ``"unix:/run/gaspar.sock"``), an L{IStreamServerEndpoint}, or C{None} for no listener
    (in-process L{submit} only). C{framed_endpoint}, if given, also serves the framed
    persistent protocol (L{gaspar_tw.server.framed}) there. C{max_pending}, C{timeout},
    C{retry_on_crash}, C{idle_timeout} and C{drain_timeout} work as the twistd options of the
    same names (see the README, "Operations"). C{bind} (a ZeroMQ address) lets remote worker
    hosts join (C{workers} may then be 0); C{curve_keys} protects it with CURVE. Use it as a
    service (C{startService}/C{stopService}, e.g. under a C{MultiService} or twistd), or
    call L{start} to run a reactor until stopped.
    """

    def __init__(
        self,
        consumer: Consumer | str | Handler,
        endpoint: int | str | IStreamServerEndpoint | None = DEFAULT_PORT,
        workers: int | None = None,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_pending: int | None = None,
        window: int = 32,
        retry_on_crash: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        pythonpath: Sequence[str] = (),
        framed_endpoint: int | str | IStreamServerEndpoint | None = None,
        proctitle: bool = False,
        bind: str | None = None,
        curve_keys: str | None = None,
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.consumer = consumer if isinstance(consumer, Consumer) else Consumer(consumer)
        self.workers = default_worker_count() if workers is None else int(workers)
        if self.workers < (0 if bind else 1):
            raise ValueError(f"workers must be at least 1 (0 with bind), not {self.workers}")
        #: ZeroMQ address for remote workers (L{gaspar_tw.workers.remote}), e.g. tcp://10.0.0.1:5570.
        self.bind = bind
        self.curve_keys = curve_keys
        self.remote = None
        self.endpoint = endpoint
        self.drain_timeout = drain_timeout
        #: Set the process title (C{gaspar-tw producer :10123}); for a process of our own.
        self.proctitle = proctitle
        if max_pending is None:
            max_pending = default_max_pending(self.workers)
        #: Counters of everything this producer does (read by gaspar_tw.metrics).
        self.stats = Stats()
        self.dispatcher = Dispatcher(
            reactor,
            window=window,
            max_pending=max_pending,
            retry_on_crash=retry_on_crash,
            timeout=timeout,
            stats=self.stats,
        )
        self.pool = WorkerPool(
            reactor, self.consumer.spec, self.workers, self.dispatcher, pythonpath, self.stats
        )
        self.factory = GasparFactory(self.dispatcher, max_length, self.stats, idle_timeout, reactor)
        self.port: IListeningPort | None = None
        self.framed_endpoint = framed_endpoint
        self.framedFactory = FramedFactory(
            self.dispatcher, max_length, self.stats, idle_timeout, reactor
        )
        self.framedPort: IListeningPort | None = None
        self._framedListening: Deferred | None = None
        self.hub = None
        self._listening: Deferred | None = None
        self._draining: Deferred | None = None

    # -- the in-process API ----------------------------------------------------------------

    def submit(self, payload: bytes) -> Deferred:
        """Run the handler on C{payload} in a worker; the Deferred fires with its reply.

        Must be called in the reactor thread. Fails with L{gaspar_tw.RemoteError} when the
        handler raises, L{gaspar_tw.Overloaded} when too many requests wait, and
        L{gaspar_tw.ServiceStopped} when the producer is not running.
        """
        return self.dispatcher.submit(payload)

    def whenReady(self) -> Deferred:
        """Fires when every worker is ready and the listener (if any) is bound."""
        d = self.pool.whenReady()
        for listening in (self._listening, self._framedListening):
            if listening is not None:
                d.addCallback(lambda _, listening=listening: _chain(listening))
        return d.addCallback(lambda _: self)

    def workerPids(self) -> list[int]:
        """The process ids of the current worker processes."""
        return self.pool.pids()

    # -- the service -----------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges, and fail loudly now if the port is taken.
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        from gaspar_tw.workers.channels import ChannelHub

        self.dispatcher.accepting = True
        self._draining = None
        self.dispatcher.start()
        self.factory.startIdleSweep()
        self.framedFactory.startIdleSweep()
        self.framedFactory.draining = False
        self.hub = ChannelHub(self._onWorkerMessage)
        self.pool.start(self.hub)
        if self.bind is not None:
            from gaspar_tw.workers.remote import RemoteWorkers

            self.remote = RemoteWorkers(
                self.reactor, self.dispatcher, self.bind, self.stats, self.curve_keys
            )
            self.remote.start(self.hub.factory)
        log.info(
            "gaspar_tw producer: {n} workers running {spec}",
            n=self.workers,
            spec=self.consumer.spec,
        )
        if self._listening is None:
            self._listen()
        if self.proctitle and self.endpoint is None:
            set_title(producer_title())

    def _listen(self) -> None:
        if self.endpoint is not None and self._listening is None:
            self._listening = self._listenOn(self.endpoint, self.factory, self._listened)
        if self.framed_endpoint is not None and self._framedListening is None:
            self._framedListening = self._listenOn(
                self.framed_endpoint, self.framedFactory, self._framedListened
            )

    def _listenOn(self, endpoint, factory, listened) -> Deferred:
        if not IStreamServerEndpoint.providedBy(endpoint):
            endpoint = serverFromString(self.reactor, endpoint_description(endpoint))
        d = endpoint.listen(factory)
        failures = []
        d.addErrback(failures.append)
        if failures:  # synchronous failure (port in use, bad address): raise it to the caller
            failures[0].raiseException()
        return d.addCallback(logAcceptFailures, self.reactor).addCallback(listened)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        log.info("gaspar_tw producer listening on {address}", address=_describe(port.getHost()))
        if self.proctitle:
            set_title(producer_title(port.getHost()))
        return port

    def _framedListened(self, port: IListeningPort) -> IListeningPort:
        self.framedPort = port
        log.info(
            "gaspar_tw producer listening on {address} (framed protocol)",
            address=_describe(port.getHost()),
        )
        return port

    def _onWorkerMessage(self, frames: list) -> None:
        kind, token = messages.frame_kind(frames[0])
        if kind == messages.REPLIES:
            ids, statuses, payloads = messages.decode_replies(frames)
            busy = messages.busy_seconds(frames[0])
            self.dispatcher.repliesReceived(token, ids, statuses, payloads, busy)
        elif kind == messages.HELLO:
            self.pool.hello(token, int(frames[1]))

    def drain(self) -> Deferred:
        """Stop listening; wait for accepted requests to be answered and their replies sent.

        Waits at most C{drain_timeout} seconds. Fires with C{True} if everything finished,
        C{False} if the time ran out. Calling it again returns the same outcome.
        """
        if self._draining is None:
            self._draining = ensureDeferred(self._drain())
        return _chain(self._draining)

    def endDrain(self) -> None:
        """Make a drain in progress give up at its next check (its outcome is C{False})."""
        self._drainDeadline = 0.0

    async def _drain(self) -> bool:
        self._drainDeadline = self.reactor.seconds() + self.drain_timeout
        await self._stopListening()
        self.framedFactory.draining = True

        def busyConnections() -> int:  # a client that has sent nothing yet is not waited for
            return sum(1 for connection in self.factory.connections if connection.started)

        if self.dispatcher.pending or busyConnections():
            log.info(
                "draining {n} pending requests and {c} open connections (up to {t}s)",
                n=self.dispatcher.pending,
                c=busyConnections(),
                t=self.drain_timeout,
            )
        while self.dispatcher.pending or busyConnections():
            if self.reactor.seconds() >= self._drainDeadline:
                log.warn(
                    "drain ended with {n} requests and {c} connections still open"
                    " (--drain-timeout {t}s, or a second SIGTERM); failing them",
                    n=self.dispatcher.pending,
                    c=busyConnections(),
                    t=self.drain_timeout,
                )
                return False
            await deferLater(self.reactor, DRAIN_POLL_SECONDS, lambda: None)
        return True

    async def _stopListening(self) -> None:
        listening = [d for d in (self._listening, self._framedListening) if d is not None]
        self._listening = self._framedListening = None
        for d in listening:
            d.addErrback(lambda f: None)
            port = await d
            if port is not None:
                await maybeDeferred(port.stopListening)
        self.port = self.framedPort = None

    @inlineCallbacks
    def stopService(self):
        """Drain (see L{drain}), then fail what is left and stop the workers."""
        super().stopService()
        drained = yield self.drain()
        self.dispatcher.stopAccepting()
        self.dispatcher.stop()
        self.factory.stopIdleSweep()
        self.framedFactory.stopIdleSweep()
        self.dispatcher.failAll(ServiceStopped("gaspar_tw producer stopped"))
        for connection in list(self.factory.connections):
            if connection.reading:  # the others are closing already, after a reply or error
                connection.transport.abortConnection()
        for connection in list(self.framedFactory.connections):
            connection.close()  # its replies are all written by now
        # After a drain that timed out, workers may be stuck in a handler: don't wait long.
        if self.remote is not None:
            self.remote.stop()
            self.remote = None
        yield self.pool.stop(grace=5.0 if drained else 0.5)
        if self.hub is not None:
            self.hub.close()
            self.hub = None
        log.info("gaspar_tw producer stopped")

    # -- running stand-alone ---------------------------------------------------------------

    def start(self) -> None:
        """Run the reactor with this producer until SIGINT/SIGTERM (blocks).

        The process is taken to be the producer's own: its title is set and its soft limit
        on open files raised to the hard one (L{gaspar_tw.ops.limits.raise_file_limit}).
        """
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stderr)], redirectStandardIO=False
        )
        raise_file_limit()
        self.proctitle = True
        self.reactor.callWhenRunning(self._startOrStop)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stopIfRunning)
        self.reactor.run()

    def _startOrStop(self) -> None:
        try:
            self.privilegedStartService()
            self.startService()
        except Exception:
            log.failure("gaspar_tw producer failed to start")
            self.reactor.stop()

    def _stopIfRunning(self):
        if self.running:
            return self.stopService()
        return None


def _chain(d: Deferred) -> Deferred:
    """A new Deferred with C{d}'s result, leaving C{d}'s own result as it was."""
    out: Deferred = Deferred()

    def relay(result):
        out.callback(result)
        return None if isinstance(result, Failure) else result

    d.addBoth(relay)
    return out


def _describe(address) -> str:
    """C{tcp 127.0.0.1:10123}, C{tcp [::1]:10123} or C{unix /run/gaspar.sock}, for the log."""
    kind = "unix" if getattr(address, "host", None) is None else str(address.type).lower()
    return f"{kind} {address_text(address)}"
