"""``twistd gaspar``: build the producer service from the command line."""

from __future__ import annotations

import os
import sys

from twisted.application.service import IService, MultiService

from gaspar_tw.options import Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """Build the producer, draining on SIGTERM; a handler that cannot be loaded is a one-line
    error and exit 1."""
    from gaspar_tw.consumer import Consumer
    from gaspar_tw.errors import HandlerError
    from gaspar_tw.producer import Producer
    from gaspar_tw.shutdown import DrainOnTerm

    pythonpath = [os.getcwd(), *options["pythonpath"]]
    for directory in reversed(pythonpath):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        consumer = Consumer(options["handler"])
    except HandlerError as e:
        raise SystemExit(f"twistd gaspar: {e}") from None
    producer = Producer(
        consumer,
        options["endpoint"],
        options["workers"],
        max_length=options["max-length"],
        max_pending=options["max-pending"],
        timeout=options["timeout"],
        retry_on_crash=options["retry-on-crash"],
        idle_timeout=options["idle-timeout"],
        drain_timeout=options["drain-timeout"],
        pythonpath=pythonpath,
    )
    top = MultiService()
    producer.setServiceParent(top)
    DrainOnTerm(producer).setServiceParent(top)
    return top
