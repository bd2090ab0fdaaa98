"""ZeroMQ CURVE keys for remote workers: generate a key directory, and socket options from it.

A key directory holds C{producer.key}/C{producer.key_secret} and C{worker.key}/
C{worker.key_secret} (ZeroMQ certificate files). The producer needs its secret key and the
workers' public keys; a worker host needs its own key pair and the producer's public key.
Keys that do not match make the connection fail in its handshake, which ZeroMQ tells only a
socket monitor: L{HandshakeFailures} turns those events into log lines on both ends.
Nothing here imports Twisted: worker processes use this module too.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable

import zmq
import zmq.auth

PRODUCER = "producer"
WORKER = "worker"
#: The files of a key directory: each side's public key (.key) and secret key (.key_secret).
KEY_FILES = tuple(
    f"{name}{suffix}" for name in (PRODUCER, WORKER) for suffix in (".key", ".key_secret")
)

#: The socket-monitor events of a failed handshake (keys that do not match, among others).
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
#: Each kind of failed handshake is logged at once, then at most once this often (a worker
#: keeps trying, up to ten times a second).
HANDSHAKE_LOG_INTERVAL = 10.0
#: A monitor message's first frame: the event and its value (read here: zmq.utils.monitor
#: imports zmq.asyncio, which would slow every remote worker's start).
_EVENT = struct.Struct("=HI")


def existing_keys(directory: str) -> list[str]:
    """The key files L{keygen} writes that C{directory} holds already."""
    return [name for name in KEY_FILES if os.path.lexists(os.path.join(directory, name))]


def keygen(directory: str, replace: bool = False) -> list[str]:
    """Write a producer and a worker key pair into C{directory}; return the files written.

    C{directory} is created (private) if missing. Keys already there are kept
    (C{FileExistsError} naming them) unless C{replace}. Each file is written in a private
    directory first and then renamed into place: a secret key is never readable by others.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    existing = existing_keys(directory)
    if existing and not replace:
        raise FileExistsError(
            f"{directory} already holds {', '.join(existing)} (replace=True replaces them)"
        )
    staging = tempfile.mkdtemp(prefix=".keygen-", dir=directory)
    try:
        for name in (PRODUCER, WORKER):
            _, secret = zmq.auth.create_certificates(staging, name)
            os.chmod(secret, 0o600)
        written = []
        for name in KEY_FILES:
            written.append(os.path.join(directory, name))
            os.replace(os.path.join(staging, name), written[-1])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _load(directory: str, name: str, secret: bool) -> tuple[bytes, bytes | None]:
    if not os.path.isdir(directory):
        raise ValueError(f"no directory {directory} (make the keys with: gaspar-tw keygen DIR)")
    suffix = ".key_secret" if secret else ".key"
    path = os.path.join(directory, name + suffix)
    if not os.path.isfile(path):
        raise ValueError(f"{directory} holds no {name + suffix} (gaspar-tw keygen DIR makes it)")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read CURVE key {path}: {e}") from None


def server_keys(directory: str) -> tuple[bytes, bytes]:
    """The producer's C{(public, secret)} keys; C{ValueError} saying which file is unreadable."""
    return _load(directory, PRODUCER, secret=True)


def client_keys(directory: str) -> tuple[bytes, bytes, bytes]:
    """A worker's C{(public, secret, producer public)} keys; C{ValueError} as above."""
    public, secret = _load(directory, WORKER, secret=True)
    server_public, _ = _load(directory, PRODUCER, secret=False)
    return public, secret, server_public


def server_options(socket: zmq.Socket, directory: str) -> None:
    """Make C{socket} (before it binds) a CURVE server with the producer's secret key."""
    socket.curve_publickey, socket.curve_secretkey = server_keys(directory)
    socket.curve_server = True


def client_options(socket: zmq.Socket, directory: str) -> None:
    """Make C{socket} (before it connects) a CURVE client of the producer in C{directory}."""
    public, secret, server_public = client_keys(directory)
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_serverkey = server_public


def handshake_failure(event: int, value: int) -> str:
    """What a failed handshake's monitor event means, and what to check."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the producer refused the worker's key (ZAP status {value}): the worker's"
            " worker.key is not in the producer's --curve-keys directory"
        )
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "only one side uses CURVE: give --curve-keys to both or to neither"
    if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        return (
            "a cryptographic error: the worker's producer.key is not this producer's"
            " public key (check --curve-keys)"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return (
            f"the other end closed the connection during the handshake ({os.strerror(value)}):"
            " is the worker's producer.key this producer's public key?"
        )
    return f"ZeroMQ protocol error 0x{value:x} (check --curve-keys on both sides)"


class HandshakeFailures:
    """Read a socket monitor's events (L{event}); C{say(text)} each kind of failed handshake
    at once, then at most once every L{HANDSHAKE_LOG_INTERVAL} seconds, counted."""

    def __init__(
        self, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.say = say
        self.clock = clock
        self._kinds: dict[str, list] = {}  # what it means -> [next report time, count]

    def event(self, frames: list[bytes]) -> None:
        """Take one monitor message (other events than a failed handshake are ignored)."""
        event, value = _EVENT.unpack_from(frames[0])
        if not event & HANDSHAKE_FAILED:
            return
        meaning = handshake_failure(event, value)
        kind = self._kinds.setdefault(meaning, [0.0, 0])
        kind[1] += 1
        now = self.clock()
        if now >= kind[0]:
            times = f" ({kind[1]} times in {HANDSHAKE_LOG_INTERVAL:g}s)" if kind[1] > 1 else ""
            kind[:] = [now + HANDSHAKE_LOG_INTERVAL, 0]
            self.say(meaning + times)
