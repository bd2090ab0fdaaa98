"""``twistd gaspar-worker``: worker processes on this host that serve a remote producer.

Each worker connects to the producer's C{--bind} address (L{gaspar_tw.worker.relay}); this service
only starts them, replaces the ones that die and stops them, like the producer's own pool.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from gaspar_tw.options import HandlerOptions, checkKeys, whole_number
from gaspar_tw.stats import Stats
from gaspar_tw.workers.local import WorkerPool, WorkerProcess

log = Logger()

__all__ = ["Options", "makeService", "WorkerHost"]


class Options(HandlerOptions):
    """Options for ``twistd gaspar-worker``."""

    synopsis = "--connect tcp://HOST:5570 --handler MODULE:FUNCTION [--workers N]"
    longdesc = (
        "Run worker processes on this machine for a gaspar producer started with --bind: each "
        "connects to it over ZeroMQ, is given requests and answers them. Example: "
        "twistd -n gaspar-worker --connect tcp://10.0.0.1:5570 "
        "--handler gaspar_tw.examples:echo --workers 4"
    )

    optParameters = [
        ["connect", "c", None, "The producer's --bind address, e.g. tcp://10.0.0.1:5570."],
        [
            "workers",
            "w",
            None,
            "Number of worker processes [default: the CPUs available].",
            whole_number("workers", 1),
        ],
        ["curve-keys", None, None, "Directory of CURVE keys (gaspar-tw keygen DIR)."],
    ]

    def postOptions(self) -> None:
        super().postOptions()
        if not self["connect"]:
            raise usage.UsageError("--connect tcp://HOST:PORT is required")
        if self["curve-keys"]:
            from gaspar_tw.zeromq.curve import client_keys

            checkKeys(client_keys, self["curve-keys"])


class HostPool(WorkerPool):
    """A pool whose workers connect to a remote producer instead of this process."""

    def __init__(self, reactor, handler_spec, size, address, curve_keys=None, pythonpath=()):
        super().__init__(reactor, handler_spec, size, None, pythonpath, Stats())
        self.address = address
        self.curve_keys = curve_keys

    def socketArguments(self, token: int) -> list[str]:
        keys = ["--curve-keys", self.curve_keys] if self.curve_keys else []
        return ["--connect", self.address, *keys]

    def spawned(self, process: WorkerProcess) -> None:
        log.info("worker {slot} started (pid {pid})", slot=process.slot, pid=process.pid)


class WorkerHost(service.Service):
    """Keep C{workers} processes running C{handler_spec} for the producer at C{address}."""

    def __init__(
        self,
        handler_spec: str,
        address: str,
        workers: int,
        curve_keys: str | None = None,
        pythonpath=(),
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.pool = HostPool(reactor, handler_spec, workers, address, curve_keys, pythonpath)

    def startService(self) -> None:
        super().startService()
        log.info(
            "gaspar_tw worker host: {n} workers running {spec} for {address}",
            n=self.pool.size,
            spec=self.pool.handler_spec,
            address=self.pool.address,
        )
        self.pool.start(None)

    def stopService(self) -> Deferred:
        super().stopService()
        return self.pool.stop()


def makeService(options: Options) -> service.IService:
    """Build the worker host; a handler that cannot be imported is a one-line error."""
    from gaspar_tw.producer import default_worker_count
    from gaspar_tw.tap import loadConsumer

    consumer, pythonpath = loadConsumer(options, "twistd gaspar-worker")
    workers = options["workers"] or default_worker_count()
    return WorkerHost(consumer.spec, options["connect"], workers, options["curve-keys"], pythonpath)
