"""The ``twistd gaspar-worker`` plugin. Imports nothing heavy: gaspar_tw.workerhost on use."""

from twisted.application.service import ServiceMaker

gasparWorker = ServiceMaker(
    "gaspar-worker",
    "gaspar_tw.workerhost",
    "Run worker processes here for a gaspar producer started with --bind.",
    "gaspar-worker",
)
