"""The framed persistent protocol: a real daemon, pipelining, order, statuses, bad input."""

from __future__ import annotations

import re
import socket
import struct

import pytest
import pytest_twisted
from conftest import TESTS, pid_alive
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from gaspar_tw import GasparClient, Overloaded, Producer, RemoteError, RequestTimeout
from gaspar_tw.client import request
from gaspar_tw.wire.framed import HANDLER_ERROR, OK, REFUSED, TIMEOUT
from gaspar_tw.wire.frames import FrameSplitter, FrameTooLong

FRAMED = re.compile(rb"listening on tcp ([\d.]+):(\d+) \(framed protocol\)")


def framed_daemon(daemon_factory, *args: str, **kwargs):
    daemon = daemon_factory(
        "--handler",
        "framed_handlers:mixed",
        "--framed-endpoint",
        "tcp:0:interface=127.0.0.1",
        *args,
        **kwargs,
    )
    host, port = daemon.wait_for(FRAMED.pattern)[0]
    return daemon, (host.decode(), int(port))


def send_all(sock: socket.socket, messages: list[bytes]) -> None:
    sock.sendall(b"".join(struct.pack("!I", len(m)) + m for m in messages))


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_reply(sock: socket.socket) -> tuple[int, bytes]:
    length, status = struct.unpack("!IB", read_exactly(sock, 5))
    return status, read_exactly(sock, length - 1)


def test_pipelined_replies_come_back_in_request_order(daemon_factory):
    daemon, address = framed_daemon(daemon_factory)
    # The first request sleeps on one worker while the others finish on the other one:
    # they must still be answered after it, in the order they were sent.
    messages = [b"sleep:0.3"] + [b"fast-%d" % i for i in range(200)] + [b"fail-now", b"last"]
    with socket.create_connection(address, timeout=15) as sock:
        send_all(sock, messages)
        replies = [read_reply(sock) for _ in messages]
        # The connection stays open for more requests.
        send_all(sock, [b"again"])
        assert read_reply(sock) == (OK, b"again")
    assert [r for r in replies[:-2]] == [(OK, m) for m in messages[:-2]]
    assert replies[-2] == (HANDLER_ERROR, b"ValueError: asked to fail: fail-now")
    assert replies[-1] == (OK, b"last")
    # The gaspar port beside it still serves gaspar clients.
    assert request(daemon.address, b"plain", timeout=10) == b"plain"


def test_large_and_small_requests_mixed_on_one_connection_come_back_whole(daemon_factory):
    # Large bodies travel as views of the bytes they arrived in; small ones beside them,
    # split over many reads, must come back byte for byte and in order.
    daemon, address = framed_daemon(daemon_factory)
    messages = [
        bytes(range(256)) * 4096,  # 1 MiB
        b"small",
        b"z" * (16 * 1024),  # exactly at the view threshold
        b"y" * (16 * 1024 - 1),
        bytes(reversed(range(256))) * 300,
    ]
    with socket.create_connection(address, timeout=15) as sock:
        send_all(sock, messages)
        assert [read_reply(sock) for _ in messages] == [(OK, m) for m in messages]


def test_a_request_past_the_timeout_gets_status_2_and_the_next_one_is_served(daemon_factory):
    daemon, address = framed_daemon(daemon_factory, "--timeout", "0.5")
    with socket.create_connection(address, timeout=15) as sock:
        send_all(sock, [b"sleep:5", b"after"])
        status, text = read_reply(sock)
        assert status == TIMEOUT and b"RequestTimeout" in text
        assert read_reply(sock) == (OK, b"after")


def test_bad_input_on_the_framed_port_closes_only_that_connection(daemon_factory):
    daemon, address = framed_daemon(daemon_factory, "--max-length", "1000")
    with socket.create_connection(address, timeout=15) as sock:
        sock.sendall(struct.pack("!I", 1001) + b"x" * 10)
        assert sock.recv(100) == b""  # closed, nothing answered
    for garbage in [b"\xff\xff\xff\xff", b"\x00\x00", b"\x00\x00\x00\x05ab", b"\x00" * 3]:
        with socket.create_connection(address, timeout=15) as sock:
            sock.sendall(garbage)
    with socket.create_connection(address, timeout=15) as sock:
        send_all(sock, [b"still here", b""])
        assert read_reply(sock) == (OK, b"still here")
        assert read_reply(sock) == (OK, b"")
    assert b"over the 1000-byte limit" in daemon.log()
    assert daemon.process.poll() is None


