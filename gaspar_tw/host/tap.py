"""``twistd gaspar-worker``: build the worker host from the command line (imports on use)."""

from __future__ import annotations

from twisted.application.service import IService, MultiService

from gaspar_tw.options import HostOptions as Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """Build the worker host (SIGHUP reloads its workers, SIGTTIN/SIGTTOU resize it; systemd
    is told it is ready once its workers are started); a handler that cannot be imported is a
    one-line error."""
    from dataclasses import replace

    from twisted.internet.defer import succeed

    from gaspar_tw.consumer import loadConsumer
    from gaspar_tw.host.service import WorkerHost
    from gaspar_tw.ops.signals import OperatorSignals
    from gaspar_tw.ops.systemd import SystemdNotifier

    consumer, pythonpath = loadConsumer(options, "twistd gaspar-worker")
    config = replace(options.config, pythonpath=pythonpath)
    host = WorkerHost(consumer.spec, config=config)
    top = MultiService()
    host.setServiceParent(top)
    OperatorSignals(host).setServiceParent(top)
    # A host's workers say they are ready to their producer, not here: it is ready once started.
    status = f"{config.worker_count} workers started for the producer at {config.connect}"
    notifier = SystemdNotifier(lambda: succeed(None), lambda: status)
    notifier.setName(SystemdNotifier.NAME)
    notifier.setServiceParent(top)
    return top
