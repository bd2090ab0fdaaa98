"""The producer: a Twisted service that owns the TCP listener, the workers and the dispatcher."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from twisted.application import service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from gaspar_tw import wire
from gaspar_tw.consumer import Consumer
from gaspar_tw.dispatch import Dispatcher
from gaspar_tw.errors import ServiceStopped
from gaspar_tw.framed import FramedFactory
from gaspar_tw.handler import Handler
from gaspar_tw.pool import WorkerPool
from gaspar_tw.proctitle import producer_title, set_title
from gaspar_tw.protocol import DEFAULT_MAX_LENGTH, GasparFactory
from gaspar_tw.stats import Stats

log = Logger()

DEFAULT_PORT = 10123
DEFAULT_DRAIN_TIMEOUT = 10.0


def default_worker_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def endpoint_description(endpoint: int | str | None) -> str | None:
    """C{10123} -> C{"tcp:10123"}; a string is a Twisted server endpoint description."""
    if endpoint is None or isinstance(endpoint, str):
        return endpoint
    return f"tcp:{int(endpoint)}"


class Producer(service.Service):
    """Serve a L{Consumer}'s handler on C{endpoint} with C{workers} processes.

    C{endpoint} is a port number, a server endpoint string (``"tcp:10123"``,
    ``"unix:/run/gaspar.sock"``), an L{IStreamServerEndpoint}, or C{None} for no listener
    (in-process L{submit} only). C{framed_endpoint}, if given, also serves the framed
    persistent protocol (L{gaspar_tw.framed}) there. Use it as a service (C{startService}/
    C{stopService}, e.g. under a C{MultiService} or twistd), or call L{start} to run a
    reactor until stopped.
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
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        pythonpath: Sequence[str] = (),
        framed_endpoint: int | str | IStreamServerEndpoint | None = None,
        proctitle: bool = False,
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.consumer = consumer if isinstance(consumer, Consumer) else Consumer(consumer)
        self.workers = default_worker_count() if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        self.endpoint = endpoint
        self.drain_timeout = drain_timeout
        #: Set the process title (C{gaspar-tw producer :10123}); for a process of our own.
        self.proctitle = proctitle
        if max_pending is None:
            max_pending = max(1024, 64 * self.workers)
        #: Counters of everything this producer does (read by gaspar_tw.metrics).
        self.stats = Stats()
        self.dispatcher = Dispatcher(
            reactor,
            window=window,
            max_pending=max_pending,
            retry_on_crash=retry_on_crash,
            stats=self.stats,
        )
        self.pool = WorkerPool(
            reactor, self.consumer.spec, self.workers, self.dispatcher, pythonpath, self.stats
        )
        self.factory = GasparFactory(self.dispatcher.submit, max_length, self.stats)
        self.port: IListeningPort | None = None
        self.framed_endpoint = framed_endpoint
        self.framedFactory = FramedFactory(self.dispatcher.submit, max_length, self.stats)
        self.framedPort: IListeningPort | None = None
        self._framedListening: Deferred | None = None
        self.hub = None
        self._listening: Deferred | None = None

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
        from gaspar_tw.channels import ChannelHub

        self.dispatcher.accepting = True
        self.hub = ChannelHub(self._onWorkerMessage)
        self.pool.start(self.hub)
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
        return d.addCallback(listened)

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
        kind, token = wire.frame_kind(frames[0])
        if kind == wire.REPLIES:
            ids, statuses, payloads = wire.decode_replies(frames)
            self.dispatcher.handlerTime(len(ids), wire.busy_seconds(frames[0]))
            self.dispatcher.repliesReceived(token, ids, statuses, payloads)
        elif kind == wire.HELLO:
            self.pool.hello(token, int(frames[1]))

    @inlineCallbacks
    def stopService(self):
        """Stop listening, let pending requests finish (up to C{drain_timeout}), stop workers."""
        super().stopService()
        listening = [d for d in (self._listening, self._framedListening) if d is not None]
        self._listening = self._framedListening = None
        for d in listening:
            d.addErrback(lambda f: None)
            port = yield d
            if port is not None:
                yield port.stopListening()
        self.port = self.framedPort = None
        self.dispatcher.stopAccepting()
        if self.dispatcher.pending:
            log.info("draining {n} pending requests", n=self.dispatcher.pending)
            idle = self.dispatcher.whenIdle()
            idle.addTimeout(self.drain_timeout, self.reactor)
            try:
                yield idle
            except Exception:
                log.warn(
                    "{n} requests still pending after {t}s; failing them",
                    n=self.dispatcher.pending,
                    t=self.drain_timeout,
                )
        self.dispatcher.failAll(ServiceStopped("gaspar_tw producer stopped"))
        yield self.pool.stop()
        if self.hub is not None:
            self.hub.close()
            self.hub = None
        log.info("gaspar_tw producer stopped")

    # -- running stand-alone ---------------------------------------------------------------

    def start(self) -> None:
        """Run the reactor with this producer until SIGINT/SIGTERM (blocks)."""
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(sys.stderr)], redirectStandardIO=False
        )
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
    host = getattr(address, "host", None)
    if host is not None:
        kind = str(getattr(address, "type", "TCP")).lower()
        return f"{kind} [{host}]:{address.port}" if ":" in host else f"{kind} {host}:{address.port}"
    return f"unix {getattr(address, 'name', address)}"
