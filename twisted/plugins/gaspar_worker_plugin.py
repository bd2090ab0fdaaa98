"""The ``twistd gaspar-worker`` plugin. Imports nothing heavy: gaspar_tw.host.tap on use."""

from gaspar_tw.ops.limits import OwnProcessServiceMaker

gasparWorker = OwnProcessServiceMaker(
    "gaspar-worker",
    "gaspar_tw.host.tap",
    "Run worker processes here for a gaspar producer started with --bind.",
    "gaspar-worker",
)
