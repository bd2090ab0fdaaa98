"""The function-call rows of the calls workloads (bench/calls.py), run in bench/server.py.

Each starter returns a row's system as server.py's own starters do: C{call(payload)} for the
rows driven by C{LoadRun} (gaspar_tw C{pool.call}, C{deferToThread}), or C{measure(seconds)}
for the map rows, which time whole maps of L{MAP_ITEMS} items, one after another for at least
C{seconds} (at least one). C{nocopy(size)} shows whether a large argument is copied in this
process on its way to a worker (its peak RSS and tracemalloc peak while the call is made). A
system with C{unavailable} names why the row cannot run here (e.g. no C{pool.map} yet).
"""

from __future__ import annotations

import gc
import math
import os
import time
import tracemalloc
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from bench_handlers import caller, square
from twisted.internet.defer import Deferred, inlineCallbacks

BENCH = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024

#: Items of each map: C{map(square, range(MAP_ITEMS))}.
MAP_ITEMS = 100_000
#: A map that has not finished after this long is given up (ProcessPoolExecutor.map at
#: chunksize 1 takes seconds, not milliseconds).
MAP_LIMIT_SECONDS = 20.0
#: The reactor-lag probe's interval during the map rows (a map lasts tens of milliseconds).
MAP_LAG_INTERVAL = 0.001


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def right(result: Any) -> bool:
    """Whether a map returned every item's square, in order (spot-checked)."""
    last = MAP_ITEMS - 1
    return len(result) == MAP_ITEMS and result[last] == last * last and result[12_345] == 12_345**2


def map_summary(durations: list[float], errors: int) -> dict:
    """A map row's measurement: items/s over the maps made, and each map's duration."""
    ordered = sorted(durations)
    return {
        "requests": MAP_ITEMS * len(durations),
        "completed": MAP_ITEMS * len(durations),
        "errors": errors,
        "seconds": sum(durations),
        "maps": len(durations),
        "p50_ms": percentile(ordered, 0.5) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
    }


def _status() -> dict[str, int]:
    """This process's VmRSS and VmHWM (peak RSS), in bytes."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line.split(":")[0]] = int(line.split()[1]) * 1024
    return found


@inlineCallbacks
def nocopy(send_len, size: int):
    """Make one call carrying a C{size}-byte C{bytes} argument (C{send_len(data)}, answered
    with its length) and return how much this process grew while it went: the growth of its
    peak RSS over its RSS just before (the peak reset through /proc/self/clear_refs), and
    tracemalloc's peak. A copy of the argument would add C{size} to both."""
    data = b"\x01" * size  # written, so its pages count in the RSS before the call
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status()["VmRSS"]
    tracemalloc.start()
    began = time.perf_counter()
    length = yield send_len(data)
    seconds = time.perf_counter() - began
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _status()["VmHWM"]
    return {
        "argument_mib": size / MIB,
        "peak_rss_growth_mib": (peak - before) / MIB,
        "tracemalloc_peak_mib": traced_peak / MIB,
        "seconds": seconds,
        "ok": length == size,
    }


# -- gaspar_tw ---------------------------------------------------------------------------


@inlineCallbacks
def start_pool(workers: int):
    from gaspar_tw.pool import ProcessPool

    pool = ProcessPool("bench_handlers:echo", workers, pythonpath=[BENCH], max_pending=100_000)
    pool.privilegedStartService()
    pool.startService()
    yield pool.whenReady()
    return pool


@inlineCallbacks
def start_call(handler: str, workers: int):
    """gaspar_tw C{pool.call}: C{add(1, 2)}, or the handler on the payload."""
    pool = yield start_pool(workers)
    return {
        "call": caller(pool.call, handler),
        "nocopy": lambda size: nocopy(lambda data: pool.call(len, data), size),
        "port": None,
        "stop": pool.stopService,
    }


