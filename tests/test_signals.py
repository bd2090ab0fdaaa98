"""The operator's signals under twistd: SIGHUP reloads, SIGTTIN/SIGTTOU resize, SIGUSR2 is
ignored; for ``twistd gaspar`` and for a worker host (``twistd gaspar-worker``)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import urllib.request

from conftest import READY, TESTS, TWISTD, assert_reaped, child_env, pid_alive, wait_until

from gaspar_tw.client import request
from gaspar_tw.ops.cli import format_status

METRICS = rb"metrics on http://([\d.]+):(\d+)/metrics"
BOUND = rb"remote workers connect to (tcp://[\d.]+:\d+)"
REMOTE_READY = rb"remote worker ready \(pid (\d+)"
HOST_STARTED = rb"worker \d+ started \(pid (\d+)\)"


def status_of(daemon) -> dict:
    host, port = daemon.wait_for(METRICS)[0]
    url = f"http://{host.decode()}:{int(port)}/status"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def pid_of(reply: bytes) -> int:
    return int(reply.split(b":", 1)[0])


def test_hup_reloads_ttin_ttou_resize_usr2_is_ignored_and_status_counts_them(daemon_factory):
    daemon = daemon_factory(
        "--handler", "handlers:tagged", "--metrics", "tcp:0:interface=127.0.0.1", workers=2
    )
    first = set(daemon.worker_pids.values())
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(rb"reload done: 2 workers replaced")
    reply = request(daemon.address, b"after", timeout=10)
    assert pid_of(reply) not in first and pid_alive(pid_of(reply))
    assert wait_until(lambda: not any(pid_alive(pid) for pid in first))

    daemon.process.send_signal(signal.SIGTTIN)
    daemon.wait_for(rb"received SIGTTIN: 3 workers now")
    daemon.wait_for(READY, 5)  # 2 at start, 2 from the reload, 1 more
    for n in (2, 1):
        daemon.process.send_signal(signal.SIGTTOU)
        daemon.wait_for(rb"received SIGTTOU: %d workers now" % n)
    daemon.process.send_signal(signal.SIGTTOU)
    daemon.wait_for(rb"received SIGTTOU: keeping the last worker \(1\)")
    daemon.process.send_signal(signal.SIGUSR2)
    daemon.wait_for(rb"received SIGUSR2: it has no meaning here; ignored")
    assert wait_until(lambda: status_of(daemon)["workers_alive"] == 1)

    status = status_of(daemon)
    assert status["workers_configured"] == 1
    assert status["reloads"] == {"ok": 1, "failed": 0}
    assert status["worker_recycles"]["reload"] == 2 and status["worker_recycles"]["resize"] == 2
    assert "worker recycles: reload 2, resize 2; reloads: ok 1" in format_status(status)
    assert request(daemon.address, b"still", timeout=10).endswith(b":still")
    assert daemon.stop() == 0


def test_a_worker_host_reloads_and_grows_on_its_signals(daemon_factory, tmp_path):
    producer = daemon_factory(
        "--handler", "handlers:tagged", "--bind", "tcp://127.0.0.1:*", workers=0
    )
    address = producer.wait_for(BOUND)[0].decode()
    log_path = tmp_path / "host.log"
    argv = [*TWISTD, "-n", "--pidfile=", "gaspar-worker", "--connect", address]
    argv += ["--handler", "handlers:tagged", "--workers", "2", "--pythonpath", str(TESTS)]
    with open(log_path, "wb") as log:
        host = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=child_env()
        )
    failures: list[Exception] = []
    replies: list[bytes] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                replies.append(request(producer.address, b"x", timeout=10))
            except Exception as e:  # noqa: BLE001 - counted, the test fails on any
                failures.append(e)

    try:
        first = {int(pid) for pid in producer.wait_for(REMOTE_READY, 2, timeout=20)}
        client = threading.Thread(target=load)
        client.start()
        host.send_signal(signal.SIGHUP)
        assert wait_until(lambda: b"reload done: 2 workers replaced" in log_path.read_bytes())
        host.send_signal(signal.SIGTTIN)
        producer.wait_for(REMOTE_READY, 5, timeout=20)
        stop.set()
        client.join(15)
        started = {int(p) for p in re.findall(HOST_STARTED, log_path.read_bytes())}
        host.send_signal(signal.SIGTERM)
        assert host.wait(15) in (0, 1, -15)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait(5)
    assert not failures and len(replies) > 10
    assert len(started) == 5 and not any(pid_alive(pid) for pid in first)
    assert b"received SIGTTIN: 3 workers now" in log_path.read_bytes()
    assert_reaped(started)
