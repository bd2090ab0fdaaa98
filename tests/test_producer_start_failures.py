"""A producer that cannot start leaves nothing open, and Producer.start() says so by raising."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from conftest import child_env
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gaspar_tw import ListenError, Producer


@pytest.fixture
def held():
    """A loopback port held (listening) by the test."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def closed(port: int) -> bool:
    """Whether C{port} stops listening within a few reactor turns (Twisted closes a port
    on the turn after stopListening)."""
    for _ in range(50):
        if refused(port):
            return True
        await deferLater(reactor, 0.01, lambda: None)
    return False


@pytest_twisted.ensureDeferred
async def test_a_framed_port_in_use_closes_the_gaspar_port_it_had_opened(held):
    port = free_port()
    producer = Producer(
        "gaspar_tw.examples:echo",
        f"tcp:{port}:interface=127.0.0.1",
        1,
        framed_endpoint=f"tcp:{held}:interface=127.0.0.1",
    )
    with pytest.raises(ListenError, match=f"cannot listen on tcp:{held}:interface=127.0.0.1"):
        producer.privilegedStartService()
    assert await closed(port), "the gaspar port was left listening"
    assert producer.port is None and not producer.running


@pytest_twisted.ensureDeferred
async def test_a_bind_in_use_closes_the_ports_opened_before_it(held):
    port = free_port()
    producer = Producer(
        "gaspar_tw.examples:echo",
        f"tcp:{port}:interface=127.0.0.1",
        0,
        bind=f"tcp://127.0.0.1:{held}",
    )
    producer.privilegedStartService()  # the TCP port: before twistd drops privileges
    with pytest.raises(ListenError, match=f"cannot bind tcp://127.0.0.1:{held}"):
        producer.startService()
    assert await closed(port), "the gaspar port was left listening"
    assert not producer.running


def test_start_raises_when_the_port_is_in_use(tmp_path, held):
    script = textwrap.dedent(
        f"""
        import gaspar_tw
        gaspar_tw.Producer("gaspar_tw.examples:echo", "tcp:{held}:interface=127.0.0.1", 1).start()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.rstrip().endswith(
        f"gaspar_tw.errors.ListenError: cannot listen on tcp:{held}:interface=127.0.0.1:"
        " address already in use (is another gaspar running?)"
    ), done.stderr
