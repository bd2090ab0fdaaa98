"""The ``twistd gaspar-worker`` plugin. Imports nothing heavy: gaspar_tw.workerhost on use."""

from gaspar_tw.limits import OwnProcessServiceMaker

gasparWorker = OwnProcessServiceMaker(
    "gaspar-worker",
    "gaspar_tw.workerhost",
    "Run worker processes here for a gaspar producer started with --bind.",
    "gaspar-worker",
)
