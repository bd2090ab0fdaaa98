"""Which worker gets which queued request: window sizes, least-loaded fair shares, requests
retried after a crash, each run alone, and calls kept on local workers when they must be."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gaspar_tw.dispatch.links import WorkerLink, load
from gaspar_tw.dispatch.receivers import fail
from gaspar_tw.dispatch.requests import Request
from gaspar_tw.dispatch.sweep import Sweep
from gaspar_tw.errors import WorkerCrashed
from gaspar_tw.stats import Stats
from gaspar_tw.wire.calls import CallFrames
from gaspar_tw.wire.messages import encode_cancel, encode_mixed_work, encode_work

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
#: A cancelled call a local worker was told to skip is checked on this often until it is
#: skipped or answered: a worker that started it all the same is killed (L{Scheduler.cancel}).
RECHECK_CANCELLED_SECONDS = 0.02


def _isCall(request: Request) -> bool:
    return type(request.payload) is CallFrames


class Scheduler:
    """The queue, the ready workers (C{links}, by token) and what each holds.

    L{flush} gives each worker with room at most L{windowSize} requests, least-loaded first,
    in one message per worker. A dead worker's requests (I{suspects}) are retried once, each
    alone on an otherwise idle worker, so one that kills its worker again is known and failed
    with L{WorkerCrashed}; while they wait, as many of the least-loaded workers are reserved
    for them (given no new work until idle).

    While calls are kept local (L{keepCallsLocal}), calls wait in a queue of their own,
    C{localQueue}, which only local workers are served from (before the shared C{queue}); a
    retried call runs alone on a local worker. Bytes requests take the same path either way.

    C{requests} is the request table's dict; C{sweep} stamps requests as they join a queue;
    C{scheduleFlush} asks for a L{flush} on the next reactor turn; C{clock} times the checks
    on cancelled calls (L{cancel}).
    """

    def __init__(
        self,
        requests: dict[int, Request],
        stats: Stats,
        sweep: Sweep,
        scheduleFlush: Callable[[], None],
        clock: IReactorTime,
        *,
        window: int,
        retry_on_crash: bool,
    ) -> None:
        self.requests = requests
        self.stats = stats
        self.window = window
        self.retry_on_crash = retry_on_crash
        #: Handler seconds per request, a moving average of what workers report (None until
        #: the first report: until then requests are spread, the window is L{INITIAL_WINDOW}).
        self.handler_time: float | None = None
        #: The same for calls (messages that carried calls), used while C{handler_time} is
        #: unknown (a pool that only runs calls).
        self.call_time: float | None = None
        self.queue: deque[Request] = deque()
        #: Calls that may run on local workers only (L{keepCallsLocal}).
        self.localQueue: deque[Request] = deque()
        #: Requests held by a worker that died: each is retried alone on an idle worker.
        self.suspects: deque[Request] = deque()
        #: Every queue a request may wait in.
        self.queues = (self.queue, self.localQueue, self.suspects)
        #: Whether calls may run on local workers only (see L{keepCallsLocal}).
        self.callsLocalOnly = False
        self.links: dict[int, WorkerLink] = {}
        #: Tokens of workers running one suspect alone.
        self.isolating: set[int] = set()
        #: Tokens of workers given no new work until they are idle, for the waiting suspects.
        self.reserved: set[int] = set()
        self._sweep = sweep
        self._scheduleFlush = scheduleFlush
        self._clock = clock
        #: Cancelled calls local workers were told to skip, checked on until they are
        #: (L{cancel}): their ids, and the worker holding each.
        self.cancelledCalls: dict[int, WorkerLink] = {}
        self._recheck: IDelayedCall | None = None
        #: How a batch becomes messages: plain until the first call (L{carryCalls}), so a
        #: pool of bytes requests only never looks at a payload's type.
        self.encodeWork = encode_work

    def carryCalls(self) -> None:
        """Calls may be queued from now on: encode batches that may hold them."""
        self.encodeWork = encode_mixed_work

    # -- calls kept local ------------------------------------------------------------------

    def keepCallsLocal(self) -> None:
        """From now on, send calls to local workers only (L{WorkerLink.local}): remote
        workers join on an address that is neither loopback nor CURVE-protected, and a
        pickled call runs code wherever it is read."""
        self.callsLocalOnly = True

    def queuedCall(self, rid: int) -> None:
        """The call C{rid} was just queued (last, in C{queue}): move it to C{localQueue} if
        calls are kept local."""
        if self.callsLocalOnly and self.queue and self.queue[-1].rid == rid:
            self.localQueue.append(self.queue.pop())

    def mustRunLocally(self, request: Request) -> bool:
        """Whether C{request} may go to local workers only (a call, while kept local)."""
        return self.callsLocalOnly and _isCall(request)

    # -- window ----------------------------------------------------------------------------

    def handlerTime(self, count: int, seconds: float, calls: bool = False) -> None:
        """A worker spent C{seconds} in the handler on C{count} requests (C{calls}: in a
        message that carried calls, timed apart in C{call_time})."""
        if not count:
            return
        if calls:
            if self.call_time is None:
                self.call_time = seconds / count
            else:
                self.call_time += (seconds / count - self.call_time) * 0.2
        elif self.handler_time is None:
            self.handler_time = seconds / count
        else:
            self.handler_time += (seconds / count - self.handler_time) * 0.2

    def requestTime(self) -> float | None:
        """The time a request takes, for windows: the handler's once known (calls, slow or
        not, must not shrink the window of a producer's bytes requests), else the calls'."""
        return self.call_time if self.handler_time is None else self.handler_time

    def windowSize(self) -> int:
        """Requests one worker may hold: C{window}, fewer for slow handlers or unknown ones."""
        handler_time = self.requestTime()
        if handler_time is None:
            return min(INITIAL_WINDOW, self.window)
        if not handler_time:
            return self.window
        return max(2, min(self.window, int(WINDOW_SECONDS / handler_time)))

    # -- sending ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Send queued requests to workers with room, least-loaded first, fair shares
        (calls kept local first, to local workers)."""
        if self.suspects or self.isolating or self.reserved:
            self._sendSuspects()
        if self.localQueue:
            self._fill(self.localQueue, localOnly=True)
        if self.queue:
            self._fill(self.queue)

    def _fill(self, queue: deque[Request], localOnly: bool = False) -> None:
        """Send what C{queue} holds to workers with room (local ones only if C{localOnly})."""
        window = self.windowSize()
        while queue:
            links = [
                link
                for link in self.links.values()
                if len(link.outstanding) < window and not link.retiring
            ]
            if localOnly:
                links = [link for link in links if link.local]
            if self.isolating or self.reserved:
                setAside = self.isolating | self.reserved
                links = [link for link in links if link.token not in setAside]
            if not links:
                return
            links.sort(key=load)
            handler_time = self.requestTime()
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
                    link.send(self.encodeWork(ids, [request.payload for request in batch]))
                except Exception:
                    queue.extendleft(reversed(batch))
                    self._sendFailed(link)
                    continue
                link.outstanding.update(dict.fromkeys(ids))

    def _sendFailed(self, link: WorkerLink) -> None:
        """Sending to C{link} failed (call from the except block): give up on that worker,
        requeue what it held, and have it ended."""
        log.failure("sending to worker pid {pid} failed; replacing it", pid=link.pid)
        self.forget(link)
        self.requeue(self.held(link))
        link.kill()

    def _sendSuspects(self) -> None:
        """Give each retried request, alone, to a worker that holds nothing else (a local
        one for a call kept local).

        While retried requests wait and no worker is idle, the least-loaded workers (one per
        waiting request, local ones for calls kept local) are reserved: they get no new work,
        so each is idle once it has answered what it holds, and a retried request waits that
        long at most under any load.
        """
        links = self.links
        for token in list(self.isolating):
            if not links[token].outstanding:
                self.isolating.discard(token)
        reserved = self.reserved
        idle = [
            link
            for link in links.values()
            if not link.outstanding and not link.retiring and link.token not in self.isolating
        ]
        idle.sort(key=lambda link: link.token in reserved)  # reserved ones are taken first
        suspects = self.suspects
        waitingForLocal: list[Request] = []
        while suspects and idle:
            request = suspects.popleft()
            link = self._idleFor(request, idle)
            if link is None:
                waitingForLocal.append(request)
                continue
            try:
                link.send(self.encodeWork([request.rid], [request.payload]))
            except Exception:
                suspects.appendleft(request)
                self._sendFailed(link)  # it held nothing: idle
                continue
            link.outstanding[request.rid] = None
            self.isolating.add(link.token)
            reserved.discard(link.token)
        suspects.extendleft(reversed(waitingForLocal))
        self._reserve()

    def _idleFor(self, request: Request, idle: list[WorkerLink]) -> WorkerLink | None:
        """Take from C{idle} the last worker C{request} may go to (a local one for a call
        kept local); C{None} if there is none."""
        if not self.mustRunLocally(request):
            return idle.pop()
        for index in range(len(idle) - 1, -1, -1):
            if idle[index].local:
                return idle.pop(index)
        return None

    def _reserve(self) -> None:
        """Hold back as many workers as retried requests wait, the least loaded ones: for
        retried calls kept local, local ones (none if no local worker is free)."""
        links = self.links
        reserved = self.reserved
        for token in list(reserved):
            if links[token].retiring:
                reserved.discard(token)
        needed = len(self.suspects)
        keptLocal = 0  # reserved local workers that must stay reserved
        if self.callsLocalOnly:
            localNeeded = sum(map(self.mustRunLocally, self.suspects))
            if localNeeded:
                self._reserveMore(localNeeded - self._localReserved(), localOnly=True)
                keptLocal = min(localNeeded, self._localReserved())
                needed -= localNeeded - keptLocal  # no remote worker is held back for them
        excess = len(reserved) - needed
        if excess > 0:
            spareLocal = self._localReserved() - keptLocal
            held = sorted((links[token] for token in reserved), key=load)
            for link in reversed(held):  # the most loaded go first; enough local ones stay
                if not excess:
                    break
                if link.local:
                    if not spareLocal:
                        continue
                    spareLocal -= 1
                reserved.discard(link.token)
                excess -= 1
        elif excess < 0:
            self._reserveMore(-excess)

    def _localReserved(self) -> int:
        return sum(self.links[token].local for token in self.reserved)

    def _reserveMore(self, n: int, localOnly: bool = False) -> None:
        """Reserve the C{n} least-loaded workers not yet set aside (local ones if
        C{localOnly})."""
        if n <= 0:
            return
        free = [
            link
            for link in self.links.values()
            if not link.retiring
            and link.token not in self.reserved
            and link.token not in self.isolating
            and (link.local or not localOnly)
        ]
        free.sort(key=load)
        self.reserved.update(link.token for link in free[:n])

    # -- queues ----------------------------------------------------------------------------

    def requeue(self, requests: list[Request]) -> None:
        """Put requests back at the head of their queue, their queue wait starting afresh."""
        if not requests:
            return
        for request in requests:
            request.queuedAt = self._sweep.count
        if self.callsLocalOnly:
            local = [request for request in requests if self.mustRunLocally(request)]
            if local:
                self.localQueue.extendleft(reversed(local))
                requests = [request for request in requests if not self.mustRunLocally(request)]
        self.queue.extendleft(reversed(requests))
        self._scheduleFlush()

    def waiting(self) -> list[Request]:
        """Every request waiting in a queue."""
        return [request for waiting in self.queues for request in waiting]

    def drop(self, rids: set[int]) -> None:
        """Take the requests with ids C{rids} off the queues, wherever they wait."""
        for waiting in self.queues:
            kept = [request for request in waiting if request.rid not in rids]
            if len(kept) != len(waiting):
                waiting.clear()
                waiting.extend(kept)
        if self.reserved:
            self._scheduleFlush()  # a worker held back for them may take other work

    def cancel(self, request: Request, killRunning: bool = True) -> None:
        """Drop a cancelled request if it waits; have its worker skip it if not started.

        A call (L{gaspar_tw.calls}) its worker is running ends with that worker, unless
        C{killRunning} is false: see L{_cancelRunningCall}. A running handler's request is
        let be (a client that went away costs no worker): its reply is dropped.

        Which request a worker runs: the one it publishes, for a local worker (its first
        outstanding one may have finished, its reply held back); the first outstanding one
        for a remote worker. A local worker told to skip a call may already be past the
        point where it reads that: the call is checked on again every
        L{RECHECK_CANCELLED_SECONDS}, and its worker killed if it is running it.
        """
        for waiting in self.queues:
            try:
                waiting.remove(request)
            except ValueError:
                continue
            if self.reserved:
                self._scheduleFlush()  # a worker held back for it may take other work
            return
        rid = request.rid
        for link in self.links.values():
            if rid in link.outstanding:
                if link.running is not None:
                    running = link.running()
                else:
                    running = next(iter(link.outstanding))
                if running != rid:
                    try:
                        link.send([encode_cancel([rid])])
                    except Exception as e:  # it will run it; the reply is dropped
                        log.warn(
                            "could not tell worker pid {pid} to skip a cancelled request: {e!r}",
                            pid=link.pid,
                            e=e,
                        )
                    if killRunning and link.running is not None and _isCall(request):
                        self._watchCancelled(rid, link)
                elif killRunning and _isCall(request):
                    self._cancelRunningCall(link, rid)
                return

    def _watchCancelled(self, rid: int, link: WorkerLink) -> None:
        """Check on the cancelled call C{rid}, told to skip, until C{link}'s worker has
        skipped or answered it, or is killed for running it."""
        self.cancelledCalls[rid] = link
        if self._recheck is None or not self._recheck.active():
            self._recheck = self._clock.callLater(RECHECK_CANCELLED_SECONDS, self._recheckCancelled)

    def _recheckCancelled(self) -> None:
        """Kill the worker of each watched cancelled call it is running (L{cancel})."""
        self._recheck = None
        watched = self.cancelledCalls
        for rid, link in list(watched.items()):
            if self.links.get(link.token) is not link or rid not in link.outstanding:
                del watched[rid]  # skipped, answered, or the worker is gone
            elif link.running() == rid:
                del watched[rid]
                self._cancelRunningCall(link, rid)
        if watched:
            self._recheck = self._clock.callLater(RECHECK_CANCELLED_SECONDS, self._recheckCancelled)

    def _cancelRunningCall(self, link: WorkerLink, rid: int) -> None:
        """The call C{rid} that C{link}'s worker runs was cancelled (it has left the table):
        kill that worker at once (its owner replaces it), and queue again, as they were,
        the other requests it held: those behind the call did not start (so they are not
        retried as a crash's are); those before it had finished, their replies held back
        (lost with the worker, so they run again) or on their way (which still answer
        them)."""
        _, held, finished = self.giveUp(link, rid)
        log.info(
            "killing worker pid {pid}: the call it was running was cancelled (its Deferred's"
            " cancel(), or addTimeout); it is replaced, and the {n} requests it held behind"
            " that call are sent again{rerun}",
            pid=link.pid,
            n=len(held) - finished,
            rerun=f" (and the {finished} before it, finished but not yet answered: they run again)"
            if finished
            else "",
        )
        link.kill(stack=False)
        self.requeue(held)

    def stop(self) -> None:
        """Stop checking on cancelled calls (nothing runs after a stop)."""
        self.cancelledCalls.clear()
        if self._recheck is not None and self._recheck.active():
            self._recheck.cancel()
        self._recheck = None

    def clear(self) -> None:
        """Forget every request (the table has been emptied)."""
        self.stop()
        for waiting in self.queues:
            waiting.clear()
        for link in self.links.values():
            link.outstanding.clear()

    # -- workers ---------------------------------------------------------------------------

    def retire(self, token: int) -> None:
        """Give the worker C{token} no more work; call its C{drained} once it has answered
        what it holds (at once if nothing)."""
        link = self.links.get(token)
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
        link = self.links.get(token)
        if link is None:
            return
        alone = token in self.isolating
        self.forget(link)
        held = self.held(link)
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
        self.suspects.extend(retry)
        if retry:
            self._scheduleFlush()
        self.stats.error += len(failed)
        for request in failed:
            del self.requests[request.rid]
            fail(
                request,
                WorkerCrashed(f"worker pid {link.pid} died while handling the request; {why}"),
            )

    def held(self, link: WorkerLink) -> list[Request]:
        """Take a lost worker's pending requests off it, in the order they were sent."""
        requests = self.requests
        held = [requests[rid] for rid in link.outstanding if rid in requests]
        link.outstanding.clear()
        return held

    def giveUp(self, link: WorkerLink, rid: int) -> tuple[Request | None, list[Request], int]:
        """Stop giving work to C{link}, whose worker runs C{rid}, before it is killed:
        C{rid}'s request (C{None} if it has left the table), the others it held in the order
        sent, and how many of those it had finished (L{finishedBefore}: they run again)."""
        finished = self.finishedBefore(link, rid)
        self.forget(link)
        running = self.requests.pop(rid, None)
        return running, self.held(link), finished

    def finishedBefore(self, link: WorkerLink, rid: int) -> int:
        """How many pending requests C{link} holds ahead of C{rid}, the one its worker runs:
        finished, their replies held back by the worker or on their way."""
        sent = list(link.outstanding)
        return sum(other in self.requests for other in sent[: sent.index(rid)])

    def forget(self, link: WorkerLink) -> None:
        """Stop giving work to C{link} (it died, or was given up on)."""
        del self.links[link.token]
        self.isolating.discard(link.token)
        self.reserved.discard(link.token)
