"""Bytes requests while one slow call at a time runs: how many bytes requests/s, and the
window the scheduler gives bytes requests (run: PYTHONPATH=$PWD:$PWD/tests python ...)."""

import time

import review2_targets as t
from twisted.internet import defer, task

import gaspar_tw


async def burst(pool, seconds, inflight=64):
    done = 0
    end = time.monotonic() + seconds

    async def client():
        nonlocal done
        while time.monotonic() < end:
            await pool.submit(b"x" * 32)
            done += 1

    await defer.gatherResults([defer.ensureDeferred(client()) for _ in range(inflight)])
    return done / seconds


async def main(reactor):
    pool = gaspar_tw.ProcessPool("gaspar_tw.examples:upper", workers=2, reactor=reactor)
    pool.startService()
    await pool.whenReady()
    scheduler = pool.dispatcher._scheduler
    try:
        await burst(pool, 0.5)
        alone = await burst(pool, 2)
        print(f"bytes alone: {alone:.0f} req/s, window {scheduler.windowSize()}")
        stop = []

        async def caller():
            while not stop:
                await pool.call(t.spin, 0.05)

        calls = defer.ensureDeferred(caller())
        await task.deferLater(reactor, 0.3, lambda: None)
        mixed = await burst(pool, 2)
        print(
            f"bytes beside one 50 ms call at a time: {mixed:.0f} req/s, window"
            f" {scheduler.windowSize()}, handler_time {scheduler.handler_time:.4f}"
        )
        stop.append(1)
        await calls
    finally:
        await pool.stopService()


task.react(lambda r: defer.ensureDeferred(main(r)))
