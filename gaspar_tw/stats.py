"""What the producer has done so far: plain counters, cheap to bump and read at scrape time.

Updates are integer increments (and a float sum of latencies) on the reactor thread: no
locks, no timers, no objects of their own per request. Readers (the metrics collector, in a
web thread) read the fields as they are; each read is atomic under the GIL, which is all a
monitoring scrape needs.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass

#: Upper bounds (seconds) of the request latency histogram's buckets; the last is +Inf.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)

#: The outcomes a request ends with, as counted by L{Stats}.
OUTCOMES = ("ok", "error", "timeout", "refused", "bad_input", "cancelled")
#: Why a worker was recycled (replaced on purpose, not after a crash).
RECYCLE_REASONS = ("max_requests", "max_memory", "hard_memory", "reload", "resize")
#: How a reload (SIGHUP) ended: every worker replaced, or the new ones could not start.
RELOAD_OUTCOMES = ("ok", "failed")


def latency_bucket(seconds: float) -> int:
    """The index in L{LATENCY_BUCKETS} of the bucket counting a latency of C{seconds}."""
    return bisect_left(LATENCY_BUCKETS, seconds)


@dataclass(eq=False)
class WorkerStats:
    """One ready worker process: its slot in the pool, pid, and requests it answered."""

    slot: int
    pid: int
    ready_at: float
    served: int = 0


class Stats:
    """Counters by outcome, a latency histogram, and the workers, for one producer."""

    def __init__(self) -> None:
        self.started = time.time()
        self.ok = 0
        self.error = 0
        self.timeout = 0
        self.refused = 0
        self.bad_input = 0
        self.cancelled = 0
        self.worker_restarts = 0
        #: Workers recycled, by reason (L{RECYCLE_REASONS}); reloads, by outcome.
        self.recycles = dict.fromkeys(RECYCLE_REASONS, 0)
        self.reloads = dict.fromkeys(RELOAD_OUTCOMES, 0)
        #: Ready workers by token.
        self.workers: dict[int, WorkerStats] = {}
        #: Answered requests per L{LATENCY_BUCKETS} bucket (not cumulative; the dispatcher
        #: counts them), and the sum of their latencies in seconds.
        self.latency_counts = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0

    # -- request outcomes ------------------------------------------------------------------

    def requestTimedOut(self) -> None:
        """A request got no answer in time."""
        self.timeout += 1

    def requestRefused(self) -> None:
        """A request was turned away (overload, stopping)."""
        self.refused += 1

    def requestCancelled(self) -> None:
        """The client went away (or cancelled) before its request was answered."""
        self.cancelled += 1

    def badInput(self) -> None:
        """A client sent something unusable (over-long length, bad framing, idle too long)."""
        self.bad_input += 1

    # -- workers ---------------------------------------------------------------------------

    def workerReady(self, token: int, slot: int, pid: int) -> None:
        self.workers[token] = WorkerStats(slot, pid, time.time())

    def workerEnded(self, token: int) -> None:
        self.workers.pop(token, None)

    def workerRestarted(self) -> None:
        self.worker_restarts += 1

    def workerRecycled(self, reason: str) -> None:
        """A worker was retired (or killed) to be replaced, for C{reason}."""
        self.recycles[reason] = self.recycles.get(reason, 0) + 1

    def reloadEnded(self, outcome: str) -> None:
        self.reloads[outcome] += 1

    def served(self, token: int, count: int) -> None:
        """C{count} replies came back from the worker C{token} (called once per batch)."""
        worker = self.workers.get(token)
        if worker is not None:
            worker.served += count

    # -- reading ---------------------------------------------------------------------------

    def outcomes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in OUTCOMES}
