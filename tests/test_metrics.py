"""The metrics port of a live ``twistd gaspar``: Prometheus counters move, /status is right."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import urllib.request

from conftest import pid_alive, wait_until
from prometheus_client.parser import text_string_to_metric_families

from gaspar_tw.client import request
from gaspar_tw.version import version

METRICS = rb"metrics on http://([\d.]+):(\d+)/metrics"


def metrics_address(daemon) -> str:
    host, port = daemon.wait_for(METRICS)[0]
    return f"{host.decode()}:{int(port)}"


def fetch(address: str, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        assert response.status == 200
        return response.read()


def scrape(address: str) -> dict:
    """Every sample on /metrics as {(name, sorted label items): value}."""
    text = fetch(address, "/metrics").decode()
    assert all(line.startswith(("#", "gaspar_tw_")) for line in text.splitlines() if line), (
        "only our own collector is registered"
    )
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def outcome(samples: dict, name: str) -> float:
    return samples[("gaspar_tw_requests_total", (("outcome", name),))]


def test_counters_move_after_requests_errors_and_bad_input(daemon_factory):
    daemon = daemon_factory(
        "--handler",
        "handlers:echo_or_fail",
        "--max-length",
        "64",
        "--metrics",
        "tcp:0:interface=127.0.0.1",
    )
    address = metrics_address(daemon)
    before = scrape(address)
    assert outcome(before, "ok") == 0 and outcome(before, "error") == 0
    assert before[("gaspar_tw_workers_alive", ())] == 2
    assert before[("gaspar_tw_requests_in_flight", ())] == 0

    for i in range(20):
        assert request(daemon.address, b"ping-%d" % i, timeout=10) == b"ping-%d" % i
    assert request(daemon.address, b"boom", timeout=10) == b""  # handler raised: closed, no bytes
    with socket.create_connection((daemon.host, daemon.port), timeout=10) as sock:
        sock.sendall(struct.pack("!I", 65) + b"x" * 65)
        assert sock.recv(10) == b""  # over the limit: closed unread

    after = scrape(address)
    assert outcome(after, "ok") == 20 and outcome(after, "error") == 1
    assert outcome(after, "bad_input") == 1 and outcome(after, "refused") == 0
    assert after[("gaspar_tw_request_latency_seconds_count", ())] == 21
    assert after[("gaspar_tw_request_latency_seconds_bucket", (("le", "+Inf"),))] == 21
    assert 0 < after[("gaspar_tw_request_latency_seconds_sum", ())] < 21 * 10
    served = [v for (name, _), v in after.items() if name == "gaspar_tw_worker_requests_total"]
    assert len(served) == 2 and sum(served) == 21
    assert (
        after[("gaspar_tw_start_time_seconds", ())]
        <= before[("gaspar_tw_start_time_seconds", ())] + 0.001
    )


def test_status_lists_worker_pids_and_follows_a_restart(daemon_factory):
    daemon = daemon_factory(
        "--handler", "gaspar_tw.examples:echo", "--metrics", "tcp:0:interface=127.0.0.1"
    )
    address = metrics_address(daemon)
    assert request(daemon.address, b"hi", timeout=10) == b"hi"
    status = json.loads(fetch(address, "/status"))
    assert status["pid"] == daemon.process.pid and status["version"] == version()
    assert status["address"] == daemon.address and status["handler"] == "gaspar_tw.examples:echo"
    assert {w["slot"]: w["pid"] for w in status["workers"]} == daemon.worker_pids
    assert sum(w["served"] for w in status["workers"]) == 1 and status["requests"]["ok"] == 1
    assert status["uptime"] > 0 and status["pending"] == 0 and status["workers_alive"] == 2

    victim = daemon.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    daemon.wait_for(rb"worker 0 ready \(pid (\d+)\)", count=2)

    def restarted() -> bool:
        status = json.loads(fetch(address, "/status"))
        return status["workers_alive"] == 2 and status["worker_restarts"] == 1

    assert wait_until(restarted, 15)
    status = json.loads(fetch(address, "/status"))
    pids = {w["slot"]: w["pid"] for w in status["workers"]}
    assert pids[1] == daemon.worker_pids[1] and pids[0] != victim and pid_alive(pids[0])
    assert scrape(address)[("gaspar_tw_worker_restarts_total", ())] == 1
    assert re.search(rb"worker 0 \(pid %d\) ended unexpectedly" % victim, daemon.log())
