"""pool.call(): functions with arguments run in real worker processes, as Deferreds."""

from __future__ import annotations

import functools
import math
import pickle
import threading
import time

import call_targets as targets
import pytest
import pytest_twisted
from pools import running_pool
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from gaspar_tw import ProcessPool, RemoteError
from gaspar_tw.wire.calls import RemoteTraceback

WAIT = 30


@pytest_twisted.async_yield_fixture
async def pool():
    async with running_pool("gaspar_tw.examples:upper", 2, timeout=20) as pool:
        yield pool


def call(pool, fn, *args, **kwargs):
    return pool.call(fn, *args, **kwargs).addTimeout(WAIT, reactor)


@pytest_twisted.ensureDeferred
async def test_values_round_trip_through_a_worker(pool):
    value = {
        "nested": [(1, 2.5, None), {"set": frozenset({3})}, [b"bytes", bytearray(b"ba")]],
        "big": 7**300,
        "text": "é\u2603",
        "point": targets.Point(3, 0.5, "p"),
    }
    assert await call(pool, targets.identity, value) == value
    args, kwargs = await call(
        pool, targets.echo, 1, "two", three=[3], four=targets.Point(4, 4, "k")
    )
    assert args == (1, "two") and kwargs == {"three": [3], "four": targets.Point(4, 4, "k")}
    assert await call(pool, targets.scale, targets.Point(2, 1.5, "s"), factor=3) == targets.Point(
        6, 4.5, "s"
    )


@pytest_twisted.ensureDeferred
async def test_builtins_and_partials_run_in_a_worker(pool):
    assert await call(pool, math.factorial, 30) == math.factorial(30)
    assert await call(pool, functools.partial(targets.echo, 1, k="v"), 2) == ((1, 2), {"k": "v"})
    assert await call(pool, targets.pid) in pool.workerPids()


@pytest_twisted.ensureDeferred
async def test_an_exception_keeps_its_type_and_the_remote_traceback(pool):
    with pytest.raises(targets.Refused, match="no thanks") as info:
        await call(pool, targets.refuse, "no thanks")
    error = info.value
    assert "in refuse" in error.remote_traceback and "Refused: no thanks" in error.remote_traceback
    assert isinstance(error.__cause__, RemoteTraceback)
    assert error.__cause__.text == error.remote_traceback
    # An exception that does not unpickle in the caller: a RemoteError naming it.
    with pytest.raises(RemoteError) as info:
        await call(pool, targets.raise_unpicklable)
    assert info.value.type == "NeedsTwoArguments" and info.value.message == "1/2"
    assert "raise_unpicklable" in info.value.traceback


@pytest_twisted.ensureDeferred
async def test_what_cannot_be_sent_fails_at_once_and_harms_no_worker(pool):
    pids = pool.workerPids()

    def nested():
        pass

    for fn, words in [
        (lambda: 1, "lambda"),
        (nested, "inside another"),
        (functools.partial(nested, 1), "inside another"),
    ]:
        d = pool.call(fn)
        assert d.called  # failed in the caller, before any reactor turn
        with pytest.raises(ValueError, match=words):
            await d
    d = pool.call(targets.identity, threading.Lock())
    assert d.called
    with pytest.raises(pickle.PicklingError, match=r"call of call_targets\.identity.*lock"):
        await d
    # A result that cannot be pickled fails that call only; the worker lives on.
    with pytest.raises(pickle.PicklingError, match="result of call_targets.unpicklable_result"):
        await call(pool, targets.unpicklable_result)
    assert await call(pool, targets.identity, 5) == 5
    assert pool.workerPids() == pids


def test_a_function_of_main_is_refused_with_a_way_out():
    fn = targets.identity
    main = type(fn)(fn.__code__, fn.__globals__, "in_main")
    main.__module__ = "__main__"
    pool = ProcessPool("gaspar_tw.examples:upper", 1)  # not started: nothing is sent
    d = pool.call(main, 1)
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(ValueError)
    assert "__main__" in str(failures[0].value) and "importable module" in str(failures[0].value)


@pytest_twisted.ensureDeferred
async def test_a_100_mib_argument_comes_back_whole(pool):
    data = bytes(range(256)) * (100 * 1024 * 1024 // 256)
    echoed = await call(pool, targets.identity, data)
    assert echoed == data and echoed is not data
    assert await call(pool, targets.length, data=data) == len(data)


@pytest_twisted.ensureDeferred
async def test_calls_and_bytes_requests_share_a_pool(pool):
    calls = [call(pool, targets.identity, (n, b"x" * n)) for n in range(0, 200_000, 5_000)]
    requests = [pool.submit(b"req%d" % n).addTimeout(WAIT, reactor) for n in range(40)]
    big = pool.submit(b"y" * 100_000).addTimeout(WAIT, reactor)
    results = await gatherResults([*calls, *requests, big])
    assert results[: len(calls)] == [(n, b"x" * n) for n in range(0, 200_000, 5_000)]
    assert results[len(calls) : -1] == [b"REQ%d" % n for n in range(40)]
    assert results[-1] == b"Y" * 100_000


def test_a_pool_with_no_local_workers_and_an_exposed_bind_fails_calls_at_once():
    pool = ProcessPool("gaspar_tw.examples:upper", 0, bind="tcp://0.0.0.0:*")  # not started
    failures = []
    pool.call(targets.identity, 1).addErrback(failures.append)
    assert failures and failures[0].check(ValueError)
    message = str(failures[0].value)
    assert "no local workers" in message and "neither loopback nor CURVE-protected" in message
    assert "\n" not in message


@pytest_twisted.ensureDeferred
async def test_slow_calls_do_not_shrink_the_window_of_handler_requests(pool):
    await gatherResults([pool.submit(b"x") for _ in range(50)])
    window = pool.dispatcher._scheduler.windowSize()
    await gatherResults([call(pool, time.sleep, 0.05) for _ in range(2)])
    assert pool.dispatcher.handler_time < 0.01  # the handler's requests' time, theirs alone
    assert pool.dispatcher._scheduler.call_time >= 0.04
    assert pool.dispatcher._scheduler.windowSize() == window
