"""``twistd gaspar-worker``: worker processes on this host that serve a remote producer.

Each worker connects to the producer's C{--bind} address (L{gaspar_tw.worker.relay}); this
service only starts them, replaces the ones that die and stops them, as the producer's own
pool does (L{gaspar_tw.workers.local}). Over an address that is neither loopback nor
CURVE-protected, its workers never unpickle a call: they answer each with an error (a pickle
runs code wherever it is read, and anyone on the way could have written it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gaspar_tw.config import WORKER_HOST, Config
from gaspar_tw.stats import Stats
from gaspar_tw.wire.control import CONNECTING
from gaspar_tw.workers.local import LocalWorkers, WorkerProcess
from gaspar_tw.zeromq.exposure import is_exposed

log = Logger()

__all__ = ["HostPool", "WorkerHost"]


class HostPool(LocalWorkers):
    """Local workers that connect to a remote producer instead of this process."""

    def __init__(self, reactor, handler_spec: str, config: Config) -> None:
        super().__init__(
            reactor, handler_spec, config.worker_count, None, config.pythonpath, Stats()
        )
        self.address = config.connect
        self.curve_keys = config.curve_keys
        #: Whether its workers answer calls with an error instead of unpickling them.
        self.refuse_calls = is_exposed(self.address, self.curve_keys)

    def socketArguments(self, token: int) -> list[str]:
        keys = ["--curve-keys", self.curve_keys] if self.curve_keys else []
        refuse = ["--refuse-calls"] if self.refuse_calls else []
        return ["--connect", self.address, *keys, *refuse]

    def spawned(self, process: WorkerProcess) -> None:
        log.info("worker {slot} started (pid {pid})", slot=process.slot, pid=process.pid)

    def outputBeforeReady(self, process: WorkerProcess, line: str) -> None:
        """A worker that is connecting has loaded its handler: it is ready."""
        if CONNECTING not in line or self.stopping:
            return
        process.ready = True
        self.becameReady(process)


class WorkerHost(service.Service):
    """Keep C{workers} processes running C{handler_spec} for the producer at C{address}.

    The settings (C{workers}, C{curve_keys}, C{pythonpath}, ...) are
    L{gaspar_tw.config.Config}'s; C{reactor} defaults to the global one, looked up at start.
    """

    def __init__(
        self,
        handler_spec: str,
        address: str | None = None,
        workers: int | None = None,
        curve_keys: str | None = None,
        pythonpath: Sequence[str] = (),
        reactor: Any = None,
        *,
        config: Config | None = None,
    ) -> None:
        given = {"connect": address, "workers": workers, "curve_keys": curve_keys}
        settings = {name: value for name, value in given.items() if value is not None}
        if pythonpath:
            settings["pythonpath"] = pythonpath
        self.config = Config.of(config, (WORKER_HOST,), **settings)
        if not self.config.connect:
            raise ValueError("a worker host needs the producer's address (connect)")
        self.handler_spec = handler_spec
        self.reactor = reactor
        self.pool: HostPool | None = None

    def startService(self) -> None:
        super().startService()
        if self.pool is None:
            if self.reactor is None:
                from twisted.internet import reactor

                self.reactor = reactor
            self.pool = HostPool(self.reactor, self.handler_spec, self.config)
        log.info(
            "gaspar_tw worker host: {n} workers running {spec} for {address}",
            n=self.pool.size,
            spec=self.handler_spec,
            address=self.config.connect,
        )
        if self.pool.refuse_calls:
            log.warn(
                "{address} is neither loopback nor CURVE-protected: these workers answer"
                " calls with an error, unread (a pickled call runs code wherever it is read);"
                " give the producer and this host --curve-keys to run calls here",
                address=self.config.connect,
            )
        self.pool.start(None)

    @property
    def workers(self) -> int:
        """The number of worker processes configured now."""
        return self.pool.size if self.pool is not None else self.config.worker_count

    def reload(self) -> bool:
        """Replace every worker by one that imports the handler anew, one at a time (each
        old one stops gracefully once its replacement has loaded the handler)."""
        return self.pool is not None and self.running and self.pool.reload()

    def whenReloaded(self) -> Deferred:
        """Fires with C{"ok"} or C{"failed"} once the reload in progress has ended (with
        C{None} at once if there is none)."""
        return self.pool.recycler.whenReloaded() if self.pool is not None else succeed(None)

    def addWorker(self) -> int:
        """Start one worker more; returns how many are configured now."""
        return self.pool.grow() if self.pool is not None and self.running else self.workers

    def removeWorker(self) -> int:
        """Stop one worker gracefully (never the last); returns how many are configured."""
        return self.pool.shrink() if self.pool is not None and self.running else self.workers

    def stopService(self) -> Deferred | None:
        wasRunning = self.running
        super().stopService()
        return self.pool.stop() if wasRunning else None