@inlineCallbacks
def start_map(handler: str, workers: int):
    """gaspar_tw C{pool.map(square, range(MAP_ITEMS))}, C{chunksize=None}."""
    pool = yield start_pool(workers)
    if not hasattr(pool, "map"):
        yield pool.stopService()
        return {"unavailable": "this gaspar_tw has no ProcessPool.map()", "stop": lambda: None}
    yield pool.map(square, range(1000))  # every worker has imported bench_handlers

    @inlineCallbacks
    def measure(seconds: float):
        durations: list[float] = []
        errors = 0
        began = time.perf_counter()
        while not durations or time.perf_counter() - began < seconds:
            started = time.perf_counter()
            result = yield pool.map(square, range(MAP_ITEMS), chunksize=None)
            durations.append(time.perf_counter() - started)
            errors += not right(result)
        return map_summary(durations, errors)

    return {
        "measure": measure,
        "lag_interval": MAP_LAG_INTERVAL,
        "port": None,
        "stop": pool.stopService,
    }


# -- the peers ---------------------------------------------------------------------------


def start_thread(handler: str, workers: int) -> Deferred:
    """Twisted's C{deferToThread} (the reactor's thread pool), for scale: no processes."""
    from twisted.internet import threads

    system = {
        "call": caller(threads.deferToThread, handler),
        "port": None,
        "stop": lambda: None,
    }
    return threads.deferToThread(int).addCallback(lambda _: system)  # the pool has started


def blocking_maps(run_map, seconds: float) -> dict:
    """Time C{run_map()} (a blocking map) again and again for C{seconds}, at least once."""
    durations: list[float] = []
    errors = 0
    began = time.perf_counter()
    while not durations or time.perf_counter() - began < seconds:
        started = time.perf_counter()
        try:
            result = run_map()
        except FutureTimeout:
            return {"skipped": f"one map took over {MAP_LIMIT_SECONDS:g} s: given up"}
        durations.append(time.perf_counter() - started)
        errors += not right(result)
    return map_summary(durations, errors)


def ppe_map_starter(chunksize: str):
    """A starter of C{ProcessPoolExecutor.map} at C{chunksize} (a number, or C{"auto"}:
    C{len / (4 x workers)})."""

    def start(handler: str, workers: int) -> Deferred:
        from concurrent.futures import ProcessPoolExecutor

        from twisted.internet.defer import succeed

        size = math.ceil(MAP_ITEMS / (4 * workers)) if chunksize == "auto" else int(chunksize)
        executor = ProcessPoolExecutor(max_workers=workers)
        list(executor.map(square, range(1000), chunksize=100))  # start every process

        def run_map() -> list:
            items = executor.map(
                square, range(MAP_ITEMS), chunksize=size, timeout=MAP_LIMIT_SECONDS
            )
            return list(items)

        return succeed(
            {
                "measure": lambda seconds: blocking_maps(run_map, seconds),
                "blocking": True,
                "chunksize": size,
                "port": None,
                "stop": lambda: executor.shutdown(wait=True, cancel_futures=True),
            }
        )

    return start


def start_mp_map(handler: str, workers: int) -> Deferred:
    """C{multiprocessing.Pool.map} with its default chunksize."""
    import multiprocessing

    from twisted.internet.defer import succeed

    processes = multiprocessing.Pool(workers)
    processes.map(square, range(1000))

    def stop() -> None:
        processes.terminate()
        processes.join()

    return succeed(
        {
            "measure": lambda seconds: blocking_maps(
                lambda: processes.map(square, range(MAP_ITEMS)), seconds
            ),
            "blocking": True,
            "port": None,
            "stop": stop,
        }
    )


STARTERS = {
    "call": start_call,
    "thread": start_thread,
    "map": start_map,
    "ppe-map-1": ppe_map_starter("1"),
    "ppe-map-100": ppe_map_starter("100"),
    "ppe-map-1000": ppe_map_starter("1000"),
    "ppe-map-auto": ppe_map_starter("auto"),
    "mp-map": start_mp_map,
}
