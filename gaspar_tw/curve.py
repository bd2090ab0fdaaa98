"""ZeroMQ CURVE keys for remote workers: generate a key directory, and socket options from it.

A key directory holds C{producer.key}/C{producer.key_secret} and C{worker.key}/
C{worker.key_secret} (ZeroMQ certificate files). The producer needs its secret key and the
workers' public keys; a worker host needs its own key pair and the producer's public key.
Nothing here imports Twisted: worker processes use this module too.
"""

from __future__ import annotations

import os

import zmq
import zmq.auth

PRODUCER = "producer"
WORKER = "worker"


def keygen(directory: str) -> list[str]:
    """Write a producer and a worker key pair into C{directory}; return the files written."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    written = []
    for name in (PRODUCER, WORKER):
        public, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)
        written += [public, secret]
    return written


def _load(directory: str, name: str, secret: bool) -> tuple[bytes, bytes | None]:
    suffix = ".key_secret" if secret else ".key"
    path = os.path.join(directory, name + suffix)
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
