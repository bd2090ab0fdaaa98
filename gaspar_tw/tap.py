"""``twistd gaspar``: build the producer service from the command line."""

from __future__ import annotations

import gc

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


def makeService(options: Options) -> IService:
    """Build the producer (draining on SIGTERM, with its metrics port); a bad handler is a
    one-line error and exit 1."""
    from gaspar_tw.consumer import loadConsumer
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
