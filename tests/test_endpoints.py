"""Endpoints other than TCP, worker output, and client-side failures."""

from __future__ import annotations

import re
import socket

import pytest
import pytest_twisted
from conftest import READY
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError

from gaspar_tw import GasparClient, Producer
from gaspar_tw.client import pack


def unix_request(path: str, message: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(pack(message))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_unix_socket_endpoint(tmp_path, daemon_factory):
    path = tmp_path / "gaspar.sock"
    daemon = daemon_factory(
        "--handler", "gaspar_tw.examples:upper", "--endpoint", f"unix:{path}", wait=False
    )
    daemon.wait_for(b"listening on unix " + re.escape(str(path).encode()))  # path as text
    daemon.wait_for(READY, 2)
    assert unix_request(str(path), b"over unix") == b"OVER UNIX"


def test_worker_prints_are_logged_with_the_worker_name(tmp_path, daemon_factory):
    (tmp_path / "chatty.py").write_text(
        "import sys\n"
        "def talk(m):\n"
        "    print('stdout says', m.decode())\n"
        "    print('stderr says', m.decode(), file=sys.stderr)\n"
        "    return m\n"
    )
    daemon = daemon_factory("--handler", "chatty:talk", workers=1)
    from gaspar_tw.client import request

    assert request(daemon.address, b"hi there", timeout=10) == b"hi there"
    daemon.wait_for(rb"worker 0 \(pid \d+\): stdout says hi there")
    daemon.wait_for(rb"worker 0 \(pid \d+\): stderr says hi there")


@pytest_twisted.ensureDeferred
async def test_producer_without_listener_serves_submit_only():
    producer = Producer("gaspar_tw.examples:upper", None, 1)
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        assert producer.port is None
        assert await producer.submit(b"quiet") == b"QUIET"
    finally:
        await producer.stopService()


@pytest_twisted.ensureDeferred
async def test_deferred_client_reports_connection_refused():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = GasparClient(reactor, f"tcp:127.0.0.1:{port}", timeout=5)
    with pytest.raises(ConnectionRefusedError):
        await client.request(b"anyone?")


@pytest_twisted.ensureDeferred
async def test_deferred_client_times_out_and_closes_its_connection():
    from twisted.internet.protocol import Factory, Protocol

    from gaspar_tw import RequestTimeout

    lost = []

    class Silent(Protocol):
        def connectionLost(self, reason):
            lost.append(reason)

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        client = GasparClient(reactor, f"tcp:127.0.0.1:{port.getHost().port}", timeout=0.3)
        with pytest.raises(RequestTimeout, match="client timeout"):
            await client.request(b"hello?")
        for _ in range(100):  # the server side sees the close within a second
            if lost:
                break
            await _sleep(0.01)
        assert lost
    finally:
        await port.stopListening()


def _sleep(seconds: float):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
