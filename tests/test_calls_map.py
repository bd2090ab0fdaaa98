"""pool.map(): a function mapped over an iterable in chunks, in real worker processes."""

from __future__ import annotations

import functools
import os
import pickle
import threading

import call_targets as targets
import pytest
import pytest_twisted
from pools import running_pool
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater

from gaspar_tw import ProcessPool, RemoteError
from gaspar_tw.calls.mapping import (
    CHUNK_GROWTH,
    CHUNK_SECONDS,
    CHUNKS_PER_WORKER,
    MAX_CHUNK_ITEMS,
    ChunkSizes,
)

WAIT = 30


@pytest_twisted.async_yield_fixture
async def pool():
    async with running_pool("gaspar_tw.examples:upper", 2, timeout=20) as pool:
        yield pool


def map_(pool, fn, iterable, **kwargs):
    return pool.map(fn, iterable, **kwargs).addTimeout(WAIT, reactor)


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_results_keep_input_order_over_chunks_and_workers(pool):
    results = await map_(pool, targets.item_and_pid, range(200), chunksize=7)
    assert [item for item, _ in results] == list(range(200))
    assert {pid for _, pid in results} == set(pool.workerPids())  # both workers took chunks
    # Automatic chunks: many items a message.
    served = pool.stats.ok
    results = await map_(pool, targets.item_and_pid, range(20_000))
    assert [item for item, _ in results] == list(range(20_000))
    assert 2 < pool.stats.ok - served < 500
    assert await map_(pool, targets.identity, ["a", (1, 2), None], chunksize=2) == [
        "a",
        (1, 2),
        None,
    ]


@pytest_twisted.ensureDeferred
async def test_empty_iterables_and_generators(pool):
    assert await map_(pool, targets.identity, []) == []
    assert await map_(pool, targets.identity, iter(())) == []
    assert await map_(pool, targets.identity, (i * 3 for i in range(500))) == [
        i * 3 for i in range(500)
    ]


@pytest_twisted.ensureDeferred
async def test_an_item_that_raises_fails_the_map_and_cancels_the_rest(pool, tmp_path):
    read = []

    def items():
        for item in range(1000):
            read.append(item)
            yield item

    # Chunks of one: CHUNKS_PER_WORKER a worker are sent at first, two to each worker, the
    # rest wait in the pool's queue; item 2 fails while item 0 runs (items take 50 ms).
    fn = functools.partial(targets.mark_or_refuse, str(tmp_path), 2)
    with pytest.raises(targets.Refused, match="item 2 is bad") as info:
        await map_(pool, fn, items(), chunksize=1)
    error = info.value
    assert error.map_index == 2
    assert any("item 2 of the map of call_targets.mark_or_refuse" in n for n in error.__notes__)
    assert "in mark_or_refuse" in error.remote_traceback
    in_flight = CHUNKS_PER_WORKER * 2
    assert len(read) == in_flight  # read no further than the chunks in flight
    await sleep(0.3)  # what was running has ended; anything wrongly sent would have run
    ran = {int(name) for name in os.listdir(tmp_path)}
    assert 2 in ran and ran <= {0, 1, 2, 3}, ran  # the chunks still queued never ran


@pytest_twisted.ensureDeferred
async def test_failures_are_read_lazily_and_keep_their_index(pool):
    def endless():  # what materialising it would take is far more than a map reads ahead
        for item in range(10_000_000):
            if item > 1_000_000:
                raise AssertionError("map() read its iterable far ahead of its chunks")
            yield item

    with pytest.raises(targets.Refused) as info:
        await map_(pool, functools.partial(targets.refuse_at, 5_000), endless())
    assert info.value.map_index == 5_000
    # An exception that does not unpickle here: a RemoteError, with the index all the same.
    with pytest.raises(RemoteError) as info:
        await map_(pool, functools.partial(targets.raise_unpicklable_at, 7), range(10))
    assert info.value.type == "NeedsTwoArguments" and info.value.map_index == 7


@pytest_twisted.ensureDeferred
async def test_cancelling_the_map_cancels_every_chunk(pool, tmp_path):
    d = pool.map(functools.partial(targets.mark_or_refuse, str(tmp_path), -1), range(100))
    d.cancel()  # before the next reactor turn: every chunk is still queued
    with pytest.raises(CancelledError):
        await d
    await sleep(0.2)
    assert os.listdir(tmp_path) == []
    assert await map_(pool, targets.identity, range(5)) == list(range(5))  # the pool serves on


@pytest_twisted.ensureDeferred
async def test_what_cannot_be_sent_fails_with_its_index(pool):
    pids = pool.workerPids()
    items = [1, 2, threading.Lock(), 4]
    d = pool.map(targets.identity, items, chunksize=10)
    assert d.called  # the first chunk holds it: failed in the caller
    with pytest.raises(pickle.PicklingError, match=r"item 2 of the map .*lock") as info:
        await d
    assert info.value.map_index == 2
    with pytest.raises(pickle.PicklingError) as info:  # automatic chunks: when it is reached
        await map_(pool, targets.identity, items)
    assert info.value.map_index == 2

    def nested(item):
        return item

    for fn in (lambda item: item, nested):
        d = pool.map(fn, [1])
        assert d.called
        with pytest.raises(ValueError, match="define it at the top level"):
            await d
    assert await map_(pool, targets.identity, [1]) == [1]
    assert pool.workerPids() == pids


@pytest.mark.parametrize("chunksize", [0, -3, 2.5, True, "10"])
def test_a_bad_chunksize_is_one_line(chunksize):
    pool = ProcessPool("gaspar_tw.examples:upper", 1)  # not started: nothing is sent
    failures = []
    pool.map(targets.identity, [1], chunksize=chunksize).addErrback(failures.append)
    assert failures and failures[0].check(ValueError)
    message = str(failures[0].value)
    assert "\n" not in message
    assert "chunksize must be a positive whole number" in message and repr(chunksize) in message


def test_automatic_chunks_start_at_one_item_and_grow_from_measured_times():
    sizes = ChunkSizes(None)
    assert sizes.next() == 1 and not sizes.known
    sizes.timed(1, 2e-6)  # the first item took 2 µs: a chunk may grow, by CHUNK_GROWTH at most
    assert sizes.known and sizes.next() == min(CHUNK_GROWTH, int(CHUNK_SECONDS / 2e-6))
    for _ in range(5):  # fast items: chunks as large as allowed
        count = sizes.next()
        sizes.timed(count, count * 1e-8)
    assert sizes.next() == MAX_CHUNK_ITEMS
    for _ in range(5):  # items that became slow: chunks of CHUNK_SECONDS
        count = sizes.next()
        sizes.timed(count, count * CHUNK_SECONDS / 10)
    assert 5 <= sizes.next() <= 20  # about 10
    slow = ChunkSizes(None)
    slow.timed(1, 0.5)
    assert slow.next() == 1
    assert ChunkSizes(7).next() == 7 and ChunkSizes(7).known
