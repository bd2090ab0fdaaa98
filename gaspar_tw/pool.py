"""ProcessPool: the core service. A dispatcher, and the worker sources that feed it.

The data flow::

    submit(payload) ─▶ Dispatcher ─ request table ─▶ queue ─▶ scheduler ─▶ WorkerLink.send
         ▲                                                                   │ ZeroMQ
         │ Deferred fires                                                    ▼
    IReplyReceiver ◀─ delivery ◀─ Dispatcher.repliesMessage ◀─ IWorkerSource: LocalWorkers
                                                                (spawnProcess, ipc://) or
                                                                RemoteWorkers (ROUTER, tcp://)

A pool makes its parts on the reactor it was given or, by default, the global one: at once if
one is installed already, else when it is first started (or first used). So importing or
constructing a pool installs no reactor. L{gaspar_tw.Producer} is a pool with TCP front ends.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred, fail, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from gaspar_tw.calls import submit_call
from gaspar_tw.calls.mapping import submit_map
from gaspar_tw.config import POOL, Config
from gaspar_tw.consumer import Consumer, worker_path
from gaspar_tw.dispatch import Dispatcher
from gaspar_tw.errors import ServiceStopped
from gaspar_tw.handler import Handler
from gaspar_tw.stats import Stats
from gaspar_tw.wire.control import HURRIED_STOP_GRACE_SECONDS, STOP_GRACE_SECONDS
from gaspar_tw.workers.local import LocalWorkers
from gaspar_tw.workers.source import IWorkerSource, WorkerInfo
from gaspar_tw.zeromq.exposure import is_exposed

log = Logger()

#: How often a drain checks whether every request is done.
DRAIN_POLL_SECONDS = 0.05
#: What the workers of a pool without a handler load (named, not imported: the pool imports
#: nothing of the worker process): they run calls, and refuse bytes requests saying why.
CALLS_ONLY_HANDLER = "gaspar_tw.worker.calls_only:no_handler"

_SETTINGS = frozenset(f.name for f in fields(Config))


class ProcessPool(service.Service):
    """Run C{handler} (C{bytes -> bytes}) in C{workers} processes: L{submit} a payload, get a
    Deferred of its reply; or L{call} a function there.

    C{handler} is a L{Consumer}, a module-level function or its ``"module:function"`` name;
    without one (C{ProcessPool(workers=2)}) the pool only runs calls.
    The other settings (C{timeout}, C{max_pending}, C{retry_on_crash}, C{window},
    C{pythonpath}, C{drain_timeout}, C{bind}, C{curve_keys}, C{max_requests},
    C{max_requests_jitter}, C{max_memory}, C{max_memory_hard}, C{max_call_bytes}) are
    L{Config}'s, given as keywords or as C{config}, and readable as attributes
    (C{pool.timeout}). C{reactor} defaults to the global reactor, looked up when it is needed,
    never at import. Use it as a service (C{startService}/C{stopService}, e.g. under a
    C{MultiService} or twistd).
    """

    #: The settings this service reads (L{Config.of} refuses the others).
    scope: tuple[str, ...] = (POOL,)
    #: What the log and errors call it.
    kind = "pool"

    def __init__(
        self,
        handler: Consumer | str | Handler | None = None,
        workers: int | None = None,
        *,
        reactor: Any = None,
        config: Config | None = None,
        **settings: Any,
    ) -> None:
        if workers is not None:
            settings["workers"] = workers
        self.config = Config.of(config, self.scope, **settings)
        #: Whether it was given a handler (without one, it only runs calls).
        self.hasHandler = handler is not None
        if handler is None:
            handler = CALLS_ONLY_HANDLER
        self.consumer = handler if isinstance(handler, Consumer) else Consumer(handler)
        self.reactor = reactor
        #: Counters of everything this pool does (read by gaspar_tw.metrics).
        self.stats = Stats()
        self.dispatcher: Dispatcher | None = None
        self.local: LocalWorkers | None = None
        #: The remote workers' source, while running with C{bind}.
        self.remote = None
        self.hub = None
        self._readyWaiters: list[Deferred] = []
        self._draining: Deferred | None = None
        self._drainDeadline = 0.0
        #: Whether calls go to local workers only (decided at the first call).
        self._callsLocalOnly: bool | None = None
        self._saidCallsLocal = False
        if reactor is not None or "twisted.internet.reactor" in sys.modules:
            self._build()  # a reactor is chosen already: looking it up later changes nothing

    def __getattr__(self, name: str) -> Any:
        # The settings, as attributes (only called for names not found otherwise).
        if name in _SETTINGS:
            return getattr(self.config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def workers(self) -> int:
        """The number of local worker processes."""
        return self.local.size if self.local is not None else self.config.worker_count

    # -- the in-process API ----------------------------------------------------------------

    def submit(self, payload: bytes) -> Deferred:
        """Run the handler on C{payload} in a worker; the Deferred fires with its reply.

        Must be called in the reactor thread. Fails with L{gaspar_tw.RemoteError} when the
        handler raises, L{gaspar_tw.WorkerCrashed} when its worker died with it (twice),
        L{gaspar_tw.RequestTimeout} past C{timeout}, L{gaspar_tw.Overloaded} when
        C{max_pending} requests wait, and L{gaspar_tw.ServiceStopped} once the pool stops.
        A request submitted before the pool starts waits for its workers. Cancelling it
        drops the request, or has its worker skip it. A pool without a handler fails it at
        once with C{ValueError}.
        """
        if not self.hasHandler:
            return fail(
                ValueError(
                    "this pool has no handler to run a bytes request on: give ProcessPool a"
                    " handler (ProcessPool('mymodule:work', workers=...)), or use call()"
                )
            )
        if self.dispatcher is None:
            self._build()
        return self.dispatcher.submit(payload)

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred:
        """Run C{fn(*args, **kwargs)} in a worker; the Deferred fires with what it returns.

        C{fn} must be importable by name (module-level functions, builtins, static and class
        methods, C{functools.partial} of those): a lambda, a nested function, one defined
        in C{__main__} or an async function fails at once with C{ValueError}, as do
        arguments holding a class or function of C{__main__}; arguments that cannot be
        pickled fail at once with C{pickle.PicklingError}; a call over C{max_call_bytes}
        pickled fails at once with C{ValueError}; none reaches a worker. If C{fn} raises,
        the Deferred fails with that exception (its worker traceback as C{__cause__} and
        C{remote_traceback}), or with L{gaspar_tw.RemoteError} if it cannot be unpickled
        here; a result over C{max_call_bytes} fails the call with C{ValueError}. Otherwise
        as L{submit}: crashes, C{timeout}, C{max_pending}, stopping. Workers import from
        C{pythonpath}, then this process's C{sys.path} (as it was when the pool was built:
        made, or started), in its order, as C{multiprocessing} does; if one cannot import
        C{fn}'s module, the call fails saying so.

        Cancelling the Deferred (C{d.cancel()}, or C{d.addTimeout(t, reactor)} when C{t}
        passes) fails it with C{CancelledError} (C{TimeoutError}): a call still queued never
        runs, one sent to a busy worker is skipped there, and one its worker is running ends
        with that worker, killed and replaced (what it held behind the call is sent again).

        A pickle runs code where it is read: if remote workers may join on a C{bind} that is
        neither loopback nor CURVE-protected, calls run on local workers only (said once in
        the log; bytes requests still go to every worker), and fail at once with
        C{ValueError} if the pool has no local workers.
        """
        if self._callsLocalOnly is not False:  # the first call, or calls kept local
            refusal = self._prepareCalls()
            if refusal:
                return fail(ValueError(refusal))
        return submit_call(self.dispatcher, fn, args, kwargs)

    def _prepareCalls(self) -> str:
        """Build the pool if need be, and apply the security rule of calls (kept local on
        an exposed bind); why calls cannot run here, or ""."""
        if self.dispatcher is None:
            self._build()
        if self._callsLocalOnly is None:
            self._callsLocalOnly = self._unprotectedBind()
            if self._callsLocalOnly:
                self.dispatcher.keepCallsLocal()
        if self._callsLocalOnly:
            return self._localCallsOnly()
        return ""

    def map(
        self, fn: Callable[[Any], Any], iterable: Iterable[Any], *, chunksize: int | None = None
    ) -> Deferred:
        """Run C{fn(item)} in the workers for each item of C{iterable}; the Deferred fires
        with the list of results, in input order.

        Items travel in chunks, one call each: C{chunksize} items, or (C{None}) chunks sized
        from measured times, so that many fast calls travel as few messages. The iterable is
        read as chunks are sent, a few per worker ahead of the results. If an item raises,
        the Deferred fails with that exception (as L{call}), its index in C{map_index} and in
        a note, and the rest of the map is cancelled; cancelling the Deferred cancels every
        chunk. What L{call} refuses at once, C{map} does too, as well as a C{chunksize} that
        is not a positive int (C{ValueError}), an C{iterable} that is not one (C{TypeError})
        and an item that cannot be pickled (C{pickle.PicklingError}, with C{map_index}); it
        never raises (what C{iter(iterable)} raises fails the Deferred). It keeps within
        C{max_pending}, sending more chunks as its own finish, and sizes automatic chunks so
        that their items and results stay well under C{max_call_bytes}.
        """
        refusal = self._prepareCalls()
        if refusal:
            return fail(ValueError(refusal))
        return submit_map(self.dispatcher, fn, iterable, chunksize, self.workers)

    def _unprotectedBind(self) -> bool:
        """Whether remote workers may join on a C{bind} that is neither loopback nor
        CURVE-protected (anyone who reaches it could read what is sent there)."""
        bind = self.config.bind
        return bind is not None and is_exposed(bind, self.config.curve_keys)

    def _localCallsOnly(self) -> str:
        """Calls go to local workers only: say so once; why a call cannot run, or ""."""
        bind = self.config.bind
        if not self.workers:
            return (
                f"this {self.kind} cannot run calls: it has no local workers (workers=0), and"
                f" sends no calls to remote workers on {bind}, which is neither loopback nor"
                f" CURVE-protected (a pickled call runs code wherever it is read); give it"
                f" curve_keys (--curve-keys), bind to 127.0.0.1, or give it local workers"
            )
        if not self._saidCallsLocal:
            self._saidCallsLocal = True
            log.warn(
                "calls run on this {kind}'s local workers only: remote workers join on {bind},"
                " which is neither loopback nor CURVE-protected, and a pickled call runs code"
                " wherever it is read (bytes requests still go to every worker); give it"
                " curve_keys (--curve-keys), or bind to 127.0.0.1, to send calls there too",
                kind=self.kind,
                bind=bind,
            )
        return ""

    def whenReady(self) -> Deferred:
        """Fires (with this pool) once every local worker is ready (and, for a producer, its
        listeners are bound); asked before the pool is built, once it has started and they
        are."""
        if self.local is None:
            d: Deferred = Deferred()
            self._readyWaiters.append(d)
            return d
        return self.local.whenReady().addCallback(lambda _: self)

    def workerPids(self) -> list[int]:
        """The process ids of the current worker processes (local and remote)."""
        return [pid for source in self._sources() for pid in source.pids()]

    def workerInfo(self) -> list[WorkerInfo]:
        """Every worker, local and remote, ready or starting."""
        return [info for source in self._sources() for info in source.workers()]

    # -- reload, resize ----------------------------------------------------------------------

    def reload(self) -> bool:
        """Replace every local worker by a new process that imports the handler anew, one at
        a time, each new one ready before an old one is retired (it answers what it holds
        first). If the new ones cannot load the handler, the old ones keep serving (logged,
        and counted in C{stats.reloads}). C{False} if there is no local worker to replace."""
        return self.local is not None and self.running and not self.draining and self.local.reload()

    @property
    def draining(self) -> bool:
        """Whether it is draining (L{drain}): stopping, it reloads and resizes no more."""
        return self._draining is not None

    def whenReloaded(self) -> Deferred:
        """Fires with C{"ok"} or C{"failed"} once the reload in progress has ended (with
        C{None} at once if there is none)."""
        return self.local.recycler.whenReloaded() if self.local is not None else succeed(None)

    def addWorker(self) -> int:
        """Start one local worker more; returns how many are configured now."""
        if self.local is None or not self.running or self.draining:
            return self.workers
        return self.local.grow()

    def removeWorker(self) -> int:
        """Retire one local worker (never the last); returns how many are configured now."""
        if self.local is None or not self.running or self.draining:
            return self.workers
        return self.local.shrink()

    def _sources(self) -> list[IWorkerSource]:
        return [source for source in (self.local, self.remote) if source is not None]

    # -- the service -----------------------------------------------------------------------

    def _build(self) -> None:
        """Make the parts, on the reactor (once: a pool can be started again)."""
        if self.dispatcher is not None:
            return
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        config = self.config
        self.dispatcher = Dispatcher(
            self.reactor,
            window=config.window,
            max_pending=config.pending_limit,
            retry_on_crash=config.retry_on_crash,
            timeout=config.timeout_or_none,
            max_call_bytes=config.max_call_bytes,
            stats=self.stats,
        )
        self.local = LocalWorkers(
            self.reactor,
            self.consumer.spec,
            config.worker_count,
            self.dispatcher,
            worker_path(config.pythonpath, self.consumer),
            self.stats,
            max_requests=config.max_requests,
            max_requests_jitter=config.max_requests_jitter,
            max_memory=config.max_memory,
            max_memory_hard=config.max_memory_hard,
            max_call_bytes=config.max_call_bytes,
            exact_path=True,
        )

    def privilegedStartService(self) -> None:
        self._build()
        super().privilegedStartService()

    def startService(self) -> None:
        self._build()
        super().startService()
        from gaspar_tw.workers.channels import ChannelHub  # txZMQ: once a reactor is chosen

        self._draining = None
        self.hub = ChannelHub(self.local.messageReceived, self.reactor)
        if self.config.bind is not None:
            self._bindRemote()  # first: if it cannot, nothing else has started
        self.dispatcher.accepting = True
        self.dispatcher.start()
        self.local.start(self.hub)
        log.info(
            "gaspar_tw {kind}: {n} workers running {spec}",
            kind=self.kind,
            n=self.local.size,
            spec=self.consumer.spec if self.hasHandler else "calls only (no handler)",
        )
        self._startFrontEnds()
        waiters, self._readyWaiters = self._readyWaiters, []
        for d in waiters:
            self.whenReady().chainDeferred(d)

    def _bindRemote(self) -> None:
        """Let remote workers join on C{bind}; if it cannot be bound, this pool is not
        running and the L{gaspar_tw.errors.ListenError} says why."""
        from gaspar_tw.workers.remote import RemoteWorkers

        remote = RemoteWorkers(
            self.reactor, self.dispatcher, self.config.bind, self.stats, self.config.curve_keys
        )
        try:
            remote.start(self.hub)
        except Exception:
            self.hub.close()
            self.hub = None
            self.running = False
            raise
        self.remote = remote

    def _startFrontEnds(self) -> None:
        """Start taking work from outside (a producer listens)."""

    def drain(self) -> Deferred:
        """Take no more work; wait for accepted requests to be answered (and, for a producer,
        their replies sent).

        Waits at most C{drain_timeout} seconds. Fires with C{True} if everything finished,
        C{False} if the time ran out. Calling it again returns the same outcome.
        """
        if self._draining is None:
            self._draining = ensureDeferred(self._drain())
        return chained(self._draining)

    def endDrain(self) -> None:
        """Make a drain in progress give up at its next check (its outcome is C{False})."""
        self._drainDeadline = 0.0

    async def _drain(self) -> bool:
        self._drainDeadline = self.reactor.seconds() + self.config.drain_timeout
        await self._stopIntake()
        if self._busy():
            self._logDraining()
        while self._busy():
            if self.reactor.seconds() >= self._drainDeadline:
                self._logDrainEnded()
                return False
            await deferLater(self.reactor, DRAIN_POLL_SECONDS, lambda: None)
        return True

    async def _stopIntake(self) -> None:
        """Stop taking new work (a producer stops listening)."""

    def _busy(self) -> bool:
        """Whether anything accepted is still unfinished."""
        return bool(self.dispatcher.pending)

    def _logDraining(self) -> None:
        log.info(
            "draining {n} pending requests (up to {t}s)",
            n=self.dispatcher.pending,
            t=self.config.drain_timeout,
        )

    def _logDrainEnded(self) -> None:
        log.warn(
            "drain ended with {n} requests still pending (--drain-timeout {t}s, or a second"
            " SIGTERM); failing them",
            n=self.dispatcher.pending,
            t=self.config.drain_timeout,
        )

    @inlineCallbacks
    def stopService(self):
        """Drain (see L{drain}), then fail what is left and stop the workers."""
        wasRunning = self.running
        super().stopService()
        if not wasRunning:  # e.g. a MultiService stopping every child, started or not
            return
        drained = yield self.drain()
        self.dispatcher.stopAccepting()
        self.dispatcher.stop()
        self.dispatcher.failAll(ServiceStopped(f"gaspar_tw {self.kind} stopped"))
        self._afterFailAll()
        if self.remote is not None:
            yield self.remote.stop()
            self.remote = None
        # After a drain that timed out, workers may be stuck in a handler: don't wait long.
        yield self.local.stop(STOP_GRACE_SECONDS if drained else HURRIED_STOP_GRACE_SECONDS)
        if self.hub is not None:
            self.hub.close()
            self.hub = None
        log.info("gaspar_tw {kind} stopped", kind=self.kind)

    def _afterFailAll(self) -> None:
        """Every request has its outcome: close what waited for them (a producer's clients)."""


def chained(d: Deferred) -> Deferred:
    """A new Deferred with C{d}'s result, leaving C{d}'s own result as it was."""
    out: Deferred = Deferred()

    def relay(result):
        out.callback(result)
        return None if isinstance(result, Failure) else result

    d.addBoth(relay)
    return out
