"""The dispatcher: the one object callers and worker sources use, composing the parts."""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gaspar_tw.config import Config
from gaspar_tw.dispatch.links import WorkerLink
from gaspar_tw.dispatch.receivers import Delivery, IReplyReceiver, ReplyDeferred, fail
from gaspar_tw.dispatch.requests import Request, RequestTable
from gaspar_tw.dispatch.scheduler import Scheduler
from gaspar_tw.dispatch.sweep import Sweep
from gaspar_tw.dispatch.timeouts import Timeouts
from gaspar_tw.stats import Stats
from gaspar_tw.wire.calls import CallFrames
from gaspar_tw.wire.messages import (
    SKIPPED,
    busy_seconds,
    decode_replies,
    encode_mixed_work,
    is_mixed_replies,
)


class Dispatcher:
    """Match payloads to workers and replies to Deferreds.

    Callers hand it payloads with L{submit} (a Deferred per request) or L{submitTo} (the
    outcome goes to an L{IReplyReceiver}: the protocols' path, no Deferred per request);
    workers are L{WorkerLink}s that come and go. Each worker is given at most C{window}
    requests at a time, least-loaded first, in one message per reactor turn. At most
    C{max_pending} requests are accepted at once; a dead worker's requests are retried once,
    each alone on an idle worker, or failed (C{retry_on_crash}).

    C{timeout} (seconds, C{None} for none) bounds how long a worker may stay on one request
    (then the request fails with L{RequestTimeout}, the worker is killed through
    L{WorkerLink.kill} and its other requests go back to the queue) and how long a request
    may wait in the queue for a worker; one periodic sweep enforces it (no timer per
    request). Outcomes are counted in C{stats}. C{max_call_bytes} bounds calls and their
    outcomes (L{gaspar_tw.calls}).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        window: int = Config.window,
        max_pending: int | None = None,
        retry_on_crash: bool = Config.retry_on_crash,
        timeout: float | None = Config.timeout,
        max_call_bytes: int = Config.max_call_bytes,
        stats: Stats | None = None,
    ) -> None:
        self._reactor = reactor
        self.stats = Stats() if stats is None else stats
        self.timeout = timeout or None
        self._sweep = Sweep(self.timeout, self._checkTimeouts, reactor)
        self._table = RequestTable(reactor, self.stats, max_pending)
        self._delivery = Delivery(self._table.requests, self.stats, max_call_bytes)
        self._scheduler = Scheduler(
            self._table.requests,
            self.stats,
            self._sweep,
            self._scheduleFlush,
            reactor,
            window=window,
            retry_on_crash=retry_on_crash,
        )
        self._timeouts = Timeouts(self._scheduler, self._sweep, self.stats)
        # The state the per-request paths use, bound here (the parts share these objects).
        self._ids = self._table.ids
        self._requests = self._table.requests
        self._queue = self._scheduler.queue
        self._localQueue = self._scheduler.localQueue
        self._suspects = self._scheduler.suspects
        self._links = self._scheduler.links
        self._flush_call = None
        # monotonic() read once per reactor turn: the submit time of every request queued
        # until the next flush (kept only while a flush is scheduled).
        self._turn_time: float | None = None

    # -- settings and counts, kept by the parts ---------------------------------------------

    @property
    def window(self) -> int:
        """The most requests one worker is given at once."""
        return self._scheduler.window

    @window.setter
    def window(self, window: int) -> None:
        self._scheduler.window = window

    @property
    def retry_on_crash(self) -> bool:
        """Whether a dead worker's requests are retried (each alone) rather than failed."""
        return self._scheduler.retry_on_crash

    @retry_on_crash.setter
    def retry_on_crash(self, retry: bool) -> None:
        self._scheduler.retry_on_crash = retry

    @property
    def handler_time(self) -> float | None:
        """Handler seconds per request, a moving average of what workers report (C{None}
        until the first report)."""
        return self._scheduler.handler_time

    @handler_time.setter
    def handler_time(self, seconds: float | None) -> None:
        self._scheduler.handler_time = seconds

    @property
    def max_call_bytes(self) -> int:
        """The largest call (L{gaspar_tw.calls}) sent, and call outcome accepted, in bytes
        pickled: a larger one fails its call."""
        return self._delivery.max_call_bytes

    @max_call_bytes.setter
    def max_call_bytes(self, limit: int) -> None:
        self._delivery.max_call_bytes = limit

    @property
    def max_pending(self) -> int | None:
        """The most requests (and unsent replies, L{writing}) held at once."""
        return self._table.max_pending

    @max_pending.setter
    def max_pending(self, limit: int | None) -> None:
        self._table.max_pending = limit

    @property
    def writing(self) -> int:
        """Replies a connection could not send at once; they count against C{max_pending}."""
        return self._table.writing

    @writing.setter
    def writing(self, count: int) -> None:
        self._table.writing = count

    @property
    def accepting(self) -> bool:
        """Whether new requests are accepted (else they fail with L{ServiceStopped})."""
        return self._table.accepting

    @accepting.setter
    def accepting(self, accepting: bool) -> None:
        self._table.accepting = accepting

    @property
    def pending(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._requests)

    @property
    def room(self) -> int:
        """How many more requests would be admitted now (none once it stops accepting)."""
        return self._table.capacity - len(self._requests)

    @property
    def workerCount(self) -> int:
        """Workers ready for work, local and remote."""
        return len(self._scheduler.links)

    @property
    def queued(self) -> int:
        """Requests waiting for a worker with room."""
        return sum(map(len, self._scheduler.queues))

    # -- callers ---------------------------------------------------------------------------

    def submit(self, payload: bytes) -> Deferred:
        """Queue C{payload}; the Deferred fires with the handler's reply bytes.

        It fails with L{RemoteError} if the handler raised, L{WorkerCrashed} if the worker
        died with it, L{RequestTimeout} past C{timeout}, L{Overloaded} if C{max_pending}
        requests are already waiting, and L{ServiceStopped} once the producer stops.
        Cancelling it drops a queued request (see L{cancel}). Calls are submitted with
        L{submitCall}.
        """
        d = ReplyDeferred(self._cancelDeferred)
        d.rid = self.submitTo(payload, d)
        return d

    def carryCalls(self) -> None:
        """Calls (L{gaspar_tw.calls}) may be submitted from now on (see L{Scheduler.carryCalls})."""
        self._scheduler.carryCalls()

    def submitCall(self, call: CallFrames) -> Deferred:
        """Queue a call (L{gaspar_tw.calls}); as L{submit}, but its Deferred fires with the
        call's result. While calls are kept local (L{keepCallsLocal}), only local workers
        are sent it."""
        scheduler = self._scheduler
        if scheduler.encodeWork is not encode_mixed_work:
            scheduler.carryCalls()
        d = self.submit(call)
        if d.rid and scheduler.callsLocalOnly:
            scheduler.queuedCall(d.rid)
        return d

    def keepCallsLocal(self) -> None:
        """From now on, send calls to local workers only (L{WorkerLink.local}); bytes
        requests still go to every worker (see L{Scheduler.keepCallsLocal})."""
        self._scheduler.keepCallsLocal()

    def submitTo(self, payload: bytes, receiver: IReplyReceiver) -> int:
        """Queue C{payload}; its outcome goes to C{receiver}, as for L{submit}.

        Returns the request's id, for L{cancel}; or 0 if the request was refused, in which
        case C{receiver.requestFailed} has already been called.
        """
        requests = self._requests
        if len(requests) >= self._table.capacity:  # the table's admission rule (hot path)
            self._table.refuse(receiver)
            return 0
        rid = next(self._ids)
        queued = self._turn_time or monotonic()
        request = requests[rid] = Request(rid, payload, receiver, queued, self._sweep.count)
        self._queue.append(request)
        if self._flush_call is None and self._links:  # _scheduleFlush, inlined: hot path
            self._flush_call = self._reactor.callLater(0, self._flush)
        self._turn_time = queued if self._flush_call is not None else None
        return rid

    def stopAccepting(self) -> None:
        self._table.accepting = False

    def failAll(self, reason: Exception) -> None:
        """Fail every pending request (used when the producer stops for good)."""
        requests = self._table.takeAll()
        self._scheduler.clear()
        self.stats.error += len(requests)
        for request in requests:
            fail(request, reason)

    def cancel(self, rid: int, killRunning: bool = True) -> None:
        """Forget request C{rid}: drop it if queued, have its worker skip it if not started.

        Its receiver is not called; the request counts as cancelled. A reply that still
        comes (it was running, or started before the worker heard) is ignored. A call
        (L{gaspar_tw.calls}) that is running ends with its worker, which is killed and
        replaced (unless C{killRunning} is false); the requests it held behind the call are
        sent again.
        """
        request = self._table.cancel(rid)
        if request is not None:
            self._scheduler.cancel(request, killRunning)

    def _cancelDeferred(self, deferred: ReplyDeferred) -> None:
        self.cancel(deferred.rid)

    # -- workers ---------------------------------------------------------------------------

    def workerReady(self, link: WorkerLink) -> None:
        self._links[link.token] = link
        if any(self._scheduler.queues):
            self._scheduleFlush()

    def retire(self, token: int) -> None:
        """Give the worker C{token} no more work; call its C{drained} once it has answered
        what it holds (at once if nothing). Its requests stay its own until then: a reply
        answers them, and if it dies or stalls they are retried or failed as usual."""
        self._scheduler.retire(token)

    def workerLost(self, token: int) -> None:
        """A worker ended: retry each request it held once, alone, or fail them with
        L{WorkerCrashed} (see L{Scheduler.workerLost})."""
        self._scheduler.workerLost(token)

    def handlerTime(self, count: int, seconds: float) -> None:
        """A worker spent C{seconds} in the handler on C{count} requests."""
        self._scheduler.handlerTime(count, seconds)

    def repliesMessage(self, token: int, frames: list) -> None:
        """Worker C{token} sent a replies message (its frames): deliver the replies."""
        ids, statuses, payloads = decode_replies(frames)
        head = frames[0]
        calls = is_mixed_replies(head)  # timed apart: slow calls must not shrink bytes' window
        self.repliesReceived(token, ids, statuses, payloads, busy_seconds(head), calls)

    def repliesReceived(
        self,
        token: int,
        ids,
        statuses: bytes,
        payloads,
        busy: float | None = None,
        calls: bool = False,
    ) -> None:
        """Worker C{token} answered requests C{ids}; C{busy}: its handler seconds on them
        (C{calls}: a message that carried calls, whose time is kept apart).

        Requests it skipped (cancelled, status L{SKIPPED}) count neither as served nor in
        the handler time.
        """
        ran = len(ids) - statuses.count(SKIPPED)
        if busy is not None:
            self._scheduler.handlerTime(ran, busy, calls)
        link = self._links.get(token)
        if link is None:  # a worker given up on: its requests may be queued again
            answered = self._delivery.lateReplies(ids, statuses, payloads)
            if answered:
                self._scheduler.drop(answered)
            return
        self.stats.served(token, ran)
        self._delivery.replies(link.outstanding, ids, statuses, payloads)
        if link.retiring and not link.outstanding:
            link.drained()
        if self._queue or self._suspects or self._localQueue:
            self._flush()

    def afterReplies(self, call: Callable[[], None]) -> None:
        """Have C{call} run once the batch of replies being delivered now is all delivered.

        For a receiver that writes once per batch, not once per reply; call it from
        L{IReplyReceiver.replyReceived} only.
        """
        self._delivery.afterReplies(call)

    # -- timeouts --------------------------------------------------------------------------

    def start(self) -> None:
        """Start enforcing C{timeout} (see L{Sweep} for how often it sweeps)."""
        self._sweep.start()

    def stop(self) -> None:
        """Stop the sweep, and a flush still scheduled (nothing runs after a stop)."""
        self._sweep.stop()
        self._scheduler.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._turn_time = None

    def _checkTimeouts(self) -> None:
        self._timeouts.check()

    # -- sending ---------------------------------------------------------------------------

    def _scheduleFlush(self) -> None:
        """Flush on the next reactor turn (once per turn), if any worker can take work."""
        if self._flush_call is None and self._links:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send what waits to workers with room (see L{Scheduler.flush})."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        self._turn_time = None
        self._scheduler.flush()
