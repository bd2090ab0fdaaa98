"""deferToProcess on the default pool, calls under the asyncio reactor, pools without a
handler, and calls beside gaspar TCP requests on one producer: real worker processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import call_targets as targets
import pytest
import pytest_twisted
from conftest import TESTS, assert_reaped, child_env
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from gaspar_tw import GasparClient, HandlerError, ProcessPool, Producer, RemoteError
from gaspar_tw.cpus import usable_cpus

WAIT = 30


def run_script(tmp_path, code: str) -> dict:
    """Run C{code} in a fresh interpreter (tests/ importable); it prints one JSON line last."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(code))
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env["PYTHONPATH"]])
    result = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_deferToProcess_under_react_leaves_no_process_behind(tmp_path):
    out = run_script(
        tmp_path,
        """
        import json, math, os, sys
        import gaspar_tw
        from gaspar_tw import deferToProcess, getProcessPool, suggestProcessPoolSize
        imported_a_reactor = "twisted.internet.reactor" in sys.modules
        from twisted.internet import task
        from twisted.internet.defer import ensureDeferred
        import call_targets

        def alive(pid):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            return True

        out = {"imported_a_reactor": imported_a_reactor}

        async def main(reactor):
            out["result"] = await deferToProcess(math.factorial, 25)
            pool = getProcessPool()
            out["pool_reactor_is_global"] = pool.reactor is reactor
            out["started_with"] = pids = pool.workerPids()
            out["ran_in"] = (await deferToProcess(call_targets.with_pid, "v"))[0]
            suggestProcessPoolSize(len(pids) + 1)  # after start: the pool grows
            await pool.whenReady()
            out["grown_to"] = pids = pool.workerPids()
            out["again"] = await deferToProcess(call_targets.echo, 1, k=2)

            def atShutdownsEnd():
                # After every "before shutdown" trigger, the pool's stop among them.
                out["alive_after_shutdown"] = [pid for pid in pids if alive(pid)]
                print(json.dumps(out))

            reactor.addSystemEventTrigger("after", "shutdown", atShutdownsEnd)

        task.react(lambda reactor: ensureDeferred(main(reactor)))
        """,
    )
    assert out["imported_a_reactor"] is False and out["pool_reactor_is_global"] is True
    assert out["result"] == math.factorial(25)
    assert len(out["started_with"]) == usable_cpus()  # one worker per usable CPU
    assert out["ran_in"] in out["started_with"]
    assert len(out["grown_to"]) == usable_cpus() + 1
    assert set(out["started_with"]) < set(out["grown_to"])
    assert out["again"] == [[1], {"k": 2}]
    # The shutdown waited for the pool to stop: its workers were gone before the program ended.
    assert out["alive_after_shutdown"] == []
    assert_reaped(out["grown_to"])


def test_calls_under_the_asyncio_reactor(tmp_path):
    out = run_script(
        tmp_path,
        """
        import asyncio, json, math
        from twisted.internet import asyncioreactor
        asyncioreactor.install(asyncio.new_event_loop())
        from twisted.internet import task
        from twisted.internet.defer import ensureDeferred
        import gaspar_tw, call_targets

        async def main(reactor):
            gaspar_tw.suggestProcessPoolSize(1)  # before first use: the size it starts with
            pool = gaspar_tw.ProcessPool(workers=1)
            pool.startService()
            out = {"reactor": type(reactor).__name__}
            out["call"] = await pool.call(call_targets.echo, [1, 2], k="v")
            out["deferred"] = await gaspar_tw.deferToProcess(math.factorial, 12)
            out["default_workers"] = len(gaspar_tw.getProcessPool().workerPids())
            out["default_on"] = type(gaspar_tw.getProcessPool().reactor).__name__
            out["pids"] = pool.workerPids() + gaspar_tw.getProcessPool().workerPids()
            await pool.stopService()
            print(json.dumps(out))

        task.react(lambda reactor: ensureDeferred(main(reactor)))
        """,
    )
    assert out["reactor"] == out["default_on"] == "AsyncioSelectorReactor"
    assert out["call"] == [[[1, 2]], {"k": "v"}]
    assert out["deferred"] == math.factorial(12)
    assert out["default_workers"] == 1
    assert_reaped(out["pids"])


def test_a_bad_default_pool_size_is_one_line():
    from gaspar_tw import suggestProcessPoolSize

    for bad, words in [(0, "at least 1, not 0"), ("2", "whole number"), (10**6, "at most")]:
        with pytest.raises(ValueError, match=words) as info:
            suggestProcessPoolSize(bad)
        assert str(info.value).startswith("suggestProcessPoolSize: workers must")
        assert "\n" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_a_pool_without_a_handler_runs_calls_and_refuses_bytes():
    pool = ProcessPool(workers=1, pythonpath=[str(TESTS)], timeout=20)
    d = pool.submit(b"x")  # refused in the caller, before the pool even starts
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(ValueError)
    message = str(failures[0].value)
    assert "no handler" in message and "use call()" in message and "\n" not in message
    pool.startService()
    try:
        await pool.whenReady().addTimeout(WAIT, reactor)
        pid, value = await pool.call(targets.with_pid, [3]).addTimeout(WAIT, reactor)
        assert value == [3] and pid in pool.workerPids()
        # A bytes request that reaches a worker some other way: its built-in handler says why.
        with pytest.raises(RemoteError, match="this pool has no handler"):
            await pool.dispatcher.submit(b"x").addTimeout(WAIT, reactor)
        assert pool.workerPids() == [pid]
    finally:
        pids = pool.workerPids()
        await pool.stopService()
    assert_reaped(pids)


def test_a_producer_still_needs_a_handler():
    with pytest.raises(HandlerError, match="for calls only, use ProcessPool") as info:
        Producer(None, None)
    assert "\n" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_calls_and_gaspar_tcp_requests_on_one_producer_at_once():
    producer = Producer(
        "handlers:tagged", "tcp:0:interface=127.0.0.1", 2, pythonpath=[str(TESTS)], timeout=20
    )
    producer.privilegedStartService()
    producer.startService()
    try:
        await producer.whenReady().addTimeout(WAIT, reactor)
        client = GasparClient(reactor, f"tcp:127.0.0.1:{producer.port.getHost().port}", WAIT)
        values = [(n, b"c" * (n * 2_000)) for n in range(60)]  # some past the out-of-band size
        calls = [producer.call(targets.with_pid, value) for value in values]
        requests = [client.request(b"r%d" % n) for n in range(60)]
        results = await gatherResults([*calls, *requests]).addTimeout(WAIT, reactor)
        workers = set(producer.workerPids())
        called, replied = results[: len(calls)], results[len(calls) :]
        assert [value for _, value in called] == values
        assert [reply.partition(b":")[2] for reply in replied] == [b"r%d" % n for n in range(60)]
        # The same worker processes served both.
        assert {pid for pid, _ in called} <= workers
        assert {int(reply.partition(b":")[0]) for reply in replied} <= workers
    finally:
        pids = producer.workerPids()
        await producer.stopService()
    assert_reaped(pids)
