"""The ``twistd gaspar`` plugin. Imports nothing heavy: gaspar_tw.tap is loaded on use."""

from gaspar_tw.ops.limits import OwnProcessServiceMaker

gaspar = OwnProcessServiceMaker(
    "gaspar",
    "gaspar_tw.tap",
    "Run a bytes->bytes handler in worker processes behind a gaspar TCP port.",
    "gaspar",
)
