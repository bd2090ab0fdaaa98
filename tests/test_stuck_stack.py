"""A worker killed after --timeout leaves its Python stack in the producer's log first."""

from __future__ import annotations

import textwrap

import pytest
import pytest_twisted
from conftest import assert_reaped
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from gaspar_tw import ProcessPool, RequestTimeout

HANDLER = textwrap.dedent(
    """
    import time

    def handle(message):
        if message == b"stick":
            return stuck_in_a_recognisable_frame()
        return message

    def stuck_in_a_recognisable_frame():
        time.sleep(60)
    """
)


@pytest_twisted.ensureDeferred
async def test_a_timed_out_worker_logs_its_stack_then_is_replaced(tmp_path, monkeypatch):
    (tmp_path / "stuck_handler.py").write_text(HANDLER)
    monkeypatch.syspath_prepend(str(tmp_path))  # the pool checks the handler here too
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    pool = ProcessPool("stuck_handler:handle", 1, pythonpath=[str(tmp_path)], timeout=1)
    pool.startService()
    try:
        await pool.whenReady().addTimeout(15, reactor)
        (stuck_pid,) = pool.workerPids()
        with pytest.raises(RequestTimeout, match=r"ran for over 1.0s \(--timeout\)"):
            await pool.submit(b"stick").addTimeout(10, reactor)
        # The next request waits for the replacement, which answers it.
        assert await pool.submit(b"next").addTimeout(15, reactor) == b"next"
        for _ in range(100):  # the stuck one is SIGKILLed once its stack is in
            if stuck_pid not in pool.workerPids():
                break
            await deferLater(reactor, 0.05)
        (new_pid,) = pool.workerPids()
    finally:
        await pool.stopService()
        globalLogPublisher.removeObserver(events.append)
    assert new_pid != stuck_pid
    assert_reaped([stuck_pid, new_pid])

    lines = [formatEvent(event) for event in events]
    (dump,) = [line for line in lines if "given up on while" in line]
    header, _, stack = dump.partition("\n")
    assert header.startswith(f"worker 0 (pid {stuck_pid}) given up on while on request ")
    assert header.endswith(": its stack before SIGKILL:")
    assert "most recent call first" in stack
    assert "in stuck_in_a_recognisable_frame" in stack and "in handle" in stack
    # One event: none of its lines was logged on its own as well.
    assert not [line for line in lines if "most recent call first" in line and line != dump]
    killed = f"worker 0 (pid {stuck_pid}) killed; its replacement started when it was given up on"
    assert lines.index(dump) < lines.index(killed)
