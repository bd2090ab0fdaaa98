"""``twistd gaspar-worker``: build the worker host from the command line (imports on use)."""

from __future__ import annotations

from twisted.application.service import IService

from gaspar_tw.options import HostOptions as Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """Build the worker host; a handler that cannot be imported is a one-line error."""
    from gaspar_tw.config import Config
    from gaspar_tw.host.service import WorkerHost
    from gaspar_tw.tap import loadConsumer

    consumer, pythonpath = loadConsumer(options, "twistd gaspar-worker")
    return WorkerHost(consumer.spec, config=Config.of(options.config, pythonpath=pythonpath))
