"""``twistd gaspar-worker``: build the worker host from the command line (imports on use)."""

from __future__ import annotations

from twisted.application.service import IService

from gaspar_tw.options import HostOptions as Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """Build the worker host; a handler that cannot be imported is a one-line error."""
    from dataclasses import replace

    from gaspar_tw.consumer import loadConsumer
    from gaspar_tw.host.service import WorkerHost

    consumer, pythonpath = loadConsumer(options, "twistd gaspar-worker")
    return WorkerHost(consumer.spec, config=replace(options.config, pythonpath=pythonpath))
