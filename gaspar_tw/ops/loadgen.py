"""A load generator: drive a server with N concurrent requests and time each one.

L{LoadRun} is the engine of ``gaspar-tw bench`` and of the benchmark suite: it keeps
C{concurrency} requests in flight until C{requests} have been sent (or C{max_seconds} have
passed), through any C{send(payload) -> Deferred[bytes]}, such as
L{gaspar_tw.client.GasparClient.request}.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.python.failure import Failure

Send = Callable[[bytes], Deferred]

#: The latency percentiles a L{LoadResult} reports.
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class LoadResult:
    """What a run did: counts by outcome, wall time, and the latency of each good reply."""

    requests: int
    ok: int = 0
    #: Connections closed with no reply bytes: the server failed or refused the request.
    empty: int = 0
    #: Connection failures, resets and per-request timeouts.
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    #: What went wrong with the first request that failed on the network, if one did.
    first_error: str | None = None
    #: Why the run stopped early, with C{stop_if_unreachable}: the first connection failure.
    unreachable: Exception | None = None

    @property
    def sent(self) -> int:
        return self.ok + self.empty + self.errors

    @property
    def throughput(self) -> float:
        """Good replies per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        """The C{p}th percentile latency of good replies, in seconds (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        rank = max(1, -(-len(ordered) * p // 100))
        return ordered[int(min(rank, len(ordered))) - 1]

    def summary(self) -> dict:
        """Plain data for JSON: counts, seconds, requests/s, latencies in milliseconds."""
        ordered = sorted(self.latencies)
        latency_ms = {f"p{p:g}": round(self.percentile(p) * 1000, 3) for p in PERCENTILES}
        if ordered:
            latency_ms["mean"] = round(sum(ordered) / len(ordered) * 1000, 3)
            latency_ms["max"] = round(ordered[-1] * 1000, 3)
        return {
            "requests": self.requests,
            "sent": self.sent,
            "ok": self.ok,
            "empty": self.empty,
            "errors": self.errors,
            "elapsed": round(self.elapsed, 4),
            "throughput": round(self.throughput, 1),
            "latency_ms": latency_ms,
            "first_error": self.first_error,
        }


class LoadRun:
    """Send C{payload} C{requests} times, C{concurrency} at a time; L{start} fires a result.

    C{finished} counts the requests done so far (read it to show progress). No new request
    starts after C{max_seconds}; those in flight still finish. An empty reply counts as
    C{empty}, not ok, unless C{empty_is_failure} is false: it is the gaspar format's only
    failure signal, while over the framed protocol it is a reply like any other.
    With C{stop_if_unreachable}, a failure to connect at all (refused, unknown host, no such
    socket file) before any reply starts no more requests: C{result.unreachable} tells why.
    """

    def __init__(
        self,
        reactor,
        send: Send,
        payload: bytes,
        requests: int,
        concurrency: int,
        max_seconds: float | None = None,
        empty_is_failure: bool = True,
        stop_if_unreachable: bool = False,
    ) -> None:
        if requests < 1 or concurrency < 1:
            raise ValueError("requests and concurrency must be at least 1")
        self.reactor = reactor
        self.send = send
        self.payload = payload
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.empty_is_failure = empty_is_failure
        self.stop_if_unreachable = stop_if_unreachable
        self.result = LoadResult(requests)
        self.started = 0
        self.finished = 0
        self._done: Deferred | None = None
        self._t0 = 0.0

    def start(self) -> Deferred:
        """Begin; the Deferred fires with the L{LoadResult} once every request is done."""
        self._done = Deferred()
        self._t0 = time.perf_counter()
        for _ in range(min(self.concurrency, self.result.requests)):
            self._next()
        return self._done

    def _next(self) -> None:
        self.started += 1
        began = time.perf_counter()
        d = self.send(self.payload)
        d.addCallbacks(self._replied, self._failed, (began,))
        d.addBoth(self._finishedOne)

    def _replied(self, reply: bytes, began: float) -> None:
        if reply or not self.empty_is_failure:
            self.result.ok += 1
            self.result.latencies.append(time.perf_counter() - began)
        else:
            self.result.empty += 1

    def _failed(self, failure: Failure) -> None:
        result = self.result
        result.errors += 1
        if result.first_error is None:
            result.first_error = failure.getErrorMessage() or failure.type.__name__
        if (
            self.stop_if_unreachable
            and result.unreachable is None
            and not (result.ok or result.empty)
            and failure.check(ConnectError, DNSLookupError)
        ):
            result.unreachable = failure.value

    def _finishedOne(self, _) -> None:
        self.finished += 1
        result = self.result
        late = self.max_seconds is not None and time.perf_counter() - self._t0 > self.max_seconds
        if self.started < result.requests and not late and result.unreachable is None:
            self._next()
        elif self.finished == self.started:
            result.elapsed = time.perf_counter() - self._t0
            done, self._done = self._done, None
            if done is not None:
                done.callback(result)
