"""Requests waiting for an answer: ids, Deferreds, which worker holds what, and flow control.

The dispatcher knows nothing about TCP or processes. Callers hand it payloads with
L{Dispatcher.submit}; workers are L{WorkerLink}s that come and go. Each worker is given at
most C{window} requests at a time, least-loaded first, in one ZeroMQ message per reactor turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from time import monotonic

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gaspar_tw import wire
from gaspar_tw.errors import Overloaded, RemoteError, ServiceStopped, WorkerCrashed
from gaspar_tw.stats import Stats, latency_bucket

log = Logger()

#: Requests whose estimated handler time adds up to less than this go to one worker in one
#: message instead of being split across workers (fewer ZeroMQ messages for fast handlers).
CONCENTRATE_SECONDS = 0.0005
#: Each worker is given about this much estimated handler time at once (at least 2 requests,
#: at most C{window}): slow handlers get small windows, so no request waits behind a busy
#: worker while another is idle.
WINDOW_SECONDS = 0.002


@dataclass(eq=False)
class WorkerLink:
    """A ready worker as the dispatcher sees it: where to send, and what it holds."""

    token: int
    pid: int
    send: Callable[[list], None]
    outstanding: set = field(default_factory=set)


class _Request:
    __slots__ = ("rid", "payload", "deferred", "attempts", "queued")

    def __init__(self, rid: int, payload: bytes, deferred: Deferred, queued: float) -> None:
        self.rid = rid
        self.payload = payload
        self.deferred = deferred
        self.attempts = 0
        self.queued = queued


class Dispatcher:
    """Match payloads to workers and replies to Deferreds."""

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        window: int = 32,
        max_pending: int | None = None,
        retry_on_crash: bool = True,
        stats: Stats | None = None,
    ) -> None:
        self._reactor = reactor
        self.stats = Stats() if stats is None else stats
        self.window = window
        self.max_pending = max_pending
        self.retry_on_crash = retry_on_crash
        self._ids = count(1)
        self._requests: dict[int, _Request] = {}
        self._queue: deque[_Request] = deque()
        self._links: dict[int, WorkerLink] = {}
        self._flush_call = None
        self._idle_waiters: list[Deferred] = []
        # monotonic() read once per reactor turn: the submit time of every request queued
        # until the next flush (kept only while a flush is scheduled).
        self._turn_time: float | None = None
        self.accepting = True
        #: Handler seconds per request, a moving average of what workers report (None until
        #: the first report: until then requests are spread, the window is C{window}).
        self.handler_time: float | None = None

    # -- callers ---------------------------------------------------------------------------

    def submit(self, payload: bytes) -> Deferred:
        """Queue C{payload}; the Deferred fires with the handler's reply bytes.

        It fails with L{RemoteError} if the handler raised, L{WorkerCrashed} if the worker
        died with it, L{Overloaded} if C{max_pending} requests are already waiting, and
        L{ServiceStopped} once the producer stops. Cancelling it drops a queued request.
        """
        if not self.accepting:
            self.stats.requestRefused()
            return fail(ServiceStopped("gaspar_tw producer is not running"))
        if self.max_pending is not None and len(self._requests) >= self.max_pending:
            self.stats.requestRefused()
            return fail(Overloaded(f"{len(self._requests)} requests already pending"))
        rid = next(self._ids)
        queued = self._turn_time or monotonic()
        request = _Request(rid, bytes(payload), Deferred(self._cancel), queued)
        request.deferred.rid = rid  # type: ignore[attr-defined]
        self._requests[rid] = request
        self._queue.append(request)
        if self._flush_call is None and self._links:
            self._flush_call = self._reactor.callLater(0, self._flush)
        self._turn_time = queued if self._flush_call is not None else None
        return request.deferred

    @property
    def pending(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._requests)

    @property
    def queued(self) -> int:
        """Requests waiting for a worker with room."""
        return len(self._queue)

    def whenIdle(self) -> Deferred:
        """A Deferred that fires once no request is pending."""
        if not self._requests:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        return d

    def stopAccepting(self) -> None:
        self.accepting = False

    def failAll(self, reason: Exception) -> None:
        """Fail every pending request (used when the producer stops for good)."""
        requests, self._requests = self._requests, {}
        self._queue.clear()
        for link in self._links.values():
            link.outstanding.clear()
        self.stats.error += len(requests)
        for request in requests.values():
            request.deferred.errback(reason)
        self._checkIdle()

    def _cancel(self, deferred: Deferred) -> None:
        request = self._requests.pop(deferred.rid, None)  # type: ignore[attr-defined]
        if request is not None:
            try:
                self._queue.remove(request)
            except ValueError:
                pass  # already on a worker: its reply will be dropped
            self._checkIdle()

    # -- workers ---------------------------------------------------------------------------

    def workerReady(self, link: WorkerLink) -> None:
        self._links[link.token] = link
        if self._queue and self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def workerLost(self, token: int) -> None:
        """A worker ended: retry its requests once elsewhere, or fail them."""
        link = self._links.pop(token, None)
        if link is None:
            return
        retry = []
        for rid in link.outstanding:
            request = self._requests.get(rid)
            if request is None:
                continue
            if self.retry_on_crash and request.attempts < 2:
                retry.append(request)
            else:
                del self._requests[rid]
                self.stats.error += 1
                request.deferred.errback(
                    WorkerCrashed(f"worker pid {link.pid} died while handling the request")
                )
        link.outstanding.clear()
        if retry:
            log.warn(
                "worker pid {pid} died holding {n} requests; retrying them",
                pid=link.pid,
                n=len(retry),
            )
            retry.sort(key=lambda r: r.rid)
            self._queue.extendleft(reversed(retry))
            if self._flush_call is None and self._links:
                self._flush_call = self._reactor.callLater(0, self._flush)
        self._checkIdle()

    def handlerTime(self, count: int, seconds: float) -> None:
        """A worker spent C{seconds} in the handler on C{count} requests."""
        if not count:
            return
        if self.handler_time is None:
            self.handler_time = seconds / count
        else:
            self.handler_time += (seconds / count - self.handler_time) * 0.2

    def _window(self) -> int:
        """Requests one worker may hold: C{window}, fewer for slow handlers."""
        if not self.handler_time:
            return self.window
        return max(2, min(self.window, int(WINDOW_SECONDS / self.handler_time)))

    def repliesReceived(self, token: int, ids, statuses: bytes, payloads) -> None:
        link = self._links.get(token)
        outstanding = link.outstanding if link is not None else set()
        requests = self._requests
        stats = self.stats
        stats.served(token, len(ids))
        # Latency: one clock read per batch; requests queued in the same reactor turn share
        # their submit time, so their histogram bucket is found once.
        now = monotonic()
        latency_counts = stats.latency_counts
        last_queued = None
        for rid, status, payload in zip(ids, statuses, payloads, strict=False):
            outstanding.discard(rid)
            request = requests.pop(rid, None)
            if request is None:
                continue  # cancelled, or answered by a retry already
            if request.queued is not last_queued:
                last_queued = request.queued
                seconds = now - last_queued
                bucket = latency_bucket(seconds)
            latency_counts[bucket] += 1
            stats.latency_sum += seconds
            if status == wire.OK:
                stats.ok += 1
                request.deferred.callback(payload)
            else:
                stats.error += 1
                info = wire.decode_error(payload)
                request.deferred.errback(
                    RemoteError(info["type"], info["message"], info["traceback"])
                )
        if self._queue:
            self._flush()
        elif not requests:
            self._checkIdle()

    # -- sending ---------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send queued requests to workers with room, least-loaded first, fair shares."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        self._turn_time = None
        queue = self._queue
        window = self._window()
        while queue:
            links = [link for link in self._links.values() if len(link.outstanding) < window]
            if not links:
                return
            links.sort(key=lambda link: len(link.outstanding))
            handler_time = self.handler_time
            if handler_time is not None and len(queue) * handler_time < CONCENTRATE_SECONDS:
                links = links[:1]
            for index, link in enumerate(links):
                if not queue:
                    return
                share = -(-len(queue) // (len(links) - index))
                n = min(window - len(link.outstanding), share)
                batch = [queue.popleft() for _ in range(n)]
                ids = [request.rid for request in batch]
                try:
                    link.send(wire.encode_work(ids, [request.payload for request in batch]))
                except Exception:
                    log.failure("sending to worker pid {pid} failed", pid=link.pid)
                    queue.extendleft(reversed(batch))
                    self._links.pop(link.token, None)
                    continue
                link.outstanding.update(ids)
                for request in batch:
                    request.attempts += 1

    def _checkIdle(self) -> None:
        if not self._requests and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
