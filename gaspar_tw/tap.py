"""``twistd gaspar``: build the producer service from the command line."""

from __future__ import annotations

import gc
import sys

from twisted.application.service import IService, MultiService
from twisted.logger import Logger

from gaspar_tw.config import Config
from gaspar_tw.errors import ListenError
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
    """Build the producer (draining on SIGTERM, with its metrics port); a port that cannot
    be listened on, or a bad handler, is a one-line error and exit 1."""
    from gaspar_tw.consumer import loadConsumer
    from gaspar_tw.ops.shutdown import DrainOnTerm
    from gaspar_tw.ops.systemd import SystemdNotifier
    from gaspar_tw.producer import Producer

    config = options.config
    try:
        tryListening(config)
    except ListenError as e:
        raise SystemExit(f"twistd gaspar: {e}") from None
    sys.excepthook = oneLineListenErrors(sys.excepthook, "twistd gaspar")
    consumer, pythonpath = loadConsumer(options, "twistd gaspar")
    producer = Producer(consumer, config=config, pythonpath=pythonpath)
    top = GasparService()
    if config.log_format == "json":
        from gaspar_tw.ops.logs import jsonLinesObserver, twistdLogFile

        top.logObserver = jsonLinesObserver(twistdLogFile(getattr(options, "parent", None) or {}))
    producer.setServiceParent(top)
    notifier = SystemdNotifier(producer.whenReady, lambda: serving(producer))
    notifier.setName(SystemdNotifier.NAME)
    DrainOnTerm(producer, onDrain=notifier.draining).setServiceParent(top)
    if config.metrics:
        from gaspar_tw.metrics import MetricsService

        MetricsService(producer, config.metrics).setServiceParent(top)
    notifier.setServiceParent(top)  # last: started once the others are
    return top


def oneLineListenErrors(excepthook, command: str):
    """C{excepthook} except that a L{ListenError} ending twistd (an address taken after the
    check of L{tryListening}, say) is one line, C{COMMAND: cannot ...}, not a traceback."""

    def hook(kind, error, traceback) -> None:
        if isinstance(error, ListenError):
            print(f"{command}: {error}", file=sys.stderr)
        else:
            excepthook(kind, error, traceback)

    return hook


def serving(producer) -> str:
    """What systemd's status line says once the producer is ready."""
    from gaspar_tw.proctitle import address_text

    ready = sum(1 for info in producer.workerInfo() if info.ready_at is not None)
    port = producer.port
    where = f"on {address_text(port.getHost())} " if port is not None else ""
    return f"serving {where}with {ready} workers ready"


def tryListening(config: Config) -> None:
    """Bind every TCP address the producer will listen on (its ports, C{--metrics},
    C{--bind}) and let them go. Run by makeService, before twistd forks and while stderr is
    the terminal's, so that a port in use is one line there; raises L{ListenError}."""
    from gaspar_tw.addresses import (
        ANOTHER_GASPAR,
        Listener,
        tcp_address,
        try_listening,
        try_unix_socket,
        try_zmq_bind,
        unix_path,
        zmq_tcp_address,
    )

    listeners = []
    for description, in_use in (
        (config.endpoint, ANOTHER_GASPAR),
        (config.framed_endpoint, ANOTHER_GASPAR),
        (config.metrics, "is another program using it?"),
    ):
        if not isinstance(description, str):
            continue
        address = tcp_address(description)
        if address is not None:
            listeners.append(Listener("listen on", address, address, in_use))
        unix = unix_path(description)
        if unix is not None:
            try_unix_socket(*unix, in_use)
    address = zmq_tcp_address(config.bind) if config.bind else None
    if address is not None and not address.ipv6:
        listeners.append(Listener("bind", config.bind, address))
    try_listening(listeners)
    if config.bind and (address is None or address.ipv6):
        try_zmq_bind(config.bind)
