"""Command-line options of ``twistd gaspar``, with their defaults in one place."""

from __future__ import annotations

import os

from twisted.python import usage

from gaspar_tw.dispatch.dispatcher import DEFAULT_TIMEOUT
from gaspar_tw.handler import DEFAULT_IMPORT_TIMEOUT
from gaspar_tw.ops.shutdown import DEFAULT_DRAIN_TIMEOUT
from gaspar_tw.server.gaspar import DEFAULT_BACKLOG, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LENGTH

DEFAULT_PORT = 10123


def _positive_int(name: str):
    return whole_number(name, 1)


def whole_number(name: str, least: int):
    def convert(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a whole number, not {value!r}") from None
        if number < least:
            raise usage.UsageError(f"--{name} must be at least {least}, not {number}")
        return number

    return convert


def _seconds(name: str, allow_zero: bool = False):
    def convert(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds, not {value!r}") from None
        if number < 0 or (number == 0 and not allow_zero) or number != number:
            least = "0 (0 turns it off)" if allow_zero else "more than 0"
            raise usage.UsageError(f"--{name} must be {least}, not {value}")
        return number

    return convert


def _choice(name: str, choices: tuple[str, ...]):
    def convert(value: str) -> str:
        if value not in choices:
            raise usage.UsageError(f"--{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    return convert


def checkKeys(load, directory: str) -> None:
    """C{load(directory)}, any error reading the keys made a usage error."""
    try:
        load(directory)
    except ValueError as e:
        raise usage.UsageError(f"--curve-keys: {e}") from None


class HandlerOptions(usage.Options):
    """What every command that runs a handler takes: C{--handler} (required), C{--pythonpath},
    C{--import-timeout}."""

    optParameters = [
        ["handler", "H", None, "The handler to run, as MODULE:FUNCTION (required)."],
        [
            "import-timeout",
            None,
            DEFAULT_IMPORT_TIMEOUT,
            "Seconds the handler's module may take to import at start (tried first in a"
            " child process); 0 for no limit and no such check.",
            _seconds("import-timeout", allow_zero=True),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["pythonpath"] = []

    def opt_pythonpath(self, directory: str) -> None:
        """A directory to add to the Python path to find the handler (repeatable)."""
        self["pythonpath"].append(os.path.abspath(directory))

    def postOptions(self) -> None:
        if not self["handler"]:
            raise usage.UsageError("--handler MODULE:FUNCTION is required")


class Options(HandlerOptions):
    """Options for ``twistd gaspar``."""

    synopsis = "--handler MODULE:FUNCTION [options]"
    longdesc = (
        "Serve a Python handler (bytes -> bytes) to gaspar clients: each TCP request (a 4-byte "
        "big-endian length, then that many bytes) is run by one of several worker processes, and "
        "the handler's reply is written back before the connection is closed. The current "
        "directory is importable for --handler. Example: "
        "twistd -n gaspar --handler gaspar_tw.examples:echo --port 10123"
    )

    optParameters = [
        [
            "port",
            "p",
            DEFAULT_PORT,
            "TCP port to listen on (all interfaces, listen backlog 1024).",
            _positive_int("port"),
        ],
        [
            "endpoint",
            "e",
            None,
            "Twisted server endpoint to listen on instead of --port, e.g. "
            "tcp:10123:interface=127.0.0.1 or unix:/run/gaspar.sock.",
        ],
        [
            "framed-endpoint",
            None,
            None,
            "Also serve the framed persistent protocol (pipelined requests, replies with a"
            " status byte) on this Twisted server endpoint, e.g. tcp:10124.",
        ],
        [
            "workers",
            "w",
            None,
            "Number of worker processes [default: the CPUs available]; 0 with --bind.",
            whole_number("workers", 0),
        ],
        [
            "max-length",
            None,
            DEFAULT_MAX_LENGTH,
            "Largest request accepted, in bytes; longer ones are closed unread.",
            _positive_int("max-length"),
        ],
        [
            "max-pending",
            None,
            None,
            "Most requests accepted and not yet answered; more are refused (closed at once)"
            " [default: 1024, or 64 per worker if more].",
            _positive_int("max-pending"),
        ],
        [
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds a handler may run on one request (then its worker is killed and"
            " replaced) and a request may wait for a free worker; 0 for no limit.",
            _seconds("timeout", allow_zero=True),
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds a client may stall while sending its request before it is dropped;"
            " 0 for no limit.",
            _seconds("idle-timeout", allow_zero=True),
        ],
        [
            "drain-timeout",
            None,
            DEFAULT_DRAIN_TIMEOUT,
            "Seconds SIGTERM waits for accepted requests to be answered before stopping.",
            _seconds("drain-timeout", allow_zero=True),
        ],
        [
            "bind",
            None,
            None,
            "Let remote worker hosts (twistd gaspar-worker --connect) join on this ZeroMQ"
            " address, e.g. tcp://10.0.0.1:5570 (port * picks a free one) [default: off].",
        ],
        [
            "curve-keys",
            None,
            None,
            "Directory of CURVE keys (gaspar-tw keygen DIR) protecting --bind.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus /metrics and JSON /status on this endpoint, e.g. "
            "tcp:9100:interface=127.0.0.1 [default: off].",
        ],
        [
            "log-format",
            None,
            "text",
            "Log as 'text' (one line an event) or 'json' (one JSON object a line).",
            _choice("log-format", ("text", "json")),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["retry-on-crash"] = True

    def opt_retry_on_crash(self) -> None:
        """Requests held by a worker that dies are retried once on another worker [default]."""
        self["retry-on-crash"] = True

    def opt_no_retry_on_crash(self) -> None:
        """Requests held by a worker that dies fail (closed, no reply) instead of running again."""
        self["retry-on-crash"] = False

    def postOptions(self) -> None:
        super().postOptions()
        if self["workers"] == 0 and not self["bind"]:
            raise usage.UsageError("--workers 0 needs --bind (remote workers)")
        if self["curve-keys"] and not self["bind"]:
            raise usage.UsageError("--curve-keys protects --bind; give --bind too")
        if self["curve-keys"]:
            from gaspar_tw.zeromq.curve import server_keys

            checkKeys(server_keys, self["curve-keys"])
        if self["endpoint"] is None:
            self["endpoint"] = f"tcp:{self['port']}:backlog={DEFAULT_BACKLOG}"
