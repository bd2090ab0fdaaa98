"""A running ProcessPool for tests: started and ready, then stopped with every worker it had
reaped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from conftest import TESTS, assert_reaped
from twisted.internet import reactor

from gaspar_tw import ProcessPool

WAIT = 30


@asynccontextmanager
async def running_pool(*args, **settings) -> AsyncIterator[ProcessPool]:
    """A started C{ProcessPool(*args, **settings)} (tests/ on its workers' path)."""
    settings.setdefault("pythonpath", [str(TESTS)])
    pool = ProcessPool(*args, **settings)
    pool.startService()
    await pool.whenReady().addTimeout(WAIT, reactor)
    seen = set(pool.workerPids())
    try:
        yield pool
    finally:
        seen.update(pool.workerPids())
        await pool.stopService()
        assert_reaped(seen)
