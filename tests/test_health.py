"""/livez and /readyz on the metrics port of a live ``twistd gaspar``: starting, serving,
draining."""

from __future__ import annotations

import signal
import socket
import struct
import urllib.error
import urllib.request

from conftest import READY, wait_until

from gaspar_tw.client import request

METRICS = rb"metrics on http://([\d.]+):(\d+)/metrics"
LISTENING = rb"listening on tcp ([\d.]+):(\d+)"


def get(address: str, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, 503 included."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read().decode()


def test_readyz_follows_start_serving_and_drain_while_livez_stays_up(daemon_factory, tmp_path):
    daemon = daemon_factory(
        "--handler",
        "gated_import:slow",
        "--metrics",
        "tcp:0:interface=127.0.0.1",
        "--drain-timeout",
        "10",
        wait=False,
    )
    host, port = daemon.wait_for(METRICS)[0]
    metrics = f"{host.decode()}:{int(port)}"
    host, port = daemon.wait_for(LISTENING)[0]

    # Listening, but the workers are still importing the handler.
    assert get(metrics, "/livez") == (200, "text/plain; charset=utf-8", "ok\n")
    assert get(metrics, "/readyz") == (
        503,
        "text/plain; charset=utf-8",
        "starting: 0 of 2 workers ready\n",
    )

    (tmp_path / "release-workers").touch()
    daemon.wait_for(READY, 2)
    assert get(metrics, "/readyz") == (200, "text/plain; charset=utf-8", "ready\n")
    assert request(f"{host.decode()}:{int(port)}", b"0", timeout=10) == b"0"

    # A request in flight, then SIGTERM: not ready while it drains, alive all along.
    with socket.create_connection((host.decode(), int(port)), timeout=10) as sock:
        sock.sendall(struct.pack("!I", 3) + b"1.5")
        assert wait_until(lambda: b'"pending": 1' in get(metrics, "/status")[2].encode())
        daemon.process.send_signal(signal.SIGTERM)
        daemon.wait_for(rb"draining 1 pending requests")
        assert get(metrics, "/readyz") == (503, "text/plain; charset=utf-8", "draining\n")
        assert get(metrics, "/livez")[0] == 200
        assert sock.recv(100) == b"1.5"  # answered, not cut
    assert daemon.process.wait(15) == 0
    log = daemon.log()
    assert b"GET /readyz" not in log  # health checks are not logged
    assert b"systemd" not in log  # not under systemd: not a word about it
