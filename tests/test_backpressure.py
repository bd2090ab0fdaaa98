"""Clients that read slowly, not at all, or hang up while paused: a real daemon stays bounded.

Each test drives a real ``twistd gaspar`` over loopback sockets; RSS is the producer's, read
from /proc. Sizes are moderate so each test takes a few seconds.
"""

from __future__ import annotations

import json
import re
import select
import socket
import struct
import threading
import time

import pytest_twisted
from conftest import TESTS, wait_until
from test_faults import reset, rss_kib
from test_framed import framed_daemon, read_reply, send_all
from test_metrics import fetch, metrics_address
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gaspar_tw import GasparClient, Producer
from gaspar_tw.client import pack, request
from gaspar_tw.dispatch import Dispatcher, WorkerLink
from gaspar_tw.server.framed import FramedFactory, FramedProtocol
from gaspar_tw.wire import messages as wire
from gaspar_tw.wire.framed import OK, REFUSED

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


def send_until_refused(sock: socket.socket, frame: bytes, count: int) -> None:
    """Send C{frame} C{count} times, or until the socket stalls or the server drops it."""
    try:
        for _ in range(count):
            sock.sendall(frame)
    except OSError:  # a timeout once the server stops reading, or its reset
        pass


def test_a_framed_client_that_never_reads_stops_being_read_and_is_dropped(daemon_factory):
    daemon, address = framed_daemon(daemon_factory, "--idle-timeout", "1")
    body = b"r" * 16384
    with socket.create_connection(address, timeout=10) as warm:  # allocator and buffers warm
        send_all(warm, [body] * 200)
        assert [read_reply(warm) for _ in range(200)] == [(OK, body)] * 200
    pid = daemon.process.pid
    before = rss_kib(pid)
    with non_reading_socket(address) as sock:
        sock.settimeout(3)
        # 8,000 echo requests of 16 KiB, pipelined by a client that reads nothing.
        sender = threading.Thread(
            target=send_until_refused, args=(sock, pack(body), 8000), daemon=True
        )
        sender.start()
        peak = peak_rss_kib(pid, lambda: re.search(DROPPED, daemon.log()), timeout=10)
        # At most 1,024 replies in flight plus Twisted's 64 KiB buffer: ~16 MiB.
        assert peak - before < 40 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"
        daemon.wait_for(DROPPED)
        sender.join(5)
        assert read_to_the_end(sock) < 8000 * len(body)
    with socket.create_connection(address, timeout=10) as sock:
        send_all(sock, [b"still served"])
        assert read_reply(sock) == (OK, b"still served")


