"""Start-up failures the plain-socket check cannot foresee: ZeroMQ addresses it cannot try
with a socket of its own, a UNIX socket file left behind, IPv6 --bind, and the one line
twistd prints for a ListenError raised after the check."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from conftest import TESTS, assert_reaped
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gaspar_tw import ListenError, Producer
from gaspar_tw.addresses import try_unix_socket, try_zmq_bind
from gaspar_tw.host.service import WorkerHost
from gaspar_tw.tap import oneLineListenErrors


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (
            "ipc:///nonexistent-gaspar-dir/workers",
            "cannot bind ipc:///nonexistent-gaspar-dir/workers: no such file or directory for ipc"
            ' path "/nonexistent-gaspar-dir/workers"',
        ),
        (
            "tcp://nosuchhost.invalid:5570",
            "cannot bind tcp://nosuchhost.invalid:5570: no such host or interface"
            " nosuchhost.invalid (give an address of this machine, or *)",
        ),
    ],
)
def test_a_zeromq_address_that_cannot_be_bound_is_one_line(address, message):
    with pytest.raises(ListenError) as failed:
        try_zmq_bind(address)
    assert str(failed.value) == message


def test_a_zeromq_address_that_can_be_bound_is_let_go(tmp_path):
    address = f"ipc://{tmp_path}/workers"
    try_zmq_bind(address)
    try_zmq_bind(address)  # let go: bound again


def test_a_unix_socket_file_left_behind_or_in_use_is_one_line(tmp_path):
    left = tmp_path / "left.sock"
    left.write_text("")
    with pytest.raises(ListenError, match=r"left.sock exists \(left by an earlier run\? remove"):
        try_unix_socket(str(left), True)
    live = tmp_path / "live.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(live))
    server.listen(1)
    try:
        with pytest.raises(ListenError, match="address already in use"):
            try_unix_socket(str(live), False)
    finally:
        server.close()


def test_twistd_prints_a_late_listen_error_as_one_line(capsys):
    seen = []
    hook = oneLineListenErrors(lambda *exc: seen.append(exc), "twistd gaspar")
    hook(ListenError, ListenError("cannot listen on tcp:1: nope"), None)
    assert capsys.readouterr().err == "twistd gaspar: cannot listen on tcp:1: nope\n"
    other = ValueError("x")
    hook(ValueError, other, None)
    assert seen == [(ValueError, other, None)]  # anything else: the usual traceback


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
@pytest_twisted.ensureDeferred
async def test_remote_workers_join_over_ipv6():
    # ZeroMQ binds and connects a tcp://[v6]:port address only with its IPv6 option set.
    producer = Producer("handlers:tagged", None, 0, bind="tcp://[::1]:*", pythonpath=[str(TESTS)])
    producer.startService()
    assert producer.remote.boundAddress.startswith("tcp://[::1]:")
    host = WorkerHost("handlers:tagged", producer.remote.boundAddress, 1, pythonpath=[str(TESTS)])
    host.startService()
    try:
        reply = await producer.submit(b"v6").addTimeout(20, reactor)
        assert reply.endswith(b"v6")
        pids = host.pool.pids()
    finally:
        await host.stopService()
        await producer.stopService()
        await deferLater(reactor, 0, lambda: None)
    assert_reaped(pids)
