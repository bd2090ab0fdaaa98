"""``twistd gaspar``: build the producer service from the command line."""

from __future__ import annotations

import gc
import os
import sys

from twisted.application.service import IService, MultiService
from twisted.logger import Logger

from gaspar_tw.options import Options

__all__ = ["Options", "makeService"]

log = Logger()


class GasparService(MultiService):
    """The producer and its metrics port; hands twistd its log observer, if it has one."""

    logObserver = None

    def setServiceParent(self, parent) -> None:
        if self.logObserver is not None:
            from gaspar_tw.ops.logs import useForApplication

            useForApplication(parent, self.logObserver)  # twistd's Application
        super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        # A process of our own: move the startup heap (Twisted, ZeroMQ, the handler's imports)
        # out of the garbage collector's sight: under load, a full collection of it held the
        # reactor longer than any request takes; now a collection scans only what was made since.
        gc.freeze()


def loadConsumer(options, command: str):
    """The consumer of C{--handler}, the current directory and C{--pythonpath} importable;
    returns it and that path. A handler that cannot be imported, or not within
    C{--import-timeout} seconds (tried in a child process first), exits with one line."""
    from gaspar_tw.consumer import Consumer
    from gaspar_tw.errors import HandlerError
    from gaspar_tw.handler import check_import

    pythonpath = [os.getcwd(), *options.config.pythonpath]
    for directory in reversed(pythonpath):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    spec, timeout = options["handler"], options.config.import_timeout
    # twistd shows this once its log starts (after makeService), with the time it was said.
    log.info("importing handler {spec} (--import-timeout {timeout:g}s)", spec=spec, timeout=timeout)
    try:
        if timeout:
            check_import(spec, pythonpath, timeout)
        return Consumer(spec), pythonpath
    except HandlerError as e:
        raise SystemExit(f"{command}: {e}") from None


def makeService(options: Options) -> IService:
    """Build the producer (draining on SIGTERM, with its metrics port); a bad handler is a
    one-line error and exit 1."""
    from gaspar_tw.ops.shutdown import DrainOnTerm
    from gaspar_tw.producer import Producer

    consumer, pythonpath = loadConsumer(options, "twistd gaspar")
    config = options.config
    producer = Producer(consumer, config=config, pythonpath=pythonpath)
    top = GasparService()
    if config.log_format == "json":
        from gaspar_tw.ops.logs import jsonLinesObserver, twistdLogFile

        top.logObserver = jsonLinesObserver(twistdLogFile(getattr(options, "parent", None) or {}))
    producer.setServiceParent(top)
    DrainOnTerm(producer).setServiceParent(top)
    if config.metrics:
        from gaspar_tw.metrics import MetricsService

        MetricsService(producer, config.metrics).setServiceParent(top)
    return top
