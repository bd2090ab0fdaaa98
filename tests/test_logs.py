"""``twistd gaspar --log-format json``: every log line is one flat JSON object, of plain fields."""

from __future__ import annotations

import io
import json
import signal
import subprocess
from datetime import datetime, timezone

from conftest import READY, TWISTD, assert_reaped, child_env, wait_until
from twisted.logger import Logger, LogPublisher
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from gaspar_tw.client import request
from gaspar_tw.ops.logs import jsonLinesObserver

OWN_KEYS = ["time", "level", "namespace", "message"]


def _parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def _lines(text: str) -> list[dict]:
    assert text.endswith("\n")
    events = [json.loads(line) for line in text.split("\n")[:-1]]
    for event in events:
        assert list(event)[:4] == OWN_KEYS, event
        assert not [k for k in event if k.startswith("log_") or k == "__class_uuid__"], event
    return events


def test_json_log_lines_are_flat_events(daemon_factory):
    daemon = daemon_factory("--handler", "handlers:echo_or_fail", "--log-format", "json")
    assert request(daemon.address, b"fine", timeout=10) == b"fine"
    assert request(daemon.address, b"boom", timeout=10) == b""
    daemon.wait_for(rb"handler raised ValueError")
    daemon.stop(signal.SIGTERM)

    events = _lines(daemon.log().decode())  # every line, twistd's own included
    assert len(events) > 5
    now = datetime.now(timezone.utc)
    assert all(0 <= (now - _parse_time(e["time"])).total_seconds() < 60 for e in events)
    assert {e["level"] for e in events} <= {"debug", "info", "warn", "error", "critical"}

    (starting,) = [e for e in events if "starting up" in e["message"]]
    assert starting["namespace"].startswith("twisted.scripts")
    assert set(starting) == {*OWN_KEYS, "version", "exe", "pyVersion"}
    (importing,) = [e for e in events if e["message"].startswith("importing handler")]
    assert importing["namespace"] == "gaspar_tw.consumer"
    assert set(importing) == {*OWN_KEYS, "spec", "timeout"}
    assert importing["spec"] == "handlers:echo_or_fail" and isinstance(importing["timeout"], float)
    (listening,) = [e for e in events if "listening on" in e["message"]]
    assert listening == {
        "time": listening["time"],
        "level": "info",
        "namespace": "gaspar_tw.producer",
        "message": f"gaspar_tw producer listening on tcp {daemon.address}",
        "address": f"tcp {daemon.address}",
    }
    ready = [e for e in events if e["message"].startswith("worker ")]
    assert sorted(e["pid"] for e in ready) == sorted(daemon.worker_pids.values())

    # The handler's own error: its fields kept, the one named like a line's key renamed.
    (raised,) = [e for e in events if e.get("type") == "ValueError"]
    assert raised["level"] == "error" and raised["reason"] == "boom requested"
    assert raised["message"].startswith("handler raised ValueError: boom requested (request")
    assert "raise ValueError" in raised["traceback"] and raised["peer"].startswith("127.0.0.1:")
    assert any(e["message"] == "gaspar_tw producer stopped" for e in events)


def test_text_is_the_default(daemon):
    # Lines logged while twistd builds the service (the file limit, the handler's import)
    # come before its own "starting up".
    lines = daemon.log().decode().splitlines()
    assert not any(line.startswith("{") for line in lines)
    assert any("starting up" in line for line in lines[:3])


