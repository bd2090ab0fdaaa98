"""Clients that read slowly, not at all, or hang up while paused: a real daemon stays bounded.

Each test drives a real ``twistd gaspar`` over loopback sockets; RSS is the producer's, read
from /proc. Sizes are moderate so each test takes a few seconds.
"""

from __future__ import annotations

import re
import select
import socket
import time

from conftest import wait_until
from test_faults import rss_kib

from gaspar_tw.client import pack, request

MIB = 1024 * 1024
DROPPED = rb"dropping (\d+) connections that took no reply bytes"


def non_reading_socket(address: tuple[str, int]) -> socket.socket:
    """A connected socket with a tiny receive buffer, for a client that never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(address)
    return sock


def peak_rss_kib(pid: int, until, timeout: float) -> int:
    """The highest RSS of C{pid} seen, sampling until C{until()} is true (or C{timeout})."""
    peak = 0

    def sample() -> bool:
        nonlocal peak
        peak = max(peak, rss_kib(pid))
        return until()

    wait_until(sample, timeout)
    return peak


def got_bytes(sock: socket.socket) -> bool:
    """True if the server sent something (even if it reset the connection since)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except ConnectionResetError:
        return True


def read_to_the_end(sock: socket.socket) -> int:
    """Bytes received until EOF or a reset."""
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


def test_gaspar_replies_nobody_reads_count_against_max_pending_until_dropped(daemon_factory):
    daemon = daemon_factory(
        "--handler", "framed_handlers:mixed", "--max-pending", "2", "--idle-timeout", "1"
    )
    size = 4 * MIB
    assert len(request(daemon.address, b"size:%d" % size, 10)) == size  # warm
    pid = daemon.process.pid
    before = rss_kib(pid)
    socks = []
    try:
        for _ in range(20):  # one after another: each is answered or refused before the next
            sock = non_reading_socket((daemon.host, daemon.port))
            sock.sendall(pack(b"size:%d" % size))
            socks.append(sock)
            assert wait_until(lambda s=sock: select.select([s], [], [], 0)[0], 5)
        answered = [s for s in socks if got_bytes(s)]
        grown = rss_kib(pid) - before
        # Two replies being written (max-pending 2) and the rest refused: 8 MiB, not 80.
        assert grown < 32 * 1024, f"RSS grew by {grown // 1024} MiB"
        assert 1 <= len(answered) < 20

        def dropped() -> int:
            return sum(int(n) for n in re.findall(DROPPED, daemon.log()))

        assert wait_until(lambda: dropped() == len(answered), 5), daemon.log().decode()
        assert all(read_to_the_end(s) < size for s in answered)  # cut off, not delivered
        assert request(daemon.address, b"after", 10) == b"after"  # their slots are free
    finally:
        for sock in socks:
            sock.close()


def test_a_slow_reader_is_not_dropped_however_long_its_reply_takes(daemon_factory):
    # The write timeout watches progress, not speed: 1 MiB read at ~640 KiB/s takes three
    # times --idle-timeout, while the producer holds most of it all along.
    daemon = daemon_factory("--handler", "framed_handlers:mixed", "--idle-timeout", "0.5")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(10)
        sock.connect((daemon.host, daemon.port))
        sock.sendall(pack(b"size:%d" % MIB))
        started, received = time.monotonic(), 0
        while chunk := sock.recv(64 * 1024):
            received += len(chunk)
            time.sleep(0.1)
    assert received == MIB and time.monotonic() - started > 1.5
    assert b"took no reply bytes" not in daemon.log()
