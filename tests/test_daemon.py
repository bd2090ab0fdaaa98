"""End to end: ``twistd gaspar`` in a subprocess, real workers, real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import (
    READY,
    TESTS,
    TWISTD,
    assert_reaped,
    child_env,
    pid_alive,
    wait_until,
)

from gaspar_tw.client import pack, request


def raw_request(address: tuple[str, int], body: bytes) -> bytes:
    """A client written by hand, as a gaspar-era client would: send the frame, read to EOF."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(struct.pack("!I", len(body)) + body)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def test_blocking_client_and_raw_socket_get_200_answers_each(daemon):
    for i in range(200):
        message = b"blocking-%d" % i
        assert request(daemon.address, message, timeout=10) == message
    for i in range(200):
        message = b"raw-%d-" % i + os.urandom(8)
        assert raw_request((daemon.host, daemon.port), message) == message


def test_zero_length_request_is_answered_by_the_handler(daemon_factory):
    daemon = daemon_factory("--handler", "handlers:tagged")
    reply = request(daemon.address, b"", timeout=10)
    pid, _, rest = reply.partition(b":")
    assert int(pid) in daemon.worker_pids.values() and rest == b""


def test_every_worker_serves_under_concurrent_load_and_replies_never_cross(daemon_factory):
    daemon = daemon_factory("--handler", "handlers:tagged", workers=3)
    pids = set(daemon.worker_pids.values())
    assert len(pids) == 3 and all(pid_alive(pid) for pid in pids)

    def one(i: int) -> int:
        message = b"req-%d-%s" % (i, os.urandom(6).hex().encode())
        pid, _, echoed = request(daemon.address, message, timeout=10).partition(b":")
        assert echoed == message
        return int(pid)

    with ThreadPoolExecutor(32) as pool:
        served_by = list(pool.map(one, range(600)))
    assert set(served_by) == pids


def test_sigterm_stops_daemon_and_every_worker(daemon):
    assert request(daemon.address, b"x", timeout=10) == b"x"
    # A completed drain exits 0 (gaspar_tw.ops.shutdown); the log says the workers were stopped.
    assert daemon.stop(signal.SIGTERM) == 0
    assert b"gaspar_tw producer stopped" in daemon.log()
    assert wait_until(lambda: not any(pid_alive(p) for p in daemon.worker_pids.values()), 5)


def test_sigkill_of_producer_leaves_no_worker(daemon):
    daemon.process.kill()
    daemon.process.wait(5)
    assert wait_until(lambda: not any(pid_alive(p) for p in daemon.worker_pids.values()), 5)


def test_handler_that_cannot_be_imported_fails_at_start_in_one_line(tmp_path):
    result = subprocess.run(
        [
            *TWISTD,
            "-n",
            "--pidfile=",
            "gaspar",
            "--handler",
            "no_such_module:fn",
            "--endpoint",
            "tcp:0:interface=127.0.0.1",
        ],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
        env=child_env(),
    )
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "no_such_module" in lines[0] and "--pythonpath" in lines[0]
    assert b"worker" not in result.stdout


def test_handler_that_hangs_at_import_fails_at_start_in_one_line(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "gaspar", "--handler", "hang_at_import:echo"]
        + ["--pythonpath", str(TESTS), "--import-timeout", "1"]
        + ["--endpoint", "tcp:0:interface=127.0.0.1"],
        capture_output=True,
        timeout=15,
        cwd=tmp_path,
        env=child_env(),
    )
    assert result.returncode == 1 and time.monotonic() - started < 5
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "'hang_at_import:echo' took over 1s (does the module loop at import?" in lines[0]
    assert_reaped([int((tmp_path / "hang-at-import.pid").read_text())], 2)
    assert b"listening" not in result.stdout


def test_handler_in_current_directory_is_importable(tmp_path, daemon_factory):
    (tmp_path / "localhandler.py").write_text("def shout(m):\n    return m.upper() + b'!'\n")
    daemon = daemon_factory("--handler", "localhandler:shout")
    assert request(daemon.address, b"hey", timeout=10) == b"HEY!"


def test_twistd_help_lists_the_plugin(tmp_path):
    result = subprocess.run(
        [*TWISTD, "--help"],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
        env=child_env(),
    )
    assert b"gaspar" in result.stdout


def test_library_api_start_serves_and_stops_on_sigint(tmp_path):
    script = tmp_path / "serve.py"
    script.write_text(
        "import gaspar_tw\n"
        "consumer = gaspar_tw.Consumer(handler='gaspar_tw.examples:upper')\n"
        "producer = gaspar_tw.Producer(consumer, 'tcp:0:interface=127.0.0.1', workers=2)\n"
        "producer.start()\n"
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=tmp_path,
        )
    try:
        assert wait_until(lambda: len(READY.findall(log_path.read_bytes())) == 2, 15), (
            log_path.read_text()
        )
        port = int(log_path.read_text().split("listening on tcp 127.0.0.1:")[1].split()[0])
        assert request(f"127.0.0.1:{port}", b"library", timeout=10) == b"LIBRARY"
        pids = [int(pid) for _, pid in READY.findall(log_path.read_bytes())]
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), 5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_pack_matches_the_wire_format():
    assert pack(b"abc") == b"\x00\x00\x00\x03abc"
    assert pack(b"") == b"\x00\x00\x00\x00"


def test_sigterm_while_the_handler_import_is_checked_leaves_no_process(tmp_path):
    # twistd imports the handler in a child first (--import-timeout); a twistd stopped then
    # used to leave that child running, in its own process group, for ever.
    twistd = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "gaspar", "--handler", "hang_at_import:echo"]
        + ["--pythonpath", str(TESTS), "--endpoint", "tcp:0:interface=127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=child_env(),
    )
    pidfile = tmp_path / "hang-at-import.pid"
    try:
        assert wait_until(lambda: pidfile.exists() and pidfile.read_text(), 20)
    finally:
        twistd.terminate()
        twistd.wait(15)
    assert_reaped([int(pidfile.read_text())], 5)
