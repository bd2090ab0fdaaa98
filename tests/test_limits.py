"""File descriptors: ``twistd gaspar`` raises its soft limit, and running out is survived calmly.

Issue 10 item 9: at a soft limit of 1,024, 1,500 idle connections locked every client out, and
each refused connection was three lines of log.
"""

from __future__ import annotations

import os
import re
import resource
import socket
import time

import pytest
import pytest_twisted
from conftest import Daemon, wait_until
from twisted.internet import reactor, tcp
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from gaspar_tw.client import pack, request
from gaspar_tw.producer import Producer

CANNOT_ACCEPT = rb"cannot accept connections on "
TWISTED_PER_CONNECTION = rb"EMFILE recovery|Could not accept new connection"


@pytest.fixture
def many_files():
    """Let this test process hold a few thousand sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard file limit is {hard}; these tests need 4,096")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def limited_daemon(many_files, daemon_factory):
    """Start ``twistd gaspar`` (echo, one worker) under a file limit: start(soft, hard, *args)."""

    def start(soft: int, hard: int, *args: str) -> Daemon:
        return daemon_factory(
            "--handler",
            "gaspar_tw.examples:echo",
            "--endpoint",
            "tcp:0:interface=127.0.0.1:backlog=1024",
            *args,
            workers=1,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        )

    return start


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection((daemon.host, daemon.port), timeout=5)


def test_soft_limit_is_raised_so_idle_connections_do_not_lock_clients_out(limited_daemon):
    daemon = limited_daemon(1024, 4096, "--idle-timeout", "60")
    idle = [connect(daemon) for _ in range(1500)]
    try:
        wait_until(lambda: open_files(daemon.process.pid) >= 1500, 5)
        replies = [request(daemon.address, b"good %d" % i, timeout=5) for i in range(50)]
        assert replies == [b"good %d" % i for i in range(50)]
        assert open_files(daemon.process.pid) >= 1500  # the idle ones are all still open
        assert b"file descriptor limit raised from 1024 to 4096" in daemon.log()
    finally:
        for sock in idle:
            sock.close()


def test_out_of_descriptors_open_connections_are_served_and_it_is_logged_once_a_second(
    limited_daemon,
):
    daemon = limited_daemon(128, 128, "--idle-timeout", "60")
    early = connect(daemon)  # accepted before the limit is reached
    idle = [connect(daemon) for _ in range(200)]  # the server holds ~110 of them
    try:
        started, cpu = time.monotonic(), cpu_seconds(daemon.process.pid)
        refused = 0
        while time.monotonic() - started < 3.0:  # new clients keep coming, and are turned away
            try:
                refused += request(daemon.address, b"new", timeout=2) == b""
            except OSError:
                refused += 1
            time.sleep(0.02)
        busy = (cpu_seconds(daemon.process.pid) - cpu) / (time.monotonic() - started)
        early.sendall(pack(b"early"))
        assert early.recv(100) == b"early"
        reports = re.findall(CANNOT_ACCEPT, daemon.log())
        assert 1 <= len(reports) <= 5, daemon.log().decode()
        assert not re.search(TWISTED_PER_CONNECTION, daemon.log())
        assert refused > 50 and busy < 0.5
    finally:
        early.close()
        for sock in idle:
            sock.close()
    assert wait_until(lambda: request(daemon.address, b"again", timeout=2) == b"again", 5)


@pytest_twisted.ensureDeferred
async def test_without_a_spare_descriptor_accepting_pauses_instead_of_spinning():
    producer = Producer("gaspar_tw.examples:echo", "tcp:0:interface=127.0.0.1", 1)
    events: list[dict] = []
    client = socket.socket()
    client.setblocking(False)
    filler: list = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        # Twisted keeps one descriptor spare to accept-and-close with when out of them; take
        # it away, as a failed re-reservation would (it is never tried again), until the end.
        tcp._reservedFD.__enter__()
        globalLogPublisher.addObserver(events.append)
        try:
            highest = max(map(int, os.listdir("/proc/self/fd")))
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
            try:
                while True:
                    filler.append(open(os.devnull))
            except OSError:
                pass
            client.connect_ex(("127.0.0.1", producer.port.getHost().port))
            cpu = time.process_time()
            await deferLater(reactor, 1.0, lambda: None)
            busy = time.process_time() - cpu
        finally:
            for f in filler:
                f.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        failures = [e for e in events if "accept" in str(e.get("log_format", ""))]
        assert busy < 0.3 and len(failures) <= 3, (busy, len(failures))
        client.send(pack(b"waited"))  # accepted once descriptors are free again
        reply = b""
        for _ in range(100):
            await deferLater(reactor, 0.02, lambda: None)
            try:
                reply += client.recv(100)
            except BlockingIOError:
                continue
            if reply:
                break
        assert reply == b"waited"
    finally:
        tcp._reservedFD.reserve()  # (does nothing if it was never released)
        globalLogPublisher.removeObserver(events.append)  # (nothing if never added)
        client.close()
        await producer.stopService()
