"""Requests waiting for an answer: ids, receivers, which worker holds what, and flow control.

The dispatcher knows nothing about TCP or processes. Callers hand it payloads with
L{Dispatcher.submit} (a Deferred per request) or L{Dispatcher.submitTo} (the outcome goes to
an L{IReplyReceiver}: the protocols' path, no Deferred per request); workers are
L{WorkerLink}s that come and go. Each worker is given at most C{window} requests at a time,
least-loaded first, in one ZeroMQ message per reactor turn. At most C{max_pending} requests
are accepted at once; a dead worker's requests are retried once, each alone on an idle
worker (one is emptied for them if none is), or failed; one periodic sweep enforces
C{timeout} (no timer per request).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from time import monotonic

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gaspar_tw.dispatch.sweep import Sweep
from gaspar_tw.errors import (
    Overloaded,
    RemoteError,
    RequestTimeout,
    ServiceStopped,
    WorkerCrashed,
)
from gaspar_tw.stats import Stats, latency_bucket
from gaspar_tw.wire import messages

log = Logger()

#: Requests whose estimated handler time adds up to less than this go to one worker in one
#: message instead of being split across workers (fewer ZeroMQ messages for fast handlers).
CONCENTRATE_SECONDS = 0.0005
#: Each worker is given about this much estimated handler time at once (at least 2 requests,
#: at most C{window}): slow handlers get small windows, so no request waits behind a busy
#: worker while another is idle.
WINDOW_SECONDS = 0.002
#: Requests a worker may hold until the handler's time is known (a slow handler's requests
#: must not pile up on the first worker while others are idle, nor behind cancelled ones).
INITIAL_WINDOW = 2
#: Default seconds a handler may spend on one request, and a request may wait for a worker.
DEFAULT_TIMEOUT = 30.0
#: At most one "refusing requests" log line per this many seconds under a flood.
REFUSAL_LOG_INTERVAL = 1.0


def default_max_pending(workers: int) -> int:
    """Room for about a thousand concurrent clients, and for two full windows per worker."""
    return max(1024, 64 * workers)


def _noop() -> None:
    pass


def _frozenView(payload) -> bool:
    """True for a view of immutable bytes (what the protocols pass for large bodies)."""
    return type(payload) is memoryview and type(payload.obj) is bytes


class IReplyReceiver(Interface):
    """Where L{Dispatcher.submitTo} delivers the outcome of a request, exactly once.

    The protocols implement it themselves: a TCP request then costs no Deferred (its
    creation, callbacks and firing were ~2.4 µs of the parent's ~50 µs per request).
    """

    def replyReceived(rid: int, reply: bytes) -> None:
        """The handler returned C{reply} for request C{rid}."""

    def requestFailed(rid: int, reason: Exception) -> None:
        """Request C{rid} failed: one of the errors L{Dispatcher.submit} documents."""


@implementer(IReplyReceiver)
class _ReplyDeferred(Deferred):
    """The Deferred L{Dispatcher.submit} returns, as its own receiver."""

    rid = 0

    def replyReceived(self, rid: int, reply: bytes) -> None:
        self.callback(reply)

    def requestFailed(self, rid: int, reason: Exception) -> None:
        self.errback(reason)


@dataclass(eq=False)
class WorkerLink:
    """A ready worker as the dispatcher sees it: where to send, and what it holds.

    C{outstanding} keeps request ids in the order they were sent; a worker answers in that
    order (a request cancelled before it started is answered L{messages.SKIPPED}), so its first
    id is the request the worker is running now. C{send} takes a list of messages (work, or
    a cancel). C{kill} asks the worker's owner to end the process (the dispatcher has
    already given up on it).
    """

    token: int
    pid: int
    send: Callable[[list], None]
    kill: Callable[[], None] = _noop
    #: Called once a retiring worker (L{Dispatcher.retire}) has answered all it held.
    drained: Callable[[], None] = _noop
    outstanding: dict = field(default_factory=dict)
    retiring: bool = False
    #: The request first at the last sweep, and the sweep count stamped when it became so.
    watched: int | None = None
    watchedAt: int = 0


class _Request:
    __slots__ = ("rid", "payload", "receiver", "queued", "queuedAt")

    def __init__(
        self, rid: int, payload: bytes, receiver: IReplyReceiver, queued: float, queuedAt: int
    ) -> None:
        self.rid = rid
        self.payload = payload
        self.receiver = receiver
        self.queued = queued  # monotonic() at submit, for the latency histogram
        self.queuedAt = queuedAt  # the sweep count when it (last) joined a queue


class Dispatcher:
    """Match payloads to workers and replies to Deferreds.

    C{timeout} (seconds, C{None} for none) bounds how long a worker may stay on one request
    (then the request fails with L{RequestTimeout}, the worker is killed through
    L{WorkerLink.kill} and its other requests go back to the queue) and how long a request
    may wait in the queue for a worker. Outcomes are counted in C{stats}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        window: int = 32,
        max_pending: int | None = None,
        retry_on_crash: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        stats: Stats | None = None,
    ) -> None:
        self._reactor = reactor
        self.stats = Stats() if stats is None else stats
        self.window = window
        self.max_pending = max_pending
        self.retry_on_crash = retry_on_crash
        self.timeout = timeout or None
        self._sweep = Sweep(self.timeout, self._checkTimeouts, reactor)
        self._ids = count(1)
        self._requests: dict[int, _Request] = {}
        self._queue: deque[_Request] = deque()
        # Requests held by a worker that died: each is retried alone on an idle worker.
        self._suspects: deque[_Request] = deque()
        self._isolating: set[int] = set()  # tokens of workers running one suspect alone
        # Tokens of workers given no new work until they are idle, for the waiting suspects.
        self._reserved: set[int] = set()
        self._links: dict[int, WorkerLink] = {}
        self._flush_call = None
        self._afterReplies: list[Callable[[], None]] = []
        self._nextRefusalLog = 0.0
        # monotonic() read once per reactor turn: the submit time of every request queued
        # until the next flush (kept only while a flush is scheduled).
        self._turn_time: float | None = None
        self.accepting = True
        #: Replies handed to a connection that could not send them at once (a client reading
        #: slowly or not at all): each counts against C{max_pending} until sent (a framed
        #: connection's) or its connection is closed, so unread replies are bounded as
        #: pending requests are.
        self.writing = 0
        #: Handler seconds per request, a moving average of what workers report (None until
        #: the first report: until then requests are spread, the window is L{INITIAL_WINDOW}).
        self.handler_time: float | None = None

    # -- callers ---------------------------------------------------------------------------

    def submit(self, payload: bytes) -> Deferred:
        """Queue C{payload}; the Deferred fires with the handler's reply bytes.

        It fails with L{RemoteError} if the handler raised, L{WorkerCrashed} if the worker
        died with it, L{RequestTimeout} past C{timeout}, L{Overloaded} if C{max_pending}
        requests are already waiting, and L{ServiceStopped} once the producer stops.
        Cancelling it drops a queued request.
        """
        d = _ReplyDeferred(self._cancelDeferred)
        d.rid = self.submitTo(payload, d)
        return d

    def submitTo(self, payload: bytes, receiver: IReplyReceiver) -> int:
        """Queue C{payload}; its outcome goes to C{receiver}, as for L{submit}.

        Returns the request's id, for L{cancel}; or 0 if the request was refused, in which
        case C{receiver.requestFailed} has already been called.
        """
        if not self.accepting:
            self.stats.requestRefused()
            receiver.requestFailed(0, ServiceStopped("gaspar_tw producer is not running"))
            return 0
        if self.max_pending is not None and len(self._requests) + self.writing >= self.max_pending:
            receiver.requestFailed(0, self._refuse())
            return 0
        rid = next(self._ids)
        queued = self._turn_time or monotonic()
        if type(payload) is not bytes and not _frozenView(payload):
            payload = bytes(payload)  # a mutable buffer could change while it waits
        request = _Request(rid, payload, receiver, queued, self._sweep.count)
        self._requests[rid] = request
        self._queue.append(request)
        if self._flush_call is None and self._links:  # _scheduleFlush, inlined: hot path
            self._flush_call = self._reactor.callLater(0, self._flush)
        self._turn_time = queued if self._flush_call is not None else None
        return rid

    @property
    def pending(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._requests)

    @property
    def queued(self) -> int:
        """Requests waiting for a worker with room."""
        return len(self._queue) + len(self._suspects)

    def stopAccepting(self) -> None:
        self.accepting = False

    def failAll(self, reason: Exception) -> None:
        """Fail every pending request (used when the producer stops for good)."""
        requests, self._requests = self._requests, {}
        self._queue.clear()
        self._suspects.clear()
        for link in self._links.values():
            link.outstanding.clear()
        self.stats.error += len(requests)
        for request in requests.values():
            self._fail(request, reason)

    def _refuse(self) -> Overloaded:
        self.stats.requestRefused()
        now = self._reactor.seconds()
        if now >= self._nextRefusalLog:
            self._nextRefusalLog = now + REFUSAL_LOG_INTERVAL
            log.warn(
                "refusing requests: {pending} already pending (max-pending {limit});"
                " {refused} refused so far",
                pending=len(self._requests) + self.writing,
                limit=self.max_pending,
                refused=self.stats.refused,
            )
        return Overloaded(f"{len(self._requests) + self.writing} requests already pending")

    def cancel(self, rid: int) -> None:
        """Forget request C{rid}: drop it if queued, have its worker skip it if not started.

        Its receiver is not called; the request counts as cancelled. A reply that still
        comes (it was running, or started before the worker heard) is ignored.
        """
        request = self._requests.pop(rid, None)
        if request is None:
            return
        self.stats.requestCancelled()
        for waiting in (self._queue, self._suspects):
            try:
                waiting.remove(request)
            except ValueError:
                continue
            if self._reserved:
                self._scheduleFlush()  # a worker held back for it may take other work
            return
        self._cancelHeld(rid)

    def _cancelHeld(self, rid: int) -> None:
        """Tell the worker holding C{rid} to skip it, unless it is running it (its first)."""
        for link in self._links.values():
            if rid in link.outstanding:
                if next(iter(link.outstanding)) != rid:
                    try:
                        link.send([messages.encode_cancel([rid])])
                    except Exception as e:  # it will run it; the reply is dropped
                        log.warn(
                            "could not tell worker pid {pid} to skip a cancelled request: {e!r}",
                            pid=link.pid,
                            e=e,
                        )
                return

    def _cancelDeferred(self, deferred: _ReplyDeferred) -> None:
        self.cancel(deferred.rid)

    # -- workers ---------------------------------------------------------------------------

    def workerReady(self, link: WorkerLink) -> None:
        self._links[link.token] = link
        if self._queue or self._suspects:
            self._scheduleFlush()

    def retire(self, token: int) -> None:
        """Give the worker C{token} no more work; call its C{drained} once it has answered
        what it holds (at once if nothing). Its requests stay its own until then: a reply
        answers them, and if it dies or stalls they are retried or failed as usual."""
        link = self._links.get(token)
        if link is None or link.retiring:
            return
        link.retiring = True
        if not link.outstanding:
            link.drained()

    def workerLost(self, token: int) -> None:
        """A worker ended: retry each request it held once, alone, or fail them.

        Which of its requests killed the worker is unknown (a reply it sent just before
        dying can be lost with it), so each is retried on an otherwise idle worker; a request
        whose worker dies while running it alone fails with L{WorkerCrashed}.
        """
        link = self._links.get(token)
        if link is None:
            return
        alone = token in self._isolating
        self._forget(link)
        held = self._held(link)
        if not held:
            return
        if alone:
            why = "it was retried alone on another worker, which died too"
            retry, failed = [], held
        elif self.retry_on_crash:
            why, retry, failed = "", held, []
        else:
            why = "retrying is off (--no-retry-on-crash)"
            retry, failed = [], held
        log.warn(
            "worker pid {pid} died holding {n} requests: {retried} retried, {failed} failed",
            pid=link.pid,
            n=len(held),
            retried=len(retry),
            failed=len(failed),
        )
        for request in retry:
            request.queuedAt = self._sweep.count
        self._suspects.extend(retry)
        if retry:
            self._scheduleFlush()
        self.stats.error += len(failed)
        for request in failed:
            del self._requests[request.rid]
            self._fail(
                request,
                WorkerCrashed(f"worker pid {link.pid} died while handling the request; {why}"),
            )

    def handlerTime(self, count: int, seconds: float) -> None:
        """A worker spent C{seconds} in the handler on C{count} requests."""
        if not count:
            return
        if self.handler_time is None:
            self.handler_time = seconds / count
        else:
            self.handler_time += (seconds / count - self.handler_time) * 0.2

    def _window(self) -> int:
        """Requests one worker may hold: C{window}, fewer for slow handlers or unknown ones."""
        handler_time = self.handler_time
        if handler_time is None:
            return min(INITIAL_WINDOW, self.window)
        if not handler_time:
            return self.window
        return max(2, min(self.window, int(WINDOW_SECONDS / handler_time)))

    def repliesReceived(
        self, token: int, ids, statuses: bytes, payloads, busy: float | None = None
    ) -> None:
        """Worker C{token} answered requests C{ids}; C{busy}: its handler seconds on them.

        Requests it skipped (cancelled, status L{messages.SKIPPED}) count neither as served nor
        in the handler time.
        """
        ran = len(ids) - statuses.count(messages.SKIPPED)
        if busy is not None:
            self.handlerTime(ran, busy)
        link = self._links.get(token)
        if link is None:
            self._lateReplies(ids, statuses, payloads)
            return
        outstanding = link.outstanding
        requests = self._requests
        stats = self.stats
        stats.served(token, ran)
        # Latency: one clock read per batch; requests queued in the same reactor turn share
        # their submit time, so their histogram bucket is found once.
        now = monotonic()
        latency_counts = stats.latency_counts
        deliver = self._deliver
        last_queued = None
        for rid, status, payload in zip(ids, statuses, payloads, strict=False):
            outstanding.pop(rid, None)
            request = requests.pop(rid, None)
            if request is None:
                continue  # cancelled, or answered by a retry already
            if request.queued is not last_queued:
                last_queued = request.queued
                seconds = now - last_queued
                bucket = latency_bucket(seconds)
            latency_counts[bucket] += 1
            stats.latency_sum += seconds
            deliver(request, status, payload)
        if self._afterReplies:
            self._repliesDelivered()
        if link.retiring and not outstanding:
            link.drained()
        if self._queue or self._suspects:
            self._flush()

    def repliesMessage(self, token: int, frames: list) -> None:
        """Worker C{token} sent a replies message (L{messages.encode_replies}'s frames)."""
        ids, statuses, payloads = messages.decode_replies(frames)
        self.repliesReceived(token, ids, statuses, payloads, messages.busy_seconds(frames[0]))

    def _lateReplies(self, ids, statuses: bytes, payloads) -> None:
        """Replies from a worker given up on: they answer requests that may be requeued."""
        answered = set()
        for rid, status, payload in zip(ids, statuses, payloads, strict=False):
            request = self._requests.pop(rid, None)
            if request is None:
                continue
            answered.add(rid)
            self._deliver(request, status, payload)
        if self._afterReplies:
            self._repliesDelivered()
        if answered:
            self._queue = deque(r for r in self._queue if r.rid not in answered)
            self._suspects = deque(r for r in self._suspects if r.rid not in answered)

    def _deliver(self, request: _Request, status: int, payload: bytes) -> None:
        """Hand a worker's answer to its request's receiver, and count it."""
        if status == messages.OK:
            self.stats.ok += 1
            try:
                request.receiver.replyReceived(request.rid, payload)
            except Exception:
                log.failure("delivering the reply to request {rid} failed", rid=request.rid)
        else:
            self.stats.error += 1
            self._remoteError(request, payload)

    def _remoteError(self, request: _Request, payload: bytes) -> None:
        info = messages.decode_error(payload)
        self._fail(request, RemoteError(info["type"], info["message"], info["traceback"]))

    def _fail(self, request: _Request, error: Exception) -> None:
        try:
            request.receiver.requestFailed(request.rid, error)
        except Exception:
            log.failure("delivering the failure of request {rid} failed", rid=request.rid)

    def afterReplies(self, call: Callable[[], None]) -> None:
        """Have C{call} run once the batch of replies being delivered now is all delivered.

        For a receiver that writes once per batch, not once per reply; call it from
        L{IReplyReceiver.replyReceived} only.
        """
        self._afterReplies.append(call)

    def _repliesDelivered(self) -> None:
        calls, self._afterReplies = self._afterReplies, []
        for call in calls:
            try:
                call()
            except Exception:
                log.failure("writing a batch of replies failed")

    def _held(self, link: WorkerLink) -> list[_Request]:
        """Take a lost worker's pending requests off it, in the order they were sent."""
        held = [self._requests[rid] for rid in link.outstanding if rid in self._requests]
        link.outstanding.clear()
        return held

    def _requeue(self, requests: list[_Request]) -> None:
        """Put requests back at the head of the queue, their queue wait starting afresh."""
        if not requests:
            return
        for request in requests:
            request.queuedAt = self._sweep.count
        self._queue.extendleft(reversed(requests))
        self._scheduleFlush()

    # -- timeouts --------------------------------------------------------------------------

    def start(self) -> None:
        """Start enforcing C{timeout} (see L{Sweep} for how often it sweeps)."""
        self._sweep.start()

    def stop(self) -> None:
        """Stop the sweep, and a flush still scheduled (nothing runs after a stop)."""
        self._sweep.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._turn_time = None

    def _checkTimeouts(self) -> None:
        """Abandon workers stuck on one request for C{timeout}; expire requests queued as long.

        A worker's first outstanding request is the one it is running. One first seen at this
        sweep became first since the previous one: it is stamped like a request queued then,
        in sweep counts (not reactor times, whose jitter cost a whole extra sweep), so the
        worker is abandoned after it has run the request for C{timeout} and less than one
        sweep interval more.
        """
        sweep = self._sweep
        for link in list(self._links.values()):
            running = next(iter(link.outstanding), None)
            if running is None or running != link.watched:
                link.watched, link.watchedAt = running, sweep.count - 1
            elif sweep.expired(link.watchedAt):
                self._abandon(link, running)
        if self._queue or self._suspects:
            self._expireQueued()

    def _abandon(self, link: WorkerLink, running: int) -> None:
        """Give up on a stuck worker: fail its current request, requeue the rest, kill it."""
        self._forget(link)
        stuck = self._requests.pop(running, None)
        others = self._held(link)
        log.warn(
            "worker pid {pid} ran one request for over {timeout}s (--timeout): killing it,"
            " failing that request and retrying the {n} queued behind it",
            pid=link.pid,
            timeout=self.timeout,
            n=len(others),
        )
        link.kill()
        self._requeue(others)
        if stuck is not None:
            self.stats.requestTimedOut()
            self._fail(
                stuck, RequestTimeout(f"the handler ran for over {self.timeout}s (--timeout)")
            )

    def _expireQueued(self) -> None:
        expired = {r for r in (*self._queue, *self._suspects) if self._sweep.expired(r.queuedAt)}
        if not expired:
            return
        self._queue = deque(r for r in self._queue if r not in expired)
        self._suspects = deque(r for r in self._suspects if r not in expired)
        if self._reserved:
            self._scheduleFlush()
        log.warn(
            "{n} requests waited over {timeout}s for a free worker (--timeout); failing them",
            n=len(expired),
            timeout=self.timeout,
        )
        for request in expired:
            del self._requests[request.rid]
            self.stats.requestTimedOut()
            self._fail(
                request, RequestTimeout(f"no worker was free for {self.timeout}s (--timeout)")
            )

    # -- sending ---------------------------------------------------------------------------

    def _scheduleFlush(self) -> None:
        """Flush on the next reactor turn (once per turn), if any worker can take work."""
        if self._flush_call is None and self._links:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send queued requests to workers with room, least-loaded first, fair shares."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        self._turn_time = None
        if self._suspects or self._isolating or self._reserved:
            self._sendSuspects()
        queue = self._queue
        window = self._window()
        while queue:
            links = [
                link
                for link in self._links.values()
                if len(link.outstanding) < window and not link.retiring
            ]
            if self._isolating or self._reserved:
                setAside = self._isolating | self._reserved
                links = [link for link in links if link.token not in setAside]
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
                    link.send(messages.encode_work(ids, [request.payload for request in batch]))
                except Exception:
                    queue.extendleft(reversed(batch))
                    self._sendFailed(link)
                    continue
                link.outstanding.update(dict.fromkeys(ids))

    def _sendFailed(self, link: WorkerLink) -> None:
        """Sending to C{link} failed (call from the except block): give up on that worker,
        requeue what it held, and have it ended."""
        log.failure("sending to worker pid {pid} failed; replacing it", pid=link.pid)
        self._forget(link)
        self._requeue(self._held(link))
        link.kill()

    def _sendSuspects(self) -> None:
        """Give each retried request, alone, to a worker that holds nothing else.

        While retried requests wait and no worker is idle, the least-loaded workers (one per
        waiting request) are reserved: they get no new work, so each is idle once it has
        answered what it holds, and a retried request waits that long at most under any load.
        """
        links = self._links
        for token in list(self._isolating):
            if not links[token].outstanding:
                self._isolating.discard(token)
        reserved = self._reserved
        idle = [
            link
            for link in links.values()
            if not link.outstanding and not link.retiring and link.token not in self._isolating
        ]
        idle.sort(key=lambda link: link.token in reserved)  # reserved ones are taken first
        while self._suspects and idle:
            link = idle.pop()
            request = self._suspects.popleft()
            try:
                link.send(messages.encode_work([request.rid], [request.payload]))
            except Exception:
                self._suspects.appendleft(request)
                self._sendFailed(link)  # it held nothing: idle
                continue
            link.outstanding[request.rid] = None
            self._isolating.add(link.token)
            reserved.discard(link.token)
        self._reserve()

    def _reserve(self) -> None:
        """Hold back as many workers as retried requests wait: the least loaded ones."""
        reserved = self._reserved
        for token in list(reserved):
            if self._links[token].retiring:
                reserved.discard(token)
        excess = len(reserved) - len(self._suspects)
        if excess > 0:
            held = sorted((self._links[token] for token in reserved), key=_load)
            reserved.difference_update(link.token for link in held[-excess:])
        elif excess < 0:
            free = [
                link
                for link in self._links.values()
                if not link.retiring
                and link.token not in reserved
                and link.token not in self._isolating
            ]
            free.sort(key=_load)
            reserved.update(link.token for link in free[:-excess])

    def _forget(self, link: WorkerLink) -> None:
        """Stop giving work to C{link} (it died, or was given up on)."""
        del self._links[link.token]
        self._isolating.discard(link.token)
        self._reserved.discard(link.token)


def _load(link: WorkerLink) -> int:
    return len(link.outstanding)
