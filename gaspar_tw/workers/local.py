"""Worker processes: start them with C{spawnProcess}, know which are ready, replace the dead.

Each worker gets a unique token. It says hello on the reply socket once its handler is
imported; only then does the pool connect a PUSH socket to it and hand it to the dispatcher.
Each worker leads a process group of its own: when it exits, the pool kills that group, so
nothing a handler forked outlives it (or holds up its replacement by keeping its pipes open).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from itertools import count
from typing import TYPE_CHECKING

from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gaspar_tw.dispatch import Dispatcher, WorkerLink
from gaspar_tw.errors import HandlerError
from gaspar_tw.stats import Stats
from gaspar_tw.wire import messages
from gaspar_tw.wire.control import (
    EXIT_HANDLER_ERROR,
    STACK_DUMP_SECONDS,
    STACK_SIGNAL,
    STOP_GRACE_SECONDS,
)
from gaspar_tw.workers.source import IWorkerSource, WorkerInfo

if TYPE_CHECKING:  # imported when a pool starts: txZMQ imports the global reactor
    from gaspar_tw.workers.channels import ChannelHub, WorkChannel

log = Logger()
childLog = Logger(namespace="gaspar_tw.worker")

#: A worker that dies sooner than this after starting counts as failing to start.
QUICK_DEATH_SECONDS = 1.0
#: Wait before starting a worker again after its first failure to start; doubled each time.
FIRST_RESPAWN_DELAY = 0.1
#: Longest wait before starting a worker again after repeated failures to start.
MAX_RESPAWN_DELAY = 10.0
#: A worker's output is logged line by line; a longer line is logged in pieces this long.
MAX_LOG_LINE = 64 * 1024
#: At most this much of what a worker wrote just before it exited is read from each pipe.
LAST_OUTPUT_BYTES = 1024 * 1024


class OutputLines:
    """Cut a stream of output into lines of at most C{limit} bytes, in linear time.

    L{feed} and L{flush} return C{(line, continued)} pairs; a longer line comes out in
    pieces, every piece but its last C{continued}.
    """

    def __init__(self, limit: int = MAX_LOG_LINE) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []  # the unfinished line, at most C{limit} bytes
        self._size = 0

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        out = []
        end = data.rfind(b"\n") + 1
        if end:
            self._chunks.append(data[: end - 1])
            for line in self._take().split(b"\n"):
                out += self._pieces(line, last=True)
            data = data[end:]
        if data:
            self._chunks.append(data)
            self._size += len(data)
            if self._size >= self.limit:
                out += self._pieces(self._take(), last=False)
        return out

    def flush(self) -> list[tuple[bytes, bool]]:
        """The line left unfinished, if any."""
        return self._pieces(self._take(), last=True) if self._size else []

    def _take(self) -> bytes:
        text = b"".join(self._chunks)
        self._chunks, self._size = [], 0
        return text

    def _pieces(self, text: bytes, last: bool) -> list[tuple[bytes, bool]]:
        """C{text} cut into pieces of C{limit} bytes (not inside a UTF-8 character); unless
        it is the C{last} of its line, the short rest is kept for the next L{feed}."""
        pieces = []
        start = 0
        while len(text) - start > self.limit:
            cut = start + self.limit
            while cut > start + self.limit - 3 and text[cut] & 0xC0 == 0x80:
                cut -= 1  # a UTF-8 continuation byte: cut before its character
            pieces.append((text[start:cut], True))
            start = cut
        if last:
            pieces.append((text[start:], False))
        elif start < len(text):
            self._chunks, self._size = [text[start:]], len(text) - start
        return pieces


def kill_group(pgid: int) -> None:
    """SIGKILL process group C{pgid}, if any process is left in it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class WorkerProcess(ProcessProtocol):
    """One child process: forwards its output to the log and tells the pool when it exits.

    The worker is gone once it exits (L{processExited}): what it wrote is read and its pipes
    are closed then, not waited for (a process it forked could hold them open).
    """

    def __init__(self, pool: LocalWorkers, slot: int, token: int) -> None:
        self.pool = pool
        self.slot = slot
        self.token = token
        self.pid: int | None = None
        self.started = pool.reactor.seconds()
        self.channel: WorkChannel | None = None
        self.ready = False
        self.killed = False
        #: The last line it wrote on stderr (why it could not load the handler, say).
        self.lastError = ""
        #: Fires once the process has exited (and the pool knows).
        self.ended: Deferred = Deferred()
        #: What the dispatcher knows of it, once it is ready.
        self.link: WorkerLink | None = None
        #: Its stderr lines while it writes its stack before being killed (L{LocalWorkers.kill}).
        self.stack: list[str] | None = None
        self._output = {1: OutputLines(), 2: OutputLines()}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = self._output.get(childFD)
        if lines is not None:
            self._log(childFD, lines.feed(data))

    def _log(self, childFD: int, lines: list[tuple[bytes, bool]]) -> None:
        emit = childLog.info if childFD == 1 else childLog.warn
        for line, continued in lines:
            text = line.decode("utf-8", "replace").rstrip()
            if childFD == 2 and self.stack is not None:
                self.stack.append(text)  # logged as one block (L{LocalWorkers.kill})
                continue
            if text and childFD == 2:
                self.lastError = text
            if text:
                emit(
                    "worker {slot} (pid {pid}): {line}{more}",
                    slot=self.slot,
                    pid=self.pid,
                    line=text,
                    more=" [continued]" if continued else "",
                )

    def processExited(self, reason: Failure) -> None:
        if self.pid is not None:
            kill_group(self.pid)  # whatever its handler forked
        self._readLastOutput()
        self.transport.loseConnection()  # a process it forked may have kept the pipes open
        for childFD, lines in self._output.items():
            self._log(childFD, lines.flush())
        self.pool._exited(self, reason)
        self.ended.callback(None)

    def _readLastOutput(self) -> None:
        """Read what the worker wrote before it exited, before its pipes are closed."""
        for childFD, pipe in list(getattr(self.transport, "pipes", {}).items()):
            left = LAST_OUTPUT_BYTES if childFD in self._output else 0
            while left > 0:
                try:
                    data = os.read(pipe.fileno(), min(left, 65536))
                except OSError:  # nothing more for now (EAGAIN), or closed
                    break
                if not data:
                    break
                left -= len(data)
                self.childDataReceived(childFD, data)

    def signal(self, name: str | int) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