def test_gaspar_replies_nobody_reads_count_against_max_pending_until_dropped(daemon_factory):
    daemon = daemon_factory(
        "--handler",
        "framed_handlers:mixed",
        "--max-pending",
        "2",
        "--idle-timeout",
        "1",
        "--metrics",
        "tcp:0:interface=127.0.0.1",
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
        unsent = json.loads(fetch(metrics_address(daemon), "/status"))["unsent"]
        assert unsent == len(answered)  # shown, until they are dropped

        def dropped() -> int:
            return sum(int(n) for n in re.findall(DROPPED, daemon.log()))

        assert wait_until(lambda: dropped() == len(answered), 5), daemon.log().decode()
        assert all(read_to_the_end(s) < size for s in answered)  # cut off, not delivered
        assert request(daemon.address, b"after", 10) == b"after"  # their slots are free
    finally:
        for sock in socks:
            sock.close()


def read_replies(sock: socket.socket, count: int, size: int) -> list[tuple[int, int]]:
    """Read C{count} framed replies of C{size} bytes: their (status, length)."""
    data = bytearray(count * (5 + size))
    view, got = memoryview(data), 0
    while got < len(data) and (n := sock.recv_into(view[got:])):
        got += n
    return [struct.unpack_from("!IB", data, i * (5 + size)) for i in range(count)]


def test_replies_stalled_framed_clients_hold_count_against_max_pending_for_all(daemon_factory):
    # max-pending 4 bounds the 8 MiB replies held for all framed clients together, not 4 per
    # connection: two clients that read nothing fill it, the next ones are refused. (Each
    # reply is larger than the socket buffers, so none of it leaves while its client waits.)
    daemon, address = framed_daemon(
        daemon_factory, "--max-pending", "4", "--metrics", "tcp:0:interface=127.0.0.1"
    )
    metrics = metrics_address(daemon)

    def status() -> dict:
        return json.loads(fetch(metrics, "/status"))

    def handled() -> int:
        requests = status()["requests"]
        return requests["ok"] + requests["refused"]

    size = 8 * MIB
    ask = pack(b"size:%d" % size)
    with socket.create_connection(address, timeout=10) as warm:  # allocator and buffers warm
        warm.sendall(ask * 4)
        assert read_replies(warm, 4, size) == [(size + 1, OK)] * 4
    before = rss_kib(daemon.process.pid)
    socks = [non_reading_socket(address) for _ in range(6)]
    try:
        for sock, count in zip(socks, [2, 2, 4, 4, 4, 4], strict=True):
            expected = handled() + count
            sock.sendall(ask * count)  # one after another: each is answered before the next
            assert wait_until(lambda expected=expected: handled() == expected, 5)
        grown = rss_kib(daemon.process.pid) - before
        # 4 replies held (32 MiB, up to twice that while Twisted joins its buffer), not 20.
        assert grown < 96 * MIB // 1024, f"RSS grew by {grown // 1024} MiB"
        assert status()["unsent"] == 4 and status()["requests"]["refused"] == 4 * 4
        with socket.create_connection(address, timeout=10) as sock:
            send_all(sock, [b"while full"])
            assert read_reply(sock)[0] == REFUSED
        first, second, *refused = socks
        assert read_replies(first, 2, size) == [(size + 1, OK)] * 2
        assert wait_until(lambda: status()["unsent"] == 2, 5)  # sent: no longer counted
        reset(second)  # lost while paused: its replies no longer count either
        assert wait_until(lambda: status()["unsent"] == 0, 5)
        with socket.create_connection(address, timeout=10) as sock:
            send_all(sock, [b"after"])
            assert read_reply(sock) == (OK, b"after")
        for sock in refused:
            assert {read_reply(sock)[0] for _ in range(4)} == {REFUSED}
    finally:
        for sock in socks:
            sock.close()


def test_a_slow_reader_is_not_dropped_however_long_its_reply_takes(daemon_factory):
    # The write timeout watches progress, not speed: 32 MiB (far more than the socket
    # buffers take) read at 16 MiB/s takes four times --idle-timeout, and the producer holds
    # most of it all along.
    daemon = daemon_factory(
        "--handler",
        "framed_handlers:mixed",
        "--idle-timeout",
        "0.5",
        "--metrics",
        "tcp:0:interface=127.0.0.1",
    )
    metrics = metrics_address(daemon)
    size, rate = 32 * MIB, 16 * MIB
    unsent_seen = []
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(10)
        sock.connect((daemon.host, daemon.port))
        sock.sendall(pack(b"size:%d" % size))
        started, received = time.monotonic(), 0
        try:
            while chunk := sock.recv(64 * 1024):
                received += len(chunk)
                if len(unsent_seen) < min(3, received // (8 * MIB)):  # at 8, 16, 24 MiB
                    unsent_seen.append(json.loads(fetch(metrics, "/status"))["unsent"])
                time.sleep(max(0.0, started + received / rate - time.monotonic()))
        except ConnectionResetError:
            pass
    took = time.monotonic() - started
    assert b"took no reply bytes" not in daemon.log()
    assert received == size and took > 3 * 0.5, f"{received} bytes in {took:.1f}s"
    assert unsent_seen == [1, 1, 1]  # the producer still held some of it at 24 MiB


def test_a_reader_slower_than_the_kernel_wakes_twisted_is_not_dropped(daemon_factory):
    # At 64 KB/s the kernel's send buffer drains too slowly to make the socket writable
    # again within --idle-timeout: the progress is in the kernel's queue, not Twisted's.
    daemon = daemon_factory("--handler", "framed_handlers:mixed", "--idle-timeout", "1")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.settimeout(10)
        sock.connect((daemon.host, daemon.port))
        sock.sendall(pack(b"size:%d" % (32 * MIB)))
        started, received = time.monotonic(), 0
        while time.monotonic() - started < 3:  # three times --idle-timeout
            chunk = sock.recv(6400)
            assert chunk, f"dropped after {received} bytes, {time.monotonic() - started:.1f}s"
            received += len(chunk)
            time.sleep(0.1)
    assert b"took no reply bytes" not in daemon.log()


def test_one_slow_framed_reader_holds_only_its_share_of_max_pending(daemon_factory):
    # A client that pipelines 1,100 requests for 70 KB replies and reads them slowly (so it is
    # never dropped) holds an eighth of --max-pending (1024), not all of it: others are served.
    daemon, address = framed_daemon(daemon_factory)
    with socket.socket() as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(10)
        slow.connect(address)
        send_all(slow, [b"size:70000"] * 1100)
        slow.recv(65536)  # the replies have started: the connection is full
        time.sleep(0.5)
        for _ in range(3):
            slow.recv(65536)  # slowly, but taking some
            with socket.create_connection(address, timeout=10) as other:
                send_all(other, [b"hello"] * 32)
                statuses = [read_reply(other)[0] for _ in range(32)]
            assert statuses == [OK] * 32, f"{statuses.count(REFUSED)} of 32 refused"
            time.sleep(0.3)


def test_a_paused_framed_connection_that_hangs_up_gives_back_its_slots(daemon_factory):
    # One worker, max-pending 64: the connection is read up to its cap of 64 requests (all of
    # --max-pending) and paused; no reply can be written (the first request sleeps 3 s) when
    # its client hangs up.
    daemon, address = framed_daemon(daemon_factory, "--max-pending", "64", workers=1)
    with socket.create_connection(address, timeout=10) as sock:
        send_all(sock, [b"sleep:3"] + [b"fast"] * 1999)
        daemon.wait_for(rb"sleeping 3")
    closed = time.monotonic()
    refused_until = closed
    with socket.create_connection(address, timeout=10) as sock:
        while time.monotonic() - closed < 5:  # refused (status 3) until the hang-up is seen
            send_all(sock, [b"after"])
            status, reply = read_reply(sock)  # once accepted: after the 3 s request
            if status != REFUSED:
                break
            refused_until = time.monotonic()
            time.sleep(0.05)
    assert (status, reply) == (OK, b"after")
    assert refused_until - closed < 1.5, f"refused for {refused_until - closed:.1f}s"
    assert b"hung up while paused" in daemon.log()


def test_one_burst_of_20000_pipelined_requests_is_read_at_the_cap_and_all_answered(
    daemon_factory,
):
    daemon, address = framed_daemon(daemon_factory)
    messages = [b"%d" % i for i in range(20000)]
    with socket.create_connection(address, timeout=15) as sock:
        sender = threading.Thread(target=send_all, args=(sock, messages), daemon=True)
        sender.start()  # in one sendall, read while it is sent
        replies = bytearray()
        expected = sum(5 + len(m) for m in messages)
        while len(replies) < expected and (chunk := sock.recv(1 << 20)):
            replies += chunk
        sender.join(10)
    statuses, offset = [], 0
    while offset < len(replies):
        length, status = struct.unpack_from("!IB", replies, offset)
        statuses.append(status)
        offset += 4 + length
    assert statuses.count(OK) == len(messages), f"{statuses.count(REFUSED)} refused"
    assert replies == b"".join(struct.pack("!IB", len(m) + 1, OK) + m for m in messages)


def test_the_in_flight_cap_and_a_full_write_buffer_pause_reading_each_on_its_own():
    clock = Clock()
    dispatcher = Dispatcher(clock, max_pending=4)  # the connection's cap: 4 in flight
    sent: list = []
    dispatcher.workerReady(WorkerLink(1, 1, sent.append))
    factory = FramedFactory(dispatcher, 1000, idleTimeout=None, clock=clock)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.producer is protocol

    def answer() -> None:  # the worker answers everything it was sent
        clock.advance(0)
        ids = list(protocol._pending)
        dispatcher.repliesReceived(1, ids, bytes([wire.OK]) * len(ids), [b"r"] * len(ids))

    protocol.dataReceived(b"".join(pack(b"%d" % i) for i in range(10)))
    assert dispatcher.pending == 4 and transport.producerState == "paused"  # 6 wait, unread
    protocol.pauseProducing()  # as Twisted does when its write buffer passes bufferSize
    answer()
    assert dispatcher.pending == 0 and transport.producerState == "paused"  # buffer still full
    protocol.resumeProducing()  # Twisted sent it all: the 6 waiting are read, up to the cap
    assert dispatcher.pending == 4 and transport.producerState == "paused"
    answer()
    assert dispatcher.pending == 2 and transport.producerState == "producing"
    answer()
    assert transport.value() == (struct.pack("!IB", 2, OK) + b"r") * 10  # in order, none refused
    assert factory.paused == set() and len(clock.getDelayedCalls()) == 1  # the hang-up check
    factory.stopIdleSweep()
    assert clock.getDelayedCalls() == []


class TwistedLikeTransport(StringTransport):
    """Pauses its streaming producer once it holds over C{bufferSize} unsent bytes, as
    Twisted's transports do; L{sendAll} is the client reading them all."""

    bufferSize = 10
    held = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.held += len(data)
        if self.held > self.bufferSize and self.producer is not None:
            self.producer.pauseProducing()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def sendAll(self) -> None:
        self.held = 0
        if self.producer is not None:
            self.producer.resumeProducing()


def test_replies_a_full_transport_holds_count_against_max_pending_until_sent_or_lost():
    clock = Clock()
    dispatcher = Dispatcher(clock, max_pending=6)
    dispatcher.workerReady(WorkerLink(1, 1, [].append))
    factory = FramedFactory(dispatcher, 1000, idleTimeout=None, clock=clock)
    factory.startIdleSweep()

    def connect(transport) -> FramedProtocol:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(transport)
        return protocol

    def send(protocol: FramedProtocol, count: int) -> None:
        protocol.dataReceived(pack(b"q") * count)
        clock.advance(0)  # the requests go to the worker
        ids = list(protocol._pending)
        dispatcher.repliesReceived(1, ids, bytes([wire.OK]) * len(ids), [b"r"] * len(ids))

    def statuses(transport) -> list[int]:
        data, found = transport.value(), []
        while data:
            length, status = struct.unpack_from("!IB", data)
            found.append(status)
            data = data[4 + length :]
        return found

    stalled = connect(stalled_transport := TwistedLikeTransport())
    send(stalled, 2)  # the 12 bytes of their replies fill its buffer: counted, not pending
    assert (dispatcher.pending, dispatcher.writing) == (0, 2)
    assert stalled_transport.producerState == "paused"
    other = connect(other_transport := StringTransport())
    send(other, 6)  # 2 unsent + 4 pending fill max-pending: 2 refused
    assert statuses(other_transport) == [OK] * 4 + [REFUSED] * 2
    assert dispatcher.writing == 2
    stalled_transport.sendAll()  # its client read them: they no longer count
    assert dispatcher.writing == 0 and stalled_transport.producerState == "producing"

    send(stalled, 3)
    assert dispatcher.writing == 3
    stalled.connectionLost(Failure(ConnectionDone()))  # lost while paused
    assert dispatcher.writing == 0
    closing = connect(TwistedLikeTransport())
    send(closing, 2)
    closing.close()  # they still wait to be sent...
    assert dispatcher.writing == 2
    closing.connectionLost(Failure(ConnectionDone()))  # ... until the connection is gone
    assert dispatcher.writing == 0

    # The hang-up check ran on, once, through every pause; stopping leaves no timer, and
    # a pause after that starts none.
    assert len(clock.getDelayedCalls()) == 1
    factory.stopIdleSweep()
    late = connect(TwistedLikeTransport())
    send(late, 2)
    assert dispatcher.writing == 2 and factory.paused == {late}
    assert clock.getDelayedCalls() == []
    late.connectionLost(Failure(ConnectionDone()))
    assert dispatcher.writing == 0


@pytest_twisted.ensureDeferred
async def test_a_producer_stopped_while_a_framed_client_stalls_leaves_no_timer_or_count():
    producer = Producer(
        "framed_handlers:mixed",
        None,
        1,
        pythonpath=[str(TESTS)],
        framed_endpoint="tcp:0:interface=127.0.0.1",
    )

    async def until(predicate) -> None:
        for _ in range(500):
            if predicate():
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("timed out")

    def timers() -> list[str]:
        """The framed port's pending timers: its idle sweep and hang-up check."""
        factory = producer.framedFactory
        return [
            call.func.f.__name__
            for call in reactor.getDelayedCalls()
            if getattr(getattr(call.func, "f", None), "__self__", None)
            in (factory, factory.idleSweep)
        ]

    producer.privilegedStartService()
    producer.startService()
    stalled = None
    try:
        await producer.whenReady().addTimeout(15, reactor)
        stalled = non_reading_socket(("127.0.0.1", producer.framedPort.getHost().port))
        stalled.sendall(pack(b"size:%d" % (8 * MIB)))
        await until(lambda: producer.dispatcher.writing == 1)
        assert "_closeHungUp" in timers() and producer.framedFactory.paused
        await producer.stopService()
        assert timers() == []
        assert producer.dispatcher.writing == 1  # the connection closes once it is sent...
        reset(stalled)
        await until(lambda: producer.dispatcher.writing == 0)  # ... or its client is gone
        producer.startService()  # started again: the count starts from 0, not below
        await producer.whenReady().addTimeout(15, reactor)
        port = producer.framedPort.getHost().port
        client = GasparClient(reactor, f"tcp:127.0.0.1:{port}", timeout=15, framed=True)
        assert await client.request(b"again") == b"again"
        await client.close()
        await producer.stopService()
        assert timers() == [] and producer.dispatcher.writing == 0
    finally:
        if stalled is not None:
            stalled.close()
        if producer.running:
            await producer.stopService()
