"""deferToProcess: a call on the global reactor's default pool, made and started at first use.

As C{twisted.internet.threads.deferToThread} has the reactor's thread pool, so
L{deferToProcess} has a L{ProcessPool} without a handler, one worker per usable CPU, on the
global reactor. Importing this module touches no reactor: the first L{deferToProcess} (or
L{getProcessPool}) makes the pool, starts it once the reactor runs, and has the reactor's
C{before shutdown} trigger stop it, so shutdown waits until its workers are gone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from gaspar_tw.config import MAX_WORKERS, whole
from gaspar_tw.pool import ProcessPool

#: The default pool's settings where they differ from a L{ProcessPool}'s, as with
#: C{deferToThread}: a call may run as long as it takes (C{d.addTimeout(seconds, reactor)}
#: limits one), and any number of calls may wait for a worker.
SETTINGS: dict[str, Any] = {"timeout": 0, "max_pending": sys.maxsize}

_pool: ProcessPool | None = None
#: Its size, if suggested (L{suggestProcessPoolSize}); C{None}: one worker per usable CPU.
_workers: int | None = None


def deferToProcess(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Deferred:
    """Run C{fn(*args, **kwargs)} in a worker process of the default pool; the Deferred fires
    with what it returns. What C{fn} may be, and how it fails: see L{ProcessPool.call}.

    Call it in the reactor thread. The default pool is made at the first call and starts
    once the reactor runs; calls made before then wait for its workers.
    """
    return getProcessPool().call(fn, *args, **kwargs)


def getProcessPool() -> ProcessPool:
    """The default pool of L{deferToProcess}: on the global reactor, made at the first call
    (installing the default reactor if none is), started once the reactor runs and stopped
    by its C{before shutdown} trigger."""
    global _pool
    if _pool is None:
        from twisted.internet import reactor

        pool = ProcessPool(None, _workers, reactor=reactor, **SETTINGS)
        reactor.callWhenRunning(pool.startService)
        reactor.addSystemEventTrigger("before", "shutdown", pool.stopService)
        _pool = pool
    return _pool


def suggestProcessPoolSize(workers: int) -> None:
    """Give the default pool C{workers} processes: before its first use, the number it
    starts with; after, it grows or shrinks to it (as C{reactor.suggestThreadPoolSize})."""
    global _workers
    try:
        _workers = whole(1, MAX_WORKERS)(workers)
    except ValueError as e:
        raise ValueError(f"suggestProcessPoolSize: workers {e}") from None
    if _pool is not None:
        _pool.reactor.callWhenRunning(_resize, _pool, workers)


def _resize(pool: ProcessPool, workers: int) -> None:
    """Add or retire workers, one at a time, until C{pool} has C{workers} (or cannot change:
    it is stopping)."""
    size = pool.workers
    while size != workers:
        changed = pool.addWorker() if size < workers else pool.removeWorker()
        if changed == size:
            return
        size = changed