@implementer(IWorkerSource)
class LocalWorkers:
    """Start C{size} workers running C{handler_spec}, and keep that many alive.

    With C{dispatcher} C{None} (a worker host's pool: its workers answer a remote producer),
    give C{stats} and override L{socketArguments}.
    """

    def __init__(
        self,
        reactor,
        handler_spec: str,
        size: int,
        dispatcher: Dispatcher | None,
        pythonpath: Sequence[str] = (),
        stats: Stats | None = None,
    ) -> None:
        self.reactor = reactor
        self.stats = dispatcher.stats if stats is None else stats
        self.handler_spec = handler_spec
        self.size = size
        self.dispatcher = dispatcher
        self.pythonpath = [os.path.abspath(p) for p in pythonpath]
        self.processes: dict[int, WorkerProcess] = {}
        self.hub: ChannelHub | None = None
        self.stopping = False
        self.restarts = 0
        self._tokens = count(1)
        self._failures = [0] * size
        self._respawns: dict[int, object] = {}
        self._readyWaiters: list[Deferred] = []

    def start(self, hub: ChannelHub | None) -> None:
        """Start every worker (again, after L{stop})."""
        self.hub = hub
        self.stopping = False
        self._failures = [0] * self.size
        for slot in range(self.size):
            self._spawn(slot)

    def whenReady(self) -> Deferred:
        """Fires once every slot has a ready worker."""
        if self.readyCount() >= self.size:
            return succeed(None)
        d: Deferred = Deferred()
        self._readyWaiters.append(d)
        return d

    def readyCount(self) -> int:
        return sum(1 for process in self.processes.values() if process.ready)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.pid is not None]

    def workers(self) -> list[WorkerInfo]:
        infos = []
        for process in sorted(self.processes.values(), key=lambda p: p.slot):
            worker = self.stats.workers.get(process.token)
            infos.append(
                WorkerInfo(
                    "local",
                    process.pid,
                    process.slot,
                    0 if worker is None else worker.served,
                    None if worker is None else worker.ready_at,
                )
            )
        return infos

    def messageReceived(self, frames: list) -> None:
        """A message on the hub's reply socket: a worker's replies or its hello."""
        kind, token = messages.frame_kind(frames[0])
        if kind == messages.REPLIES:
            self.dispatcher.repliesMessage(token, frames)
        elif kind == messages.HELLO:
            self.hello(token, int(frames[1]))

    def _spawn(self, slot: int) -> None:
        self._respawns.pop(slot, None)
        token = next(self._tokens)
        process = WorkerProcess(self, slot, token)
        argv = [
            sys.executable,
            "-m",
            "gaspar_tw.worker",
            "--handler",
            self.handler_spec,
            "--token",
            str(token),
            "--slot",
            str(slot),
            *self.socketArguments(token),
        ]
        for directory in self.pythonpath:
            argv += ["--pythonpath", directory]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.processes[token] = process
        try:
            self.reactor.spawnProcess(
                process, sys.executable, argv, env=env, childFDs={0: "w", 1: "r", 2: "r"}
            )
        except Exception as e:  # e.g. OSError EMFILE: out of file descriptors
            del self.processes[token]
            delay = self._failedToStart(slot)
            log.error(
                "cannot start worker {slot}: {error}; retrying in {delay:.1f}s",
                slot=slot,
                error=f"{type(e).__name__}: {e}",
                delay=delay,
            )
            self._respawns[slot] = self.reactor.callLater(delay, self._spawn, slot)
            return
        self.spawned(process)

    def _failedToStart(self, slot: int) -> float:
        """Count a failure to start a worker in C{slot}; return the wait before the next try."""
        self._failures[slot] += 1
        return min(FIRST_RESPAWN_DELAY * 2 ** (self._failures[slot] - 1), MAX_RESPAWN_DELAY)

    def socketArguments(self, token: int) -> list[str]:
        """The worker's command-line arguments saying where its sockets are."""
        return ["--work", self.hub.work_address(token), "--reply", self.hub.reply_address]

    def spawned(self, process: WorkerProcess) -> None:
        """Called after each worker process starts (for subclasses)."""

    def hello(self, token: int, pid: int) -> None:
        """A worker imported its handler and bound its socket: give it work."""
        process = self.processes.get(token)
        if process is None or process.ready or self.stopping:
            return
        process.ready = True
        process.channel = self.hub.connect_worker(token)
        log.info("worker {slot} ready (pid {pid})", slot=process.slot, pid=pid)
        self.stats.workerReady(token, process.slot, pid)
        process.link = WorkerLink(token, pid, process.channel.send, partial(self.kill, token))
        self.dispatcher.workerReady(process.link)
        if self.readyCount() >= self.size and self._readyWaiters:
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.callback(None)

    def kill(self, token: int) -> None:
        """Kill a worker the dispatcher gave up on, its stack logged first; its replacement
        starts at once, no backoff.

        The worker is sent L{STACK_SIGNAL} (it writes each thread's stack on stderr), then
        SIGKILL after L{STACK_DUMP_SECONDS}; what it wrote meanwhile is logged as one event.
        """
        process = self.processes.get(token)
        if process is None or process.killed:
            return
        process.killed = True
        process.ready = False
        process.stack = []
        process.signal(STACK_SIGNAL)
        timer = self.reactor.callLater(STACK_DUMP_SECONDS, self._killStuck, process)
        if not self.stopping:
            self._spawn(process.slot)  # while this one writes its stack

        def ended(result):  # before the timer: it did not survive the signal
            if timer.active():
                timer.cancel()
                self._logStack(process)
            return result

        process.ended.addCallback(ended)

    def _killStuck(self, process: WorkerProcess) -> None:
        process._readLastOutput()  # the rest of its stack, if the reactor has not read it yet
        self._logStack(process)
        process.signal("KILL")

    def _logStack(self, process: WorkerProcess) -> None:
        """Log the stack a worker given up on wrote (L{kill}), as one event."""
        stack = "\n".join(process.stack or ()).strip("\n")
        process.stack = None
        running = None if process.link is None else process.link.watched
        log.warn(
            "worker {slot} (pid {pid}) given up on{where}: {stack}",
            slot=process.slot,
            pid=process.pid,
            where="" if running is None else f" while on request {running}",
            stack=f"its stack before SIGKILL:\n{stack}" if stack else "it wrote no stack",
        )

    def _exited(self, process: WorkerProcess, reason: Failure) -> None:
        self.processes.pop(process.token, None)
        self.stats.workerEnded(process.token)
        if self.dispatcher is not None:
            self.dispatcher.workerLost(process.token)
        if self.hub is not None:
            self.hub.forget_worker(process.channel, process.token)
        if self.stopping:
            return
        self.restarts += 1
        self.stats.workerRestarted()
        if process.killed:
            log.info(
                "worker {slot} (pid {pid}) killed; its replacement started when it was given up on",
                slot=process.slot,
                pid=process.pid,
            )
            return
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        lived = self.reactor.seconds() - process.started
        how = f"signal {sig}" if sig else f"exit status {code}"
        if lived < QUICK_DEATH_SECONDS or code == EXIT_HANDLER_ERROR:
            delay = self._failedToStart(process.slot)
        else:
            self._failures[process.slot] = 0
            delay = 0.0
        failures = self._failures[process.slot]
        if code == EXIT_HANDLER_ERROR:
            log.error(
                "worker {slot} (pid {pid}) cannot load handler {spec!r}; retrying in {delay:.1f}s",
                slot=process.slot,
                pid=process.pid,
                spec=self.handler_spec,
                delay=delay,
            )
            self._failIfNoWorkerCanServe(process)
        elif failures > 1:
            log.error(
                "worker {slot} (pid {pid}) died {n} times in a row soon after start ({how});"
                " next start in {delay:.1f}s",
                slot=process.slot,
                pid=process.pid,
                n=failures,
                how=how,
                delay=delay,
            )
        else:
            log.warn(
                "worker {slot} (pid {pid}) ended unexpectedly ({how}); starting a new one",
                slot=process.slot,
                pid=process.pid,
                how=how,
            )
        self._respawns[process.slot] = self.reactor.callLater(delay, self._spawn, process.slot)

    def _failIfNoWorkerCanServe(self, process: WorkerProcess) -> None:
        """A worker could not load the handler and none is ready: fail what waits now, saying
        why, rather than after --timeout (the others load it in the same environment)."""
        if self.dispatcher is None or self.dispatcher.workerCount or not self.dispatcher.pending:
            return
        why = process.lastError.removeprefix("gaspar_tw worker: ") or "see the log"
        self.dispatcher.failAll(
            HandlerError(f"worker processes cannot load handler {self.handler_spec!r}: {why}")
        )

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> Deferred:
        """Stop every worker: close its stdin, then SIGTERM after C{grace}, SIGKILL after 2x.

        Fires once every worker process has exited and been reaped (and what it forked
        killed). L{start} starts them again.
        """
        self.stopping = True
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        processes = list(self.processes.values())
        for process in processes:
            process.transport.closeStdin()
        timers = [
            self.reactor.callLater(grace, self._signalAll, "TERM"),
            self.reactor.callLater(grace * 2, self._signalAll, "KILL"),
        ]

        def cancelTimers(result):
            for timer in timers:
                if timer.active():
                    timer.cancel()
            return result

        return DeferredList([p.ended for p in processes]).addBoth(cancelTimers)

    def _signalAll(self, name: str) -> None:
        for process in list(self.processes.values()):
            log.warn(
                "worker {slot} (pid {pid}) did not stop; sending SIG{name}",
                slot=process.slot,
                pid=process.pid,
                name=name,
            )
            process.signal(name)
