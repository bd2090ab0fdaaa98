"""Replace local workers one at a time, each new one ready before its old one is retired:
reloads (SIGHUP), recycling (--max-requests, --max-memory) and shrinking (SIGTTOU).

A recycle starts a replacement in the old worker's slot; once the replacement says hello,
the old worker is retired (it gets no more work, answers what it holds, then exits), and
only once it has exited does the next recycle start: capacity never drops, and never two
recycles run at once. A replacement that exits before it is ready (a broken deploy) ends a
reload: the old workers keep serving, one error is logged and the reload counts as failed.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gaspar_tw.wire.control import EXIT_HANDLER_ERROR

if TYPE_CHECKING:
    from gaspar_tw.workers.local import LocalWorkers, WorkerProcess

log = Logger()

#: A recycle whose replacement could not start is tried again after this long.
RECYCLE_RETRY_SECONDS = 10.0


class Recycler:
    """The queue of workers to replace for C{workers}, worked through one at a time."""

    def __init__(self, workers: LocalWorkers) -> None:
        self.workers = workers
        self.stats = workers.stats
        self.queue: deque[tuple[int, str]] = deque()
        #: The recycle in progress: (old worker, its replacement, reason).
        self.current: tuple[WorkerProcess, WorkerProcess | None, str] | None = None
        #: Tokens a reload still has to replace, and how many it replaced (None: no reload).
        self._reloadLeft: set[int] | None = None
        self._reloaded = 0
        self._retries: list = []
        self._reloadWaiters: list[Deferred] = []

    # -- asking -----------------------------------------------------------------------------

    def recycle(self, token: int, reason: str) -> None:
        """Replace worker C{token} (once the recycles before it are done)."""
        for index, (queued, queuedReason) in enumerate(self.queue):
            if queued == token:  # a worker asks once: its own reason outlives a reload's
                if queuedReason == "reload":
                    self.queue[index] = (token, reason)
                return
        if self.current is not None and self.current[0].token == token:
            return
        self.queue.append((token, reason))
        self._next()

    def reload(self) -> bool:
        """Replace every worker, one at a time; C{False} if there are none to replace."""
        tokens = [
            p.token
            for p in self.workers.processes.values()
            if p.ready and not p.retiring and not p.killed and p.replacedBy is None
        ]
        if not tokens:
            return False
        if self._reloadLeft is None:
            self._reloaded = 0
        self._reloadLeft = set(tokens)
        log.info("reloading: replacing {n} workers, one at a time", n=len(tokens))
        queued = {token for token, _ in self.queue}  # a recycle asked for already keeps its
        for token in tokens:  # reason, and is not lost if this reload fails
            if token not in queued:
                self.queue.append((token, "reload"))
        self._next()
        return True

    @property
    def reloading(self) -> bool:
        return self._reloadLeft is not None

    def whenReloaded(self) -> Deferred:
        """Fires with C{"ok"} or C{"failed"} when the reload in progress ends (at once,
        with C{None}, if none is)."""
        if self._reloadLeft is None:
            return succeed(None)
        d: Deferred = Deferred()
        self._reloadWaiters.append(d)
        return d

    # -- events from the workers -----------------------------------------------------------

    def replacementReady(self, process: WorkerProcess) -> None:
        """The replacement in progress said hello: retire the worker it replaces."""
        if self.current is None or self.current[1] is not process:
            return
        old, _, reason = self.current
        if old.ended.called or old.killed:  # it died or was killed meanwhile: not recycled
            self._finished(old)
            return
        self.stats.workerRecycled(reason)
        log.info(
            "worker {slot} (pid {pid}) is being retired ({reason}); pid {new} replaces it",
            slot=old.slot,
            pid=old.pid,
            reason=reason,
            new=process.pid,
        )
        self.workers.retireProcess(old)

    def replacementFailed(self, process: WorkerProcess | None, code: int | None) -> None:
        """The replacement in progress exited before it was ready (or, C{None}, could not
        be started): keep the old worker."""
        if self.current is None or self.current[1] is not process:
            return
        old, _, reason = self.current
        self.current = None
        old.replacedBy = None
        if process is None:
            why = "a new worker process could not be started"
        elif code == EXIT_HANDLER_ERROR:
            why = f"new workers {self.workers.cannotLoad(process)}"
        else:
            why = f"the new worker (pid {process.pid}) exited before it was ready"
        if reason == "reload":
            log.error("reload failed: {why}; the old workers keep serving", why=why)
            self.stats.reloadEnded("failed")
            self._endReload("failed")
        else:
            log.error(
                "cannot recycle worker {slot} (pid {pid}, {reason}): {why}; it keeps serving,"
                " retrying in {delay:.0f}s",
                slot=old.slot,
                pid=old.pid,
                reason=reason,
                why=why,
                delay=RECYCLE_RETRY_SECONDS,
            )
            if not old.ended.called:
                self._retries.append(
                    self.workers.reactor.callLater(
                        RECYCLE_RETRY_SECONDS, self.recycle, old.token, reason
                    )
                )
        self._next()

    def exited(self, process: WorkerProcess) -> None:
        """A worker exited: if it is the one being recycled, the next recycle may start."""
        if self.current is None or self.current[0] is not process:
            return
        replacement = self.current[1]
        if replacement is None or replacement.ready:
            self._finished(process)

    # -- the queue ---------------------------------------------------------------------------

    def _finished(self, old: WorkerProcess) -> None:
        reason = self.current[2]
        self.current = None
        if reason == "reload" and self._reloadLeft is not None:
            self._reloaded += 1
        self._next()

    def _next(self) -> None:
        workers = self.workers
        while self.current is None and self.queue and not workers.stopping:
            token, reason = self.queue.popleft()
            if self._reloadLeft is not None:
                self._reloadLeft.discard(token)
            old = workers.processes.get(token)
            if old is None or old.retiring or not old.ready:
                continue
            replacement = workers.startReplacement(old)
            self.current = (old, replacement, reason)
            if replacement is None:  # it could not even be spawned: try it later
                self.replacementFailed(None, None)
        if self.current is None and self._reloadLeft is not None and not self._reloadLeft:
            log.info("reload done: {n} workers replaced", n=self._reloaded)
            self.stats.reloadEnded("ok")
            self._endReload("ok")

    def _endReload(self, outcome: str) -> None:
        self._reloadLeft = None
        self.queue = deque(entry for entry in self.queue if entry[1] != "reload")
        waiters, self._reloadWaiters = self._reloadWaiters, []
        for d in waiters:
            d.callback(outcome)

    def stop(self) -> None:
        """Forget every recycle (the workers are stopping)."""
        self.queue.clear()
        self.current = None
        if self._reloadLeft is not None:
            self._endReload("stopped")
        for call in self._retries:
            if call.active():
                call.cancel()
        self._retries.clear()
