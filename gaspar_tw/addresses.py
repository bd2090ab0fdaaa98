"""Listen addresses: checked when given, tried before a daemon starts, their failures in one line.

Two kinds: Twisted server endpoint strings (the gaspar port, C{--framed-endpoint},
C{--metrics}) and ZeroMQ addresses (C{--bind}, C{--connect}). A check returns the value or
raises C{ValueError} with what a right one looks like. An endpoint string is parsed by
Twisted's own parser on a placeholder reactor (imported lazily), so checking one installs no
reactor. L{try_listening} binds TCP addresses the way Twisted and ZeroMQ do and lets them go,
so that twistd can say "in use" in one line before it forks.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gaspar_tw.errors import ListenError
from gaspar_tw.zeromq.ipv6 import is_ipv6

#: The endpoint types Twisted knows without plugins, to suggest one for a typo.
ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "ssl", "systemd")
#: What "in use" most likely means for a gaspar port or a --bind address.
ANOTHER_GASPAR = "is another gaspar running?"


class _NoReactor:
    """Stands in for the reactor while an endpoint string is parsed: nothing listens."""


@dataclass(frozen=True)
class TCPAddress:
    """What a TCP listener binds: C{host} (C{""} for every IPv4 interface) and C{port}."""

    host: str
    port: int
    ipv6: bool = False

    def __str__(self) -> str:
        kind = "tcp6" if self.ipv6 else "tcp"
        interface = "" if self.host in ("", "::") else f":interface={self.host}"
        return f"{kind}:{self.port}{interface}"


# -- Twisted server endpoint strings --------------------------------------------------------


def check_endpoint(value: Any, example: str) -> str:
    """C{value} if Twisted can listen on it as a server endpoint string, else a C{ValueError}
    saying so with C{example} (a right one)."""
    expected = f"must be a Twisted server endpoint such as {example}"
    if not isinstance(value, str):
        raise ValueError(f"{expected}, not {value!r}")
    problem = endpoint_problem(value)
    if problem:
        raise ValueError(f"{expected}, not {value!r} ({problem})")
    return value


def endpoint_problem(description: str) -> str | None:
    """What is wrong with a server endpoint string, or C{None}."""
    if description.strip().isdigit():
        return f"did you mean tcp:{description.strip()}?"
    try:
        endpoint = _parse(description)
    except Exception as e:  # a plugin's parser may raise anything
        return _parse_problem(description, e)
    address = _tcp_address(endpoint)
    if address is not None and not 0 <= address.port <= 65535:
        return f"port {address.port} is not from 0 to 65535"
    return None


def tcp_address(description: str) -> TCPAddress | None:
    """The TCP address a (valid) server endpoint string listens on; C{None} if not TCP."""
    return _tcp_address(_parse(description))


def unix_path(description: str) -> tuple[str, bool] | None:
    """The path a (valid) UNIX server endpoint string listens on, and whether it takes a
    lock file beside it (C{lockfile=1}, the default); C{None} if not UNIX."""
    from twisted.internet.endpoints import UNIXServerEndpoint

    endpoint = _parse(description)
    if not isinstance(endpoint, UNIXServerEndpoint):
        return None
    path = endpoint._address
    return os.fsdecode(path), bool(endpoint._wantPID)


def _parse(description: str) -> Any:
    from twisted.internet.endpoints import serverFromString

    return serverFromString(_NoReactor(), description)


def _tcp_address(endpoint: Any) -> TCPAddress | None:
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return None
    host = endpoint._interface
    return TCPAddress(host, endpoint._port, isinstance(endpoint, TCP6ServerEndpoint) or ":" in host)


def _parse_problem(description: str, error: Exception) -> str:
    kind, _, rest = description.partition(":")
    text = str(error)
    if kind == "systemd" and isinstance(error, IndexError | KeyError):
        return (
            "systemd passed no such socket: start it from a .socket unit, which sets"
            " LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES"
        )
    if text.startswith("Unknown endpoint type"):
        close = difflib.get_close_matches(kind.lower(), ENDPOINT_TYPES, n=1)
        if close:
            return f"unknown type {kind!r}: did you mean {close[0]}:{rest}?"
        return f"unknown type {kind!r}; known ones include {', '.join(ENDPOINT_TYPES)}"
    if text.startswith("invalid literal for int()"):
        number = text.partition(": ")[2]
        return "a port number is missing" if number == "''" else f"{number} is not a whole number"
    if "got multiple values for argument 'interface'" in text:
        return r"an IPv6 interface's colons must be escaped: interface=\:\:1"
    if "unexpected keyword argument" in text:
        return f"unknown option {text.rpartition(' ')[2]}"
    if isinstance(error, ImportError):
        return f"{kind} needs {error.name or 'a module'} installed"
    return text or type(error).__name__


# -- ZeroMQ addresses ------------------------------------------------------------------------

_BIND_FORM = "tcp://HOST:PORT (e.g. tcp://10.0.0.1:5570, port * for any free one)"
_CONNECT_FORM = "tcp://HOST:PORT (e.g. tcp://10.0.0.1:5570, the producer's --bind)"


def check_zmq_address(value: Any, *, bind: bool) -> str:
    """C{value} if it is a ZeroMQ address to bind (C{bind}) or connect to: C{tcp://HOST:PORT}
    with a port from 1 to 65535 (C{*} too, to bind), or C{ipc://PATH}; else a C{ValueError}."""
    expected = f"must look like {_BIND_FORM if bind else _CONNECT_FORM}"
    if not isinstance(value, str):
        raise ValueError(f"{expected}, not {value!r}")
    problem = _zmq_problem(value, bind)
    if problem is not None:
        raise ValueError(f"{expected}, not {value!r}" + (f" ({problem})" if problem else ""))
    return value


def _zmq_problem(address: str, bind: bool) -> str | None:
    """What is wrong with a ZeroMQ address (C{""}: only its form), or C{None}."""
    scheme, separator, rest = address.partition("://")
    if not separator:
        host, colon, port = address.rpartition(":")
        return f"did you mean tcp://{address}?" if colon and host and port.isdigit() else ""
    if scheme == "ipc":
        return None if rest else "an ipc:// address needs a path"
    if scheme != "tcp":
        return f"{scheme}:// is not served; use tcp://"
    host, colon, port = rest.rpartition(":")
    if not colon or not port:
        return "the port is missing"
    if not host:
        return "the host is missing"
    if port == "*":
        return None if bind else "port * is for --bind: give the port the producer bound"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"the port must be from 1 to 65535{' or *' if bind else ''}, not {port}"
    if host == "*" and not bind:
        return "host * is for --bind: give the producer's address"
    return None


def zmq_tcp_address(address: str) -> TCPAddress | None:
    """The address a (valid) ZeroMQ C{tcp://} bind address binds, if its host is C{*} or a
    numeric IP; C{None} for an interface or host name (ZeroMQ resolves those its own way)
    and for C{ipc://}."""
    if not address.startswith("tcp://"):
        return None
    host, _, port = address[len("tcp://") :].rpartition(":")
    host = "" if host == "*" else host.removeprefix("[").removesuffix("]")
    try:
        ipv6 = bool(host) and ipaddress.ip_address(host.partition("%")[0]).version == 6
    except ValueError:
        return None
    return TCPAddress(host, 0 if port == "*" else int(port), ipv6)


# -- listening -------------------------------------------------------------------------------


def cannot(
    action: str,
    what: object,
    error: Exception,
    address: TCPAddress | None = None,
    in_use: str = ANOTHER_GASPAR,
) -> str:
    """One line: C{cannot listen on tcp:10123: address already in use (is another gaspar
    running?)}. C{error} has an C{errno} (an C{OSError}, a C{ZMQError}); C{address}, if
    known, makes the hints more precise; C{in_use} is the hint when the address is in use."""
    code = getattr(error, "errno", None)
    reason = _lower(getattr(error, "strerror", None) or str(error))
    reason = re.sub(r"\.? \(addr='[^']*'\)$", "", reason).rstrip(".")  # ZeroMQ's suffix
    if code == errno.ENODEV and str(what).startswith("tcp://"):
        host = str(what)[len("tcp://") :].rpartition(":")[0]
        reason = f"no such host or interface {host} (give an address of this machine, or *)"
    elif code == errno.EADDRINUSE:
        reason += f" ({in_use})"
    elif code == errno.EADDRNOTAVAIL and address is not None and address.host:
        reason += f" (is {address.host} an address of this machine?)"
    elif code == errno.EACCES and address is not None and 0 < address.port < 1024:
        reason += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    return f"cannot {action} {what}: {reason}"


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


@dataclass(frozen=True)
class Listener:
    """An address to try: how to say it (C{bind tcp://...} or C{listen on tcp:...})."""

    action: str
    what: object
    address: TCPAddress
    in_use: str = ANOTHER_GASPAR


def try_listening(listeners: Iterable[Listener]) -> None:
    """Bind and listen on each address as Twisted and ZeroMQ do (C{SO_REUSEADDR}), holding
    them all (so that one given twice fails too), then close them. The first that fails
    raises L{ListenError}, one line."""
    held: list[tuple[Listener, socket.socket]] = []
    try:
        for listener in listeners:
            address = listener.address
            family = socket.AF_INET6 if address.ipv6 else socket.AF_INET
            try:
                where = socket.getaddrinfo(
                    address.host or None,
                    address.port,
                    family,
                    socket.SOCK_STREAM,
                    0,
                    socket.AI_PASSIVE,
                )[0][4]
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError as e:
                raise ListenError(cannot(listener.action, listener.what, e, address)) from e
            held.append((listener, sock))
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(where)
                sock.listen(1)
            except OSError as e:
                hint = _in_use(held)
                raise ListenError(cannot(listener.action, listener.what, e, address, hint)) from e
    finally:
        for _, sock in held:
            sock.close()


def try_zmq_bind(address: str) -> None:
    """Bind a ZeroMQ socket on C{address} and let it go (for what L{try_listening} cannot
    try with a plain socket: C{ipc://} paths, host and interface names); else
    L{ListenError}, one line. Its context is ended before returning: a ZeroMQ context must
    not live across the fork of a daemonising twistd."""
    import zmq

    context = zmq.Context(1)
    try:
        sock = context.socket(zmq.ROUTER)
        sock.linger = 0
        sock.ipv6 = is_ipv6(address)
        try:
            sock.bind(address)
        except zmq.ZMQError as e:
            raise ListenError(cannot("bind", address, e, zmq_tcp_address(address))) from e
        finally:
            sock.close()
    finally:
        context.term()


def try_unix_socket(path: str, locked: bool, in_use: str = ANOTHER_GASPAR) -> None:
    """Check that a UNIX socket can be made at C{path}: its directory exists, no running
    process holds its lock file (C{lockfile=1}: Twisted then replaces a socket a dead one
    left) and no socket is there already; else L{ListenError}."""
    from twisted.python.lockfile import FilesystemLock

    what = f"unix:{path}"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ListenError(f"cannot listen on {what}: no such directory {directory}")
    if locked:
        lock = FilesystemLock(path + ".lock")
        try:
            held = lock.lock()
        except OSError as e:
            raise ListenError(cannot("listen on", what, e)) from e
        if not held:
            raise ListenError(f"cannot listen on {what}: its lock file is held ({in_use})")
        stale = not lock.clean  # its owner died: Twisted removes the socket it left
        lock.unlock()
        if stale:
            return
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        raise ListenError(
            f"cannot listen on {what}: {path} exists (left by an earlier run? remove it)"
        ) from None
    else:
        raise ListenError(f"cannot listen on {what}: address already in use ({in_use})")
    finally:
        probe.close()


def _in_use(held: list[tuple[Listener, socket.socket]]) -> str:
    """The in-use hint of the last listener: another address given here takes that port?"""
    last, _ = held[-1]
    for earlier, _ in held[:-1]:
        if last.address.port and earlier.address.port == last.address.port:
            return "it is given twice: each listener needs its own port"
    return last.in_use