@pytest_twisted.ensureDeferred
async def test_client_pipelines_over_its_pool_and_maps_statuses():
    producer = Producer(
        "framed_handlers:mixed",
        None,
        2,
        max_pending=3,
        pythonpath=[str(TESTS)],
        framed_endpoint="tcp:0:interface=127.0.0.1",
    )
    producer.privilegedStartService()
    producer.startService()
    client = None
    try:
        await producer.whenReady().addTimeout(15, reactor)
        port = producer.framedPort.getHost().port
        client = GasparClient(reactor, f"tcp:127.0.0.1:{port}", timeout=15, framed=True)
        for batch in range(5):
            messages = [b"m-%d-%d" % (batch, i) for i in range(3)]
            assert await gatherResults([client.request(m) for m in messages]) == messages
        assert len(client._pool.connections) <= 4
        with pytest.raises(RemoteError) as caught:
            await client.request(b"fail-please")
        assert caught.value.type == "ValueError"
        # max_pending=3: a fourth request in flight is refused (status 3) at once.
        slow = [client.request(b"sleep:0.5") for _ in range(3)]
        with pytest.raises(Overloaded):
            await client.request(b"one too many")
        assert await gatherResults(slow) == [b"sleep:0.5"] * 3
        # A request that times out on the client keeps its place in the reply order: the
        # next one on the same connection gets its own reply, not the late one.
        impatient = GasparClient(
            reactor, f"tcp:127.0.0.1:{port}", timeout=1.0, framed=True, connections=1
        )
        try:
            with pytest.raises(RequestTimeout, match="client timeout"):
                await impatient.request(b"sleep:1.5")
            assert await impatient.request(b"after the late one") == b"after the late one"
        finally:
            await impatient.close()
    finally:
        if client is not None:
            await client.close()
        pids = producer.workerPids()
        await producer.stopService()
        assert not any(pid_alive(pid) for pid in pids)


@given(
    st.lists(st.binary(max_size=300), max_size=20),
    st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=50),
)
def test_frame_splitter_finds_every_frame_however_the_stream_is_cut(bodies, cuts):
    stream = b"".join(struct.pack("!I", len(b)) + b for b in bodies)
    splitter = FrameSplitter()
    found, offset, i = [], 0, 0
    while offset < len(stream):
        chunk = stream[offset : offset + cuts[i % len(cuts)]]
        offset += len(chunk)
        i += 1
        found += [buffer[start:end] for buffer, start, end in splitter.feed(chunk)]
    assert found == bodies


@given(
    st.lists(st.binary(max_size=30), max_size=30),
    st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=20),
    st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=20),
)
def test_frame_splitter_with_room_holds_the_rest_back_for_later_calls(bodies, cuts, rooms):
    # The framed protocol's use: at most `room` frames per call (its in-flight cap); the
    # bytes after them wait, unparsed, until it asks again with feed(b"", room).
    stream = b"".join(struct.pack("!I", len(b)) + b for b in bodies)
    rooms = [*rooms, 1]  # room comes back, sooner or later
    splitter = FrameSplitter()
    found, offset, i = [], 0, 0
    while offset < len(stream) or splitter.midFrame:
        room = rooms[i % len(rooms)]
        chunk = stream[offset : offset + cuts[i % len(cuts)]]
        offset += len(chunk)
        i += 1
        frames = splitter.feed(chunk, room)
        assert len(frames) <= room
        found += [buffer[start:end] for buffer, start, end in frames]
        assert i < 100 * (len(stream) + 10), "no progress"
    assert found == bodies


def test_frame_splitter_refuses_a_frame_over_its_limit():
    with pytest.raises(FrameTooLong):
        FrameSplitter(limit=10).feed(struct.pack("!I", 11))


def test_frame_splitter_with_most_ignores_what_follows_its_frames():
    # The gaspar protocol's use: one request per connection, trailing bytes unread.
    splitter = FrameSplitter(limit=10, most=1)
    assert splitter.feed(struct.pack("!I", 2) + b"a") == []
    [(buffer, start, end)] = splitter.feed(b"b" + struct.pack("!I", 11) + b"junk")
    assert buffer[start:end] == b"ab" and not splitter.midFrame


def test_a_half_sent_frame_is_dropped_after_idle_timeout_but_an_idle_connection_stays(
    daemon_factory,
):
    daemon, address = framed_daemon(daemon_factory, "--idle-timeout", "0.5")
    with (
        socket.create_connection(address, timeout=15) as stalled,
        socket.create_connection(address, timeout=15) as resting,
    ):
        send_all(resting, [b"first"])
        assert read_reply(resting) == (OK, b"first")
        stalled.sendall(struct.pack("!I", 100) + b"only part of it")
        try:  # dropped without a reply (an abort: EOF or reset), well within the timeout
            assert stalled.recv(1) == b""
        except ConnectionResetError:
            pass
        daemon.wait_for(rb"dropping 1 connections")
        # The connection that finished its requests and stayed quiet is still served.
        send_all(resting, [b"second"])
        assert read_reply(resting) == (OK, b"second")


def test_drain_answers_in_flight_requests_and_refuses_new_ones_on_open_connections(
    daemon_factory,
):
    import signal

    daemon, address = framed_daemon(daemon_factory, "--drain-timeout", "10")
    with socket.create_connection(address, timeout=15) as sock:
        send_all(sock, [b"sleep:1", b"behind it"])
        daemon.wait_for(rb"sleeping 1")  # the daemon has read the requests: both are accepted
        daemon.process.send_signal(signal.SIGTERM)
        daemon.wait_for(rb"draining")
        send_all(sock, [b"during the drain"])
        assert read_reply(sock) == (OK, b"sleep:1")
        assert read_reply(sock) == (OK, b"behind it")
        status, text = read_reply(sock)
        assert status == REFUSED and b"stopping" in text
    assert daemon.process.wait(15) == 0
