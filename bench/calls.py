"""The calls workloads: gaspar_tw's ``pool.call`` and ``pool.map`` against their peers.

    python bench/run.py --only calls            # the three calls workloads alone
    python bench/run.py --only calls --quick    # a short try (ratios too rough to quote)
    python bench/run.py                         # every workload, these included

Every row has 2 workers and runs in a bench/server.py process of its own (the call rows are in
bench/call_rows.py); bench/run.py starts them all, then measures each in turn, round after
round, the order rotated each round, and reports medians and round-by-round ratios:

- ``calls: call()``: ``add(1, 2)``, 64 in flight, through gaspar_tw ``pool.call``;
  ``ProcessPoolExecutor.submit`` bridged to Deferreds with ``callFromThread``; ampoule calling
  a typed AMP command (two Integers in, an Integer out; ``recycleAfter=0``, its best setting);
  ``deferToThread`` (threads, for scale); and gaspar_tw ``submit()`` of 100 bytes, the
  yardstick of call()'s parent CPU.
- ``calls: map()``: ``map(square, range(100_000))`` through gaspar_tw ``pool.map``
  (``chunksize=None``); ``ProcessPoolExecutor.map`` at chunksizes 1, 100, 1,000 and
  len / (4 x workers) (the best of them is the one compared; chunksize 1 takes seconds, so it
  runs once, given up after 20 s, and not with ``--quick``); ``multiprocessing.Pool.map``
  with its default chunksize. A measurement repeats whole maps for its seconds. The peers'
  maps block the reactor while they run (their best case); gaspar_tw's reactor lag is probed
  every 1 ms throughout.
- ``calls: 8 MiB argument``: ``echo(8 MiB of bytes)`` through ``pool.call``, 4 in flight,
  beside ``ProcessPoolExecutor`` and ``submit()`` of the same bytes; then one call with a
  256 MiB argument (``len(data)``) in the ``pool.call`` and ProcessPoolExecutor rows: how much
  the parent grew while it went (its peak RSS, reset first, over its RSS before; and
  tracemalloc's peak). A copy of the argument would add 256 MiB.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable

KIB = 1024
MIB = 1024 * 1024
WORKERS = 2
NOCOPY_BYTES = 256 * MIB
PPE_MAPS = ("ppe-map-1", "ppe-map-100", "ppe-map-1000", "ppe-map-auto")


def workloads() -> list[dict]:
    """The calls workloads, in bench/run.py's form (rows as (row, workers[, handler]))."""
    w = WORKERS
    return [
        {
            "name": "calls: call()",
            "handler": "add",
            "size": 100,
            "unit": "call",
            "reference": f"call w{w}",
            "reference_label": "call() w2",
            "about": f"add(1, 2), 64 calls in flight, {w} workers per row",
            "rows": [("call", w), ("ppe", w), ("ampoule", w), ("thread", w), ("submit", w, "echo")],
            "names": {
                "call": "gaspar_tw pool.call(add, 1, 2)",
                "ppe": "ProcessPoolExecutor.submit(add, 1, 2) + callFromThread",
                "ampoule": "ampoule, typed AMP command Add(a, b: Integer) -> Integer "
                "(recycleAfter=0)",
                "thread": "deferToThread(add, 1, 2) (threads, not processes)",
                "submit": "gaspar_tw submit() of 100 bytes (echo; the parent-CPU yardstick)",
            },
        },
        {
            "name": "calls: map()",
            "handler": "square",
            "size": 0,
            "unit": "item",
            "latency": "per map",
            "reference": f"map w{w}",
            "reference_label": "map() w2",
            "about": f"map(square, range(100_000)), one map at a time, {w} workers per row; "
            "the peers' maps block their reactor (no lag probe); gaspar_tw's lag probe: 1 ms",
            "rows": [("map", w), *((r, w) for r in PPE_MAPS), ("mp-map", w)],
            "once": [f"ppe-map-1 w{w}"],
            "slow": [f"ppe-map-1 w{w}"],
            "names": {
                "map": "gaspar_tw pool.map(square, range(100_000)), chunksize=None",
                "ppe-map-1": "ProcessPoolExecutor.map, chunksize 1 (first round only)",
                "ppe-map-100": "ProcessPoolExecutor.map, chunksize 100",
                "ppe-map-1000": "ProcessPoolExecutor.map, chunksize 1,000",
                "ppe-map-auto": f"ProcessPoolExecutor.map, chunksize {100_000 // (4 * w):,} "
                "(len / (4 x workers))",
                "mp-map": "multiprocessing.Pool.map, default chunksize",
            },
        },
        {
            "name": "calls: 8 MiB argument",
            "handler": "echo",
            "size": 8 * MIB,
            "concurrency": 4,
            "unit": "call",
            "reference": f"call w{w}",
            "reference_label": "call() w2",
            "about": f"echo(8 MiB of bytes), 4 calls in flight, {w} workers per row",
            "rows": [("call", w), ("ppe", w), ("submit", w)],
            "nocopy": {
                "bytes": NOCOPY_BYTES,
                "names": {
                    f"call w{w}": "gaspar_tw pool.call(len, data)",
                    f"ppe w{w}": "ProcessPoolExecutor.submit(len, data) + callFromThread",
                },
            },
            "names": {
                "call": "gaspar_tw pool.call(echo, 8 MiB bytes)",
                "ppe": "ProcessPoolExecutor.submit(echo, 8 MiB bytes) + callFromThread",
                "submit": "gaspar_tw submit() of 8 MiB (echo)",
            },
        },
    ]


