"""Client helpers that need no gaspar server."""

import contextlib
import socket
import threading
import time

import pytest

from gaspar_tw.client import pack, parse_address, request


def test_pack_prefixes_a_big_endian_length():
    assert pack(b"x" * 258) == b"\x00\x00\x01\x02" + b"x" * 258


@pytest.mark.parametrize(
    "address, expected",
    [
        ("127.0.0.1:10123", ("127.0.0.1", 10123)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_address(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["127.0.0.1", ":80", "host:port"])
def test_parse_address_refuses_bad_ones(address):
    with pytest.raises(ValueError, match="host:port"):
        parse_address(address)


@pytest.fixture
def trickling_server():
    """A loopback server that reads a request, then sends a byte every 0.5 s for 5 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.recv(100)
                for _ in range(10):
                    if stop.wait(0.5):
                        return
                    connection.sendall(b"x")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    thread.join(5)


def test_blocking_request_timeout_is_a_deadline_for_the_whole_reply(trickling_server):
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        request(trickling_server, b"hello", timeout=1.5)
    assert time.monotonic() - started < 2.0