def test_json_log_file_rotates_on_sigusr1(tmp_path):
    logfile = tmp_path / "json.log"
    argv = [*TWISTD, "-n", "--pidfile=", "--logfile", str(logfile), "gaspar", "--workers", "1"]
    argv += ["--endpoint", "tcp:0:interface=127.0.0.1", "--handler", "gaspar_tw.examples:echo"]
    stdout = tmp_path / "stdout"
    with open(stdout, "wb") as out:
        process = subprocess.Popen(
            [*argv, "--log-format", "json"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env=child_env(),
        )
    pids: list[int] = []
    try:
        assert wait_until(lambda: logfile.exists() and READY.search(logfile.read_bytes()), 15)
        pids = [int(pid) for _, pid in READY.findall(logfile.read_bytes())]
        process.send_signal(signal.SIGUSR1)
        assert wait_until(logfile.with_suffix(".log.1").exists, 10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        assert_reaped(pids)
    assert stdout.read_bytes() == b""  # everything went to the file
    before = _lines(logfile.with_suffix(".log.1").read_text())
    after = _lines(logfile.read_text())
    assert any(e["message"].startswith("worker 0 ready") for e in before)
    assert any(e["message"] == "gaspar_tw producer stopped" for e in after)


def _logged(log_calls) -> list[dict]:
    """The lines that C{log_calls(logger)} writes, each checked to be flat JSON."""
    out = io.StringIO()
    log_calls(Logger(namespace="odd", observer=LogPublisher(jsonLinesObserver(out))))
    return _lines(out.getvalue())


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque\nthing>"


def test_a_failure_gives_its_type_and_traceback_in_one_line():
    def calls(log):
        try:
            raise KeyError("nope")
        except KeyError:
            log.failure("lost request {n}", n=3)
        log.error("{error}", error="a field named error", message="and one named message")

    failed, named = _logged(calls)
    assert failed["level"] == "critical" and failed["error"] == "KeyError" and failed["n"] == 3
    assert failed["message"].startswith("lost request 3\nTraceback (most recent call last):")
    assert 'raise KeyError("nope")' in failed["message"]
    assert named == {
        "time": named["time"],
        "level": "error",
        "namespace": "odd",
        "message": "a field named error",
        "field_error": "a field named error",
        "field_message": "and one named message",
    }


def test_fields_become_plain_json():
    def calls(log):
        log.info(
            "got {data!r} from {who}",
            data=b"\xff\x00",
            text=b"caf\xc3\xa9",
            who=Opaque(),
            nested={"k": [1, (2, b"x"), Opaque()], 3: None},
            ratio=float("nan"),
            big=10**30,
            line="a\u2028b\x85c",
        )

    (event,) = _logged(calls)
    assert event["message"] == "got b'\\xff\\x00' from <Opaque\nthing>"
    assert event["data"] == "b'\\xff\\x00'" and event["text"] == "caf\xe9"
    assert event["who"] == "<Opaque\nthing>" and event["ratio"] == "nan" and event["big"] == 10**30
    assert event["nested"] == {"k": [1, [2, "x"], "<Opaque\nthing>"], "3": None}
    assert event["line"] == "a\u2028b\x85c"


def test_lines_hold_no_raw_line_breaks():
    out = io.StringIO()
    log = Logger(namespace="odd", observer=LogPublisher(jsonLinesObserver(out)))
    log.info("two\nlines\u2028and {more}", more="\r\x85")
    assert out.getvalue().isascii() and out.getvalue().count("\n") == 1
    assert len(out.getvalue().splitlines()) == 1


def test_a_format_that_cannot_be_filled_keeps_the_format_and_says_why():
    def calls(log):
        log.info("worker {slot} ready (pid {pid})", slot=1)
        log.info("{f()} and {obj.missing}", f=lambda: "called", obj=Opaque())
        log.info("no format here", extra=1)

    missing, attribute, fine = _logged(calls)
    assert missing["message"] == "worker {slot} ready (pid {pid}) [unformattable: KeyError: 'pid']"
    assert missing["slot"] == 1
    assert attribute["message"].startswith("{f()} and {obj.missing} [unformattable: AttributeError")
    assert fine["message"] == "no format here" and fine["extra"] == 1


def test_legacy_log_err_is_one_line_with_its_error_type():
    out = io.StringIO()
    legacy = legacy_log.LogPublisher(publishPublisher=LogPublisher(jsonLinesObserver(out)))
    legacy.msg("plain", "words")
    legacy.msg(failure=Failure(ZeroDivisionError("zero")), isError=1, why="dividing")
    plain, failed = _lines(out.getvalue())
    assert plain == {**{k: plain[k] for k in OWN_KEYS[:3]}, "message": "plain words"}
    assert plain["namespace"] == "log_legacy"
    assert failed["level"] == "critical" and failed["error"] == "ZeroDivisionError"
    assert (
        failed["message"].startswith("dividing\n")
        and "ZeroDivisionError: zero" in failed["message"]
    )
    assert set(failed) == {*OWN_KEYS, "error"}
