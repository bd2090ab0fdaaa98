"""The hardware's own ceiling for a CPU-bound handler: plain processes calling it in a loop.

No pool, no IPC, no reactor: N processes started together, each calling the handler as
often as it can for a while. What N workers of any pool can reach on this machine at best,
measured in the same rounds as the pools (bench/run.py, the ``processes`` row).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))


def _loop(handler_name: str, seconds: float, start, results) -> None:
    sys.path.insert(0, BENCH)
    import bench_handlers

    handler = getattr(bench_handlers, handler_name)
    start.wait()
    durations = []
    clock = time.monotonic
    end = clock() + seconds
    while True:
        began = clock()
        if began >= end:
            break
        handler(b"x" * 100)
        durations.append(clock() - began)
    results.put(durations)


def _quantile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def spin(handler_name: str, processes: int, seconds: float) -> dict:
    """Run C{processes} plain processes for C{seconds}: calls/s and call-time percentiles."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results = context.Queue()
    children = [
        context.Process(target=_loop, args=(handler_name, seconds, start, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    time.sleep(0.2)  # let every child import before the clock starts
    start.set()
    durations = [d for _ in children for d in results.get(timeout=seconds + 30)]
    for child in children:
        child.join(10)
    durations.sort()
    return {
        "requests": len(durations),
        "completed": len(durations),
        "errors": 0,
        "seconds": seconds,
        "p50_ms": _quantile(durations, 0.5) * 1e3,
        "p99_ms": _quantile(durations, 0.99) * 1e3,
        "cpu_s": 0.0,
        "lag_p99_ms": 0.0,
        "lag_max_ms": 0.0,
    }
