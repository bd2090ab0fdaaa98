"""systemd: sd_notify messages of a live ``twistd gaspar`` on a datagram socket the test binds,
the watchdog's rules, and socket activation with a listening socket the test passes in."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest
from conftest import LISTENING, READY, TESTS, TWISTD, assert_reaped, child_env

from gaspar_tw.client import request
from gaspar_tw.ops.systemd import (
    notify,
    notify_ready,
    notify_reloading,
    watchdog_interval,
)
from gaspar_tw.options import Options

STARTED = re.compile(rb"worker (\d+) started \(pid (\d+)\)")


def receive(sock: socket.socket, timeout: float = 15.0) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram_to_a_path_or_an_abstract_address(tmp_path, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"gaspar-test-{os.getpid()}-{time.monotonic_ns()}"
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify")
            sock.bind(address)
        assert notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": address})
        assert receive(sock, 5) == "READY=1\nSTATUS=serving"
    assert not notify("READY=1", environ={})  # not under systemd: nothing to do
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")})


def test_a_reload_is_reloading_with_the_monotonic_clock_then_ready(tmp_path):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notify_reloading(environ={"NOTIFY_SOCKET": address})
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notify_ready("serving again", environ={"NOTIFY_SOCKET": address})
        reloading, usec, status = receive(sock, 5).split("\n")
        assert (reloading, status) == ("RELOADING=1", "STATUS=reloading")
        assert usec.startswith("MONOTONIC_USEC=")
        assert before <= int(usec.partition("=")[2]) <= after
        assert receive(sock, 5) == "READY=1\nSTATUS=serving again"


def test_the_watchdog_pings_at_half_its_period_only_for_its_own_process():
    assert watchdog_interval({"WATCHDOG_USEC": "500000"}, pid=42) == 0.25
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "42"}, pid=42) == 0.25
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "7"}, pid=42) is None
    assert watchdog_interval({}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, pid=42) is None


def test_socket_activation_without_a_socket_is_one_line():
    options = Options()
    with pytest.raises(SystemExit) as exited:
        options.parseOptions(["--handler", "m:f", "--endpoint", "systemd:domain=INET:index=0"])
    assert exited.value.code == (
        "twistd gaspar: --endpoint must be a Twisted server endpoint such as tcp:10123, not"
        " 'systemd:domain=INET:index=0' (systemd passed no such socket: start it from a"
        " .socket unit, which sets LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES)"
    )


def twistd(tmp_path, *args: str, env: dict | None, command: str = "gaspar", **popen):
    """Start ``twistd -n COMMAND ARGS`` in tmp_path, its output in daemon.log."""
    with open(tmp_path / "daemon.log", "wb") as log:
        return subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", command, "--pythonpath", str(TESTS), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=env,
            **popen,
        )


def stop(process: subprocess.Popen, tmp_path, term: bool = True) -> int:
    """SIGTERM (unless sent already); its exit status; its workers reaped."""
    try:
        if term and process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log = (tmp_path / "daemon.log").read_bytes()
        assert_reaped([int(pid) for _, pid in READY.findall(log) + STARTED.findall(log)])


def test_ready_watchdog_and_stopping_arrive_in_order(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        env = {**child_env(), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "500000"}
        process = twistd(
            tmp_path,
            "--handler",
            "gaspar_tw.examples:echo",
            "--workers",
            "2",
            "--endpoint",
            "tcp:0:interface=127.0.0.1",
            env=env,
        )
        term = True
        try:
            messages = [receive(sock)]
            while "READY=1" not in messages[-1]:
                messages.append(receive(sock))
            log = (tmp_path / "daemon.log").read_bytes()
            assert len(READY.findall(log)) == 2 and LISTENING.search(log), log
            assert messages[-1].startswith("READY=1\nSTATUS=serving on 127.0.0.1:"), messages
            assert messages[-1].endswith("with 2 workers ready")
            assert set(messages[:-1]) <= {"WATCHDOG=1"}  # pinged from the start
            pings = [receive(sock) for _ in range(3)]  # every 0.25 s
            assert pings == ["WATCHDOG=1"] * 3
            process.send_signal(signal.SIGHUP)  # a reload, between RELOADING=1 and READY=1
            said: list[str] = []
            while len(said) < 2:
                message = receive(sock)
                if message != "WATCHDOG=1":
                    said.append(message)
            assert said[0].startswith("RELOADING=1\nMONOTONIC_USEC="), said
            assert said[1] == "READY=1\nSTATUS=serving (reload ok)", said
            process.send_signal(signal.SIGTERM)
            term = False
            rest = [receive(sock)]
            while not rest[-1].startswith("STOPPING=1"):
                rest.append(receive(sock))
            assert set(rest[:-1]) <= {"WATCHDOG=1"}
            assert rest[-1] == "STOPPING=1\nSTATUS=stopping"
        finally:
            assert stop(process, tmp_path, term) == 0
        sock.setblocking(False)
        late = []
        while True:
            try:
                late.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        assert set(late) <= {"WATCHDOG=1"}  # nothing said twice, no READY after STOPPING


def test_socket_activation_serves_on_the_socket_it_is_given(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    host, port = listener.getsockname()
    env = {**child_env(), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "gaspar"}

    def as_systemd_does() -> None:  # in the child, before exec: the socket is fd 3, ours
        os.dup2(listener.fileno(), 3)
        os.environ.update(env)
        os.environ["LISTEN_PID"] = str(os.getpid())

    with listener:
        process = twistd(
            tmp_path,
            "--handler",
            "gaspar_tw.examples:echo",
            "--workers",
            "1",
            "--endpoint",
            "systemd:domain=INET:index=0",
            env=None,
            pass_fds=(3, listener.fileno()),
            preexec_fn=as_systemd_does,
        )
    try:
        assert request(f"{host}:{port}", b"activated", timeout=15) == b"activated"
        log = (tmp_path / "daemon.log").read_bytes()
        assert f"listening on tcp 127.0.0.1:{port}".encode() in log, log
    finally:
        assert stop(process, tmp_path) == 0


def test_a_worker_host_is_ready_once_its_workers_are_started(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        process = twistd(
            tmp_path,
            "--handler",
            "gaspar_tw.examples:echo",
            "--workers",
            "1",
            "--connect",
            "tcp://127.0.0.1:9",  # nobody there: its workers wait to connect
            env={**child_env(), "NOTIFY_SOCKET": path},
            command="gaspar-worker",
        )
        try:
            assert receive(sock) == (
                "READY=1\nSTATUS=1 workers started for the producer at tcp://127.0.0.1:9"
            )
            process.send_signal(signal.SIGTERM)
            assert receive(sock) == "STOPPING=1\nSTATUS=stopping"
        finally:
            stop(process, tmp_path)
