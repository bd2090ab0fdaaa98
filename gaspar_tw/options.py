"""Command-line options of ``twistd gaspar`` and ``twistd gaspar-worker``, made from L{Config}.

Each flag's default, check and help text are its L{gaspar_tw.config.Config} field's; a
parsed command line gives its L{Config} as C{options.config}. A mistake is one line on
stderr and exit status 1 (C{twistd gaspar: --port must be ...}), not twistd's whole help
first. Nothing here imports the dispatcher, the protocols, ZeroMQ or the reactor: C{--help}
stays quick, and endpoint strings are checked before twistd chooses a reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, fields
from typing import Any

from twisted.python import usage

from gaspar_tw.config import (
    DEFAULT_BACKLOG,
    DEFAULT_PORT,
    HOST,
    PRODUCER,
    Config,
    listen_endpoint,
    settings_for,
)


def checkKeys(load, directory: str) -> None:
    """C{load(directory)}, any error reading the keys made a usage error."""
    try:
        load(directory)
    except ValueError as e:
        raise usage.UsageError(f"--curve-keys: {e}") from None


def _coerce(f: Field) -> Callable[[str], Any]:
    """Text to the value of setting C{f}, or a usage error naming its flag."""
    parse, check = f.metadata["parse"], f.metadata["check"]
    return _checked(f.metadata["flag"], lambda value: check(parse(value)))


def _checked(flag: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """C{convert}, its C{ValueError} made a usage error naming C{--flag}."""

    def coerce(value: str) -> Any:
        try:
            return convert(value)
        except ValueError as e:
            raise usage.UsageError(f"--{flag} {e}") from None

    coerce.coerceDoc = ""  # twistd's help would otherwise add the function's docstring
    return coerce


def _parameters(command: str) -> list[list]:
    """twistd's C{optParameters} for the settings of C{command} that have a flag."""
    return [
        [f.metadata["flag"], f.metadata["short"], f.default, _doc(f, command), _coerce(f)]
        for f in settings_for(command)
        if f.metadata["flag"]
    ]


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise usage.UsageError(f"--port must be a whole number, not {value!r}") from None
    if not 1 <= port <= 65535:
        raise usage.UsageError(f"--port must be from 1 to 65535, not {port}")
    return port


_port.coerceDoc = ""


def _doc(f: Field, command: str) -> str:
    return f.metadata["host_doc"] if command == HOST else f.metadata["doc"]


def _asFlags(message: str) -> str:
    """A L{Config} error (C{"pythonpath must ..."}) as said of the command line's flag."""
    name, _, rest = message.partition(" ")
    flags = {f.name: f.metadata["flag"] for f in fields(Config) if f.metadata["flag"]}
    flags["pythonpath"] = "pythonpath"
    return f"--{flags[name]} {rest}" if name in flags else message


class HandlerOptions(usage.Options):
    """What every command that runs a handler takes: C{--handler} (required), C{--pythonpath},
    and the settings of C{command}; C{config} is the L{Config} they make."""

    command = PRODUCER
    config: Config
    optParameters = [["handler", "H", None, "The handler to run, as MODULE:FUNCTION (required)."]]

    def __init__(self) -> None:
        super().__init__()
        self["pythonpath"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse C{options}; a mistake exits with one line, C{twistd COMMAND: what is wrong}."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            message = str(e)
            if message.endswith("not recognized"):
                message += f" (twistd {self.command} --help lists the options)"
            raise SystemExit(f"twistd {self.command}: {message}") from None

    def parseArgs(self, *arguments: str) -> None:
        if arguments:
            raise usage.UsageError(
                f"unexpected argument {arguments[0]!r}: every value follows its --option"
            )

    def opt_version(self) -> None:
        """Print the versions of gaspar_tw, Twisted, pyzmq, libzmq and Python, and exit."""
        from gaspar_tw.version import version_line

        print(version_line(f"twistd {self.command}: gaspar_tw"))
        raise SystemExit(0)

    def opt_pythonpath(self, directory: str) -> None:
        """A directory to add to the Python path to find the handler (repeatable)."""
        self["pythonpath"].append(directory)

    def postOptions(self) -> None:
        self.config = self._config()

    def checkHandler(self) -> None:
        if not self["handler"]:
            raise usage.UsageError("--handler MODULE:FUNCTION is required")

    def _config(self) -> Config:
        """The L{Config} of the flags given (and the defaults of the others)."""
        values = {
            f.name: self[f.metadata["flag"]]
            for f in settings_for(self.command)
            if f.metadata["flag"]
        }
        values["pythonpath"] = self["pythonpath"]
        values.update(self.extraSettings())
        try:
            return Config(**values)
        except ValueError as e:
            raise usage.UsageError(_asFlags(str(e))) from None

    def extraSettings(self) -> dict[str, Any]:
        """Settings of flags that are not one setting each (for subclasses)."""
        return {}


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
            None,
            f"TCP port to listen on (all interfaces, listen backlog {DEFAULT_BACKLOG})"
            f" [default: {DEFAULT_PORT}].",
            _port,
        ],
        [
            "endpoint",
            "e",
            None,
            "Twisted server endpoint to listen on instead of --port, e.g. "
            "tcp:10123:interface=127.0.0.1 or unix:/run/gaspar.sock.",
            _checked("endpoint", listen_endpoint),
        ],
        *_parameters(PRODUCER),
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
        self.checkHandler()
        if self["workers"] == 0 and not self["bind"]:
            raise usage.UsageError("--workers 0 needs --bind (remote workers)")
        if self["curve-keys"] and not self["bind"]:
            raise usage.UsageError("--curve-keys protects --bind; give --bind too")
        soft, hard = self["max-memory"], self["max-memory-hard"]
        if soft and hard and hard <= soft:
            raise usage.UsageError(
                f"--max-memory-hard must be above --max-memory ({soft} MB), not {hard}"
            )
        if self["curve-keys"]:
            from gaspar_tw.zeromq.curve import server_keys

            checkKeys(server_keys, self["curve-keys"])
        if self["endpoint"] is None:
            port = DEFAULT_PORT if self["port"] is None else self["port"]
            self["endpoint"] = f"tcp:{port}:backlog={DEFAULT_BACKLOG}"
        elif self["port"] is not None:
            raise usage.UsageError("give --port or --endpoint, not both (--endpoint says the port)")
        super().postOptions()

    def extraSettings(self) -> dict[str, Any]:
        return {
            "endpoint": self["endpoint"],
            "retry_on_crash": self["retry-on-crash"],
            "proctitle": True,
        }


class HostOptions(HandlerOptions):
    """Options for ``twistd gaspar-worker``."""

    command = HOST
    optParameters = _parameters(HOST)
    synopsis = "--connect tcp://HOST:5570 --handler MODULE:FUNCTION [--workers N]"
    longdesc = (
        "Run worker processes on this machine for a gaspar producer started with --bind: each "
        "connects to it over ZeroMQ, is given requests and answers them. Example: "
        "twistd -n gaspar-worker --connect tcp://10.0.0.1:5570 "
        "--handler gaspar_tw.examples:echo --workers 4"
    )

    def postOptions(self) -> None:
        self.checkHandler()
        if not self["connect"]:
            raise usage.UsageError("--connect tcp://HOST:PORT is required")
        if self["workers"] == 0:
            raise usage.UsageError("--workers must be at least 1, not 0")
        if self["curve-keys"]:
            from gaspar_tw.zeromq.curve import client_keys

            checkKeys(client_keys, self["curve-keys"])
        super().postOptions()
