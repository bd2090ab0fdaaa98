"""Calls against what user code does: held replies, odd exceptions, SIGALRM, max_pending."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import hazard_targets as targets
import pytest
import pytest_twisted
from conftest import ROOT, TESTS, assert_reaped
from pools import running_pool
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater

from gaspar_tw import ProcessPool

WAIT = 15
SPIN = 40_000_000  # about a second of sum() here


@pytest_twisted.async_yield_fixture
async def pool():
    async with running_pool(workers=1, timeout=60) as pool:
        yield pool


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_cancelling_a_finished_call_does_not_run_the_call_behind_it_twice(pool, tmp_path):
    side = tmp_path / "ran"
    await pool.call(targets.pid)
    first = pool.call(targets.pid)  # one batch: [first, long]; first's reply is held
    long = pool.call(targets.mark_then_spin, str(side), SPIN)  # while long runs in C
    first.addErrback(lambda f: f.trap(CancelledError))
    await sleep(0.3)
    first.cancel()  # first finished long ago: nothing should be killed or run again
    await long.addTimeout(WAIT, reactor)
    assert len(side.read_text().split()) == 1, "the call behind it ran twice"


@pytest_twisted.ensureDeferred
async def test_cancelling_a_running_call_behind_a_held_reply_kills_its_worker(pool, tmp_path):
    before = await pool.call(targets.pid)
    pool.call(targets.pid)
    long = pool.call(targets.mark_then_spin, str(tmp_path / "ran"), SPIN * 3)
    long.addErrback(lambda f: f.trap(CancelledError))
    await sleep(0.3)
    long.cancel()
    started = reactor.seconds()
    after = await pool.call(targets.pid).addTimeout(WAIT, reactor)
    assert after != before, "the cancelled running call's worker was not killed"
    assert reactor.seconds() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_an_exception_whose_str_raises_fails_only_its_call(pool):
    before = await pool.call(targets.pid)
    with pytest.raises(targets.StrFails):
        await pool.call(targets.raise_str_fails).addTimeout(WAIT, reactor)
    assert await pool.call(targets.pid) == before


@pytest_twisted.ensureDeferred
async def test_sys_exit_in_a_call_fails_that_call_and_costs_no_worker(pool):
    before = await pool.call(targets.pid)
    with pytest.raises(SystemExit):
        await pool.call(targets.exit_3).addTimeout(WAIT, reactor)
    assert await pool.call(targets.pid) == before


@pytest_twisted.ensureDeferred
async def test_a_call_that_sets_its_own_sigalrm_handler_breaks_no_later_call(pool):
    assert await pool.call(targets.own_alarm) == "done"
    quick = pool.call(abs, -1)
    slow = pool.call(targets.sleep, 0.05)  # runs with quick's reply held
    assert await quick == 1
    assert await slow.addTimeout(WAIT, reactor) == 0.05


@pytest_twisted.ensureDeferred
async def test_a_map_waits_for_room_rather_than_failing_at_max_pending():
    pool = ProcessPool(workers=2, pythonpath=[str(TESTS)], max_pending=4)
    pool.startService()
    try:
        await pool.whenReady().addTimeout(WAIT, reactor)
        assert await pool.map(targets.sleep, [0.01] * 40).addTimeout(WAIT, reactor) == [0.01] * 40
    finally:
        pids = set(pool.workerPids())
        await pool.stopService()
        assert_reaped(pids)


def test_a_function_beside_the_script_runs_whatever_the_current_directory(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "tasks.py").write_text("def double(x):\n    return 2 * x\n")
    (app / "main.py").write_text(
        textwrap.dedent(
            """
            import tasks
            from twisted.internet import task
            import gaspar_tw

            def main(reactor):
                return gaspar_tw.deferToProcess(tasks.double, 21).addCallback(print)

            task.react(main)
            """
        )
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, str(app / "main.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.stdout.strip() == "42", done.stderr[-500:]
