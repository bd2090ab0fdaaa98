"""The timeout rules, applied at each sweep: abandon a worker stuck on one request, and
expire requests that waited too long for a worker."""

from __future__ import annotations

from twisted.logger import Logger

from gaspar_tw.dispatch.links import WorkerLink, runningRequest
from gaspar_tw.dispatch.receivers import fail
from gaspar_tw.dispatch.scheduler import Scheduler
from gaspar_tw.dispatch.sweep import Sweep
from gaspar_tw.errors import RequestTimeout
from gaspar_tw.stats import Stats

log = Logger()


class Timeouts:
    """Enforce C{sweep.timeout} on the scheduler's workers and queues; call L{check} at
    each sweep.

    A worker on one request for C{timeout} is abandoned: that request fails with
    L{RequestTimeout}, the worker is killed through L{WorkerLink.kill}, and the requests
    queued behind it go back to the queue. A request that waited as long in a queue fails
    with L{RequestTimeout}.
    """

    def __init__(self, scheduler: Scheduler, sweep: Sweep, stats: Stats) -> None:
        self._scheduler = scheduler
        self._sweep = sweep
        self._stats = stats

    def check(self) -> None:
        """Abandon workers stuck on one request for C{timeout}; expire requests queued as long.

        The request a worker is running is the one it publishes (a local worker running a
        mixed message: its first outstanding one may have finished, its reply held back while
        it is inside a long C call), else its first outstanding one (L{runningRequest}). One
        first seen running at this sweep started since the previous one: it is stamped like
        a request queued then, in sweep counts (not reactor times, whose jitter cost a whole
        extra sweep), so the worker is abandoned after it has run the request for C{timeout}
        and less than one sweep interval more.
        """
        sweep = self._sweep
        scheduler = self._scheduler
        for link in list(scheduler.links.values()):
            running = runningRequest(link)
            if running is None or running != link.watched:
                link.watched, link.watchedAt = running, sweep.count - 1
            elif sweep.expired(link.watchedAt):
                self._abandon(link, running)
        if any(scheduler.queues):
            self._expireQueued()

    def _abandon(self, link: WorkerLink, running: int) -> None:
        """Give up on a stuck worker: fail its current request, requeue the rest, kill it.

        The rest are those queued behind it (not started) and, for a local worker, any
        before it that it had finished without sending their replies (lost with it: they
        run again)."""
        scheduler = self._scheduler
        timeout = self._sweep.timeout
        stuck, others, finished = scheduler.giveUp(link, running)
        log.warn(
            "worker pid {pid} ran one request for over {timeout}s (--timeout): killing it,"
            " failing that request and retrying the {n} queued behind it{rerun}",
            pid=link.pid,
            timeout=timeout,
            n=len(others) - finished,
            rerun=f" and the {finished} before it, finished but not yet answered"
            if finished
            else "",
        )
        link.kill()
        scheduler.requeue(others)
        if stuck is not None:
            self._stats.requestTimedOut()
            fail(stuck, RequestTimeout(f"the handler ran for over {timeout}s (--timeout)"))

    def _expireQueued(self) -> None:
        scheduler = self._scheduler
        expired = self._sweep.expired
        stale = [r for r in scheduler.waiting() if expired(r.queuedAt)]
        if not stale:
            return
        scheduler.drop({request.rid for request in stale})
        timeout = self._sweep.timeout
        log.warn(
            "{n} requests waited over {timeout}s for a free worker (--timeout); failing them",
            n=len(stale),
            timeout=timeout,
        )
        requests = scheduler.requests
        for request in stale:
            del requests[request.rid]
            self._stats.requestTimedOut()
            fail(request, RequestTimeout(f"no worker was free for {timeout}s (--timeout)"))