def per_round(samples: dict, keys: list[str], combine: Callable[..., float]) -> float | None:
    """Median over rounds of C{combine(*that round's samples of keys)}, over the rounds that
    measured every key."""
    rounds = [{s["round"]: s for s in samples.get(key, [])} for key in keys]
    common = set.intersection(*(set(r) for r in rounds)) if rounds else set()
    values = [combine(*(r[n] for r in rounds)) for n in sorted(common)]
    return statistics.median(values) if values else None


def speedup(samples: dict, a: str, b: str) -> float | None:
    return per_round(samples, [a, b], lambda x, y: x["rps"] / y["rps"] if y["rps"] else 0.0)


def best_ppe(samples: dict, key: str) -> tuple[float | None, str]:
    """C{key}'s rate over the best ProcessPoolExecutor.map's in each round, and which
    chunksizes were the best (how many rounds each)."""
    rows = [f"{r} w{WORKERS}" for r in PPE_MAPS if samples.get(f"{r} w{WORKERS}")]
    mine = {s["round"]: s for s in samples.get(key, [])}
    ratios, winners = [], Counter()
    for number, sample in sorted(mine.items()):
        theirs = [(s["rps"], row) for row in rows for s in samples[row] if s["round"] == number]
        if not theirs:
            continue
        rate, row = max(theirs)
        ratios.append(sample["rps"] / rate)
        size = row.split()[0].removeprefix("ppe-map-")
        winners["len / (4 x workers)" if size == "auto" else f"{int(size):,}"] += 1
    said = ", ".join(f"{size} in {n} of {len(ratios)} rounds" for size, n in winners.most_common())
    return (statistics.median(ratios) if ratios else None), said or "none measured"


def targets(results: list[dict]) -> list[tuple[str, float | None, float, str]]:
    """(target, measured, goal, unit) for each speed target of issue 13 (and, marked
    "(for scale)", figures beside them)."""
    by_name = {r["name"]: r for r in results}
    call = by_name.get("calls: call()", {}).get("samples", {})
    maps = by_name.get("calls: map()", {}).get("samples", {})
    big = by_name.get("calls: 8 MiB argument", {})
    nocopy = big.get("nocopy", {})
    w = WORKERS
    c, m = f"call w{w}", f"map w{w}"
    cpu_ratio = per_round(
        call, [c, f"submit w{w}"], lambda x, y: x["cpu_us"] / y["cpu_us"] if y["cpu_us"] else 0.0
    )
    map_vs_ppe, best = best_ppe(maps, m)
    lags = [s["lag_p99_ms"] for s in maps.get(m, []) if s["lag_p99_ms"] is not None]
    rates = [s["mib_s"] for s in big.get("samples", {}).get(c, [])]

    def grown(row: str, field: str) -> float | None:
        return nocopy.get(f"{row} w{w}", {}).get(field)

    return [
        (
            "call() vs ProcessPoolExecutor.submit + callFromThread",
            speedup(call, c, f"ppe w{w}"),
            8.0,
            "x",
        ),
        ("call() vs ampoule, typed AMP command", speedup(call, c, f"ampoule w{w}"), 8.0, "x"),
        ("call() parent CPU per call / submit()'s per request (at most)", cpu_ratio, 2.0, "x"),
        ("(for scale) call() vs deferToThread", speedup(call, c, f"thread w{w}"), 1.0, "x"),
        (f"map() vs ProcessPoolExecutor.map at its best chunksize ({best})", map_vs_ppe, 1.5, "x"),
        (
            "map() vs multiprocessing.Pool.map, default chunksize",
            speedup(maps, m, f"mp-map w{w}"),
            1.0,
            "x",
        ),
        (
            "reactor lag p99 during map(), 1 ms probe (ms, at most)",
            statistics.median(lags) if lags else None,
            5.0,
            "ms",
        ),
        (
            "8 MiB argument echoed through call() (MiB/s)",
            statistics.median(rates) if rates else None,
            1500.0,
            "MiB/s",
        ),
        (
            "256 MiB argument: call()'s parent peak RSS growth while it goes (MiB, at most)",
            grown("call", "peak_rss_growth_mib"),
            32.0,
            "MiB",
        ),
        (
            "(for scale) 256 MiB argument: call()'s parent tracemalloc peak (MiB)",
            grown("call", "tracemalloc_peak_mib"),
            0.0,
            "MiB",
        ),
        (
            "(for scale) 256 MiB argument: ProcessPoolExecutor's parent peak RSS growth (MiB)",
            grown("ppe", "peak_rss_growth_mib"),
            0.0,
            "MiB",
        ),
    ]
