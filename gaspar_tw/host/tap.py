"""``twistd gaspar-worker``: build the worker host from the command line (imports on use)."""

from __future__ import annotations

from twisted.application.service import IService

from gaspar_tw.options import HostOptions as Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """Build the worker host (SIGHUP reloads its workers, SIGTTIN/SIGTTOU resize it); a
    handler that cannot be imported is a one-line error."""
    from dataclasses import replace

    from twisted.application.service import MultiService

    from gaspar_tw.consumer import loadConsumer
    from gaspar_tw.host.service import WorkerHost
    from gaspar_tw.ops.signals import OperatorSignals

    consumer, pythonpath = loadConsumer(options, "twistd gaspar-worker")
    host = WorkerHost(consumer.spec, config=replace(options.config, pythonpath=pythonpath))
    top = MultiService()
    host.setServiceParent(top)
    OperatorSignals(host).setServiceParent(top)
    return top
