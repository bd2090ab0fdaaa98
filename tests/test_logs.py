"""``twistd gaspar --log-format json``: every log line of a live daemon is one JSON event."""

from __future__ import annotations

import json
import signal

from gaspar_tw.client import request


def test_json_log_lines_parse_and_keep_structured_fields(daemon_factory):
    daemon = daemon_factory("--handler", "handlers:echo_or_fail", "--log-format", "json")
    assert request(daemon.address, b"fine", timeout=10) == b"fine"
    assert request(daemon.address, b"boom", timeout=10) == b""
    daemon.wait_for(rb"handler raised ValueError")
    daemon.stop(signal.SIGTERM)

    lines = daemon.log().decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line, twistd's own included
    assert len(events) > 5 and all(isinstance(e, dict) and "log_time" in e for e in events)

    (listening,) = [e for e in events if e.get("log_format", "").endswith("listening on {address}")]
    assert listening["log_namespace"] == "gaspar_tw.producer" and listening["level"] == "info"
    assert listening["address"] == f"tcp {daemon.address}"
    assert listening["text"] == f"gaspar_tw producer listening on tcp {daemon.address}"

    (raised,) = [e for e in events if e.get("type") == "ValueError"]
    assert raised["level"] == "error" and raised["message"] == "boom requested"
    assert "raise ValueError" in raised["traceback"] and raised["peer"].startswith("127.0.0.1:")
    ready = [e for e in events if e.get("log_format") == "worker {slot} ready (pid {pid})"]
    assert sorted(e["pid"] for e in ready) == sorted(daemon.worker_pids.values())
    assert any(e.get("text") == "gaspar_tw producer stopped" for e in events)


def test_text_is_the_default(daemon):
    # Lines logged while twistd builds the service (the file limit, the handler's import)
    # come before its own "starting up".
    lines = daemon.log().decode().splitlines()
    assert not any(line.startswith("{") for line in lines)
    assert any("starting up" in line for line in lines[:3])
