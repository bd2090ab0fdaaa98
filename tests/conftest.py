"""Shared fixtures: a real twistd daemon on a free loopback port, and process helpers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: Runs twistd with this interpreter (the twistd script may belong to another Python).
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]
LISTENING = re.compile(rb"listening on tcp ([\d.]+):(\d+)")
READY = re.compile(rb"worker (\d+) ready \(pid (\d+)\)")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_reaped(pids, timeout: float = 10.0) -> None:
    """Every process in C{pids} is gone within C{timeout} seconds."""
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout)
    left = [p for p in pids if pid_alive(p)]
    assert not left, f"processes left behind: {left}"


def child_env() -> dict:
    """The environment for a subprocess: our checkout first on the path (plugin included)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Daemon:
    process: subprocess.Popen
    log_path: Path
    host: str = ""
    port: int = 0
    worker_pids: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def log(self) -> bytes:
        return self.log_path.read_bytes()

    def wait_for(self, pattern: bytes, count: int = 1, timeout: float = 15.0) -> list:
        regex = re.compile(pattern)
        found: list = []

        def seen() -> bool:
            found[:] = regex.findall(self.log())
            return len(found) >= count or self.process.poll() is not None

        wait_until(seen, timeout)
        if len(found) < count:
            raise AssertionError(
                f"{pattern!r} seen {len(found)}/{count} times; daemon log:\n"
                + self.log().decode(errors="replace")
            )
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise


def start_daemon(
    tmp_path: Path, *args: str, workers: int = 2, wait: bool = True, preexec_fn=None
) -> Daemon:
    """Start ``twistd -n gaspar`` on 127.0.0.1 port 0; wait for the port and every worker.

    A later ``--endpoint`` in C{args} wins; C{preexec_fn} runs in the child before twistd.
    """
    log_path = tmp_path / "daemon.log"
    argv = [
        *TWISTD,
        "-n",
        "--pidfile=",
        "gaspar",
        "--endpoint",
        "tcp:0:interface=127.0.0.1",
        "--workers",
        str(workers),
        "--pythonpath",
        str(TESTS),
        *args,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=child_env(),
            preexec_fn=preexec_fn,
        )
    daemon = Daemon(process, log_path)
    if wait:
        host, port = daemon.wait_for(LISTENING)[0]
        daemon.host, daemon.port = host.decode(), int(port)
        for slot, pid in daemon.wait_for(READY, workers):
            daemon.worker_pids[int(slot)] = int(pid)
    return daemon


@pytest.fixture
def daemon_factory(tmp_path):
    """Start daemons with start(*args, workers=N); every one is stopped and its workers reaped."""
    started: list[Daemon] = []

    def start(*args: str, **kwargs) -> Daemon:
        daemon = start_daemon(tmp_path, *args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)
        pids = [int(pid) for _, pid in READY.findall(daemon.log())]
        assert_reaped(pids)


@pytest.fixture
def daemon(daemon_factory):
    """A running ``twistd gaspar`` with the echo handler and 2 workers."""
    return daemon_factory("--handler", "gaspar_tw.examples:echo")


class LogLines:
    """The log lines emitted while it is open (C{with LogLines() as log: ...; log.lines})."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event) -> None:
        from twisted.logger import formatEvent

        self.lines.append(formatEvent(event))

    def __enter__(self):
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc) -> None:
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self)
