"""Reloads meeting other events: a kill while a replacement starts, a drain."""

from __future__ import annotations

import sys

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gaspar_tw import ProcessPool, RequestTimeout

STUCK_OR_SLOW = """
import os
import time

if os.path.exists(os.path.join(os.path.dirname(__file__), "slow")):
    time.sleep(1.5)  # a slow import: the replacement takes a while to be ready


def work(message):
    if message == b"stuck":
        time.sleep(30)
    return message
"""


async def failed(d, kind) -> bool:
    try:
        await d.addTimeout(20, reactor)
    except kind:
        return True
    return False


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_replacement_killed_after_its_predecessor_leaves_one_worker_in_the_slot(
    tmp_path, monkeypatch
):
    # A worker killed (--timeout) while its replacement starts, then the replacement killed
    # too: the slot used to get two workers (the replacement was taken for one that never
    # started, and its long-gone predecessor's slot was filled again).
    (tmp_path / "stuckmod.py").write_text(STUCK_OR_SLOW)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "stuckmod", raising=False)
    pool = ProcessPool("stuckmod:work", 1, timeout=1, pythonpath=[str(tmp_path)])
    pool.startService()
    try:
        await pool.whenReady().addTimeout(20, reactor)
        (tmp_path / "slow").write_text("")
        assert pool.reload()
        assert await failed(pool.submit(b"stuck"), RequestTimeout)  # the old one, killed
        assert await pool.whenReloaded().addTimeout(20, reactor) == "ok"
        (tmp_path / "slow").unlink()
        assert await failed(pool.submit(b"stuck"), RequestTimeout)  # the replacement, killed
        local = pool.local
        for _ in range(200):  # its own replacement starts and says hello
            if len(local.processes) == 1 and local.readyCount() == 1:
                break
            await sleep(0.05)
        await sleep(1.5)  # past any respawn delay: nothing more may start
        assert (len(local.processes), local.readyCount()) == (1, 1), local.processes
        assert await pool.submit(b"hello").addTimeout(20, reactor) == b"hello"
    finally:
        await pool.stopService()


@pytest_twisted.ensureDeferred
async def test_no_reload_or_resize_while_draining(tmp_path, monkeypatch):
    (tmp_path / "stuckmod.py").write_text(STUCK_OR_SLOW)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "stuckmod", raising=False)
    pool = ProcessPool("stuckmod:work", 1, timeout=2, pythonpath=[str(tmp_path)])
    pool.startService()
    try:
        await pool.whenReady().addTimeout(20, reactor)
        held = pool.submit(b"stuck")  # keeps the drain going until its timeout
        await sleep(0.2)
        drained = pool.drain()
        assert pool.draining
        assert pool.reload() is False
        assert pool.addWorker() == 1 and pool.removeWorker() == 1
        assert len(pool.local.processes) == 1
        await failed(held, RequestTimeout)
        await drained
    finally:
        await pool.stopService()
