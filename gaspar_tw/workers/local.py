"""Worker processes: start them with C{spawnProcess}, know which are ready, replace the dead.

Each worker gets a unique token. It says hello on the reply socket once its handler is
imported; only then does the pool connect a PUSH socket to it and hand it to the dispatcher.
Each worker leads a process group of its own: when it exits, the pool kills that group, so
nothing a handler forked outlives it (or holds up its replacement by keeping its pipes open).
Workers are also replaced on purpose, the new one ready before the old one is retired
(reload, recycling, resize: L{gaspar_tw.workers.recycling}).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from collections.abc import Sequence
from functools import partial
from itertools import count
from typing import TYPE_CHECKING

from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gaspar_tw.config import MAX_WORKERS, crowding_warning
from gaspar_tw.dispatch import Dispatcher, WorkerLink
from gaspar_tw.errors import HandlerError
from gaspar_tw.stats import Stats
from gaspar_tw.wire import messages
from gaspar_tw.wire.control import (
    EXIT_HANDLER_ERROR,
    MEGABYTE,
    STACK_DUMP_SECONDS,
    STACK_SIGNAL,
    STOP_GRACE_SECONDS,
    resident_bytes,
)
from gaspar_tw.wire.running import RunningRequest
from gaspar_tw.workers.recycling import Recycler
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
#: With --max-memory-hard, the workers' memory is read this often.
HARD_MEMORY_SWEEP_SECONDS = 1.0


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
        self.killedWhy = "given up on"
        #: Retired (no more work; it exits once it has answered what it holds): not replaced.
        self.retiring = False
        #: The worker this one is starting to replace, and the one starting to replace this.
        self.replaces: WorkerProcess | None = None
        self.replacedBy: WorkerProcess | None = None
        self._stdinClosed = False
        #: The last line it wrote on stderr (why it could not load the handler, say).
        self.lastError = ""
        #: Fires once the process has exited (and the pool knows).
        self.ended: Deferred = Deferred()
        #: What the dispatcher knows of it, once it is ready.
        self.link: WorkerLink | None = None
        #: Its stderr lines while it writes its stack before being killed (L{LocalWorkers.kill}).
        self.stack: list[str] | None = None
        #: Where it publishes the request it is running (a producer's worker; L{RunningRequest}).
        self.running: RunningRequest | None = None
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
            if text and childFD == 1 and not self.ready:
                self.pool.outputBeforeReady(self, text)
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

    def closeStdin(self) -> None:
        """Tell the worker to stop (it answers what it holds first)."""
        if not self._stdinClosed:
            self._stdinClosed = True
            self.transport.closeStdin()

    def signal(self, name: str | int) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


@implementer(IWorkerSource)
class LocalWorkers:
    """Start C{size} workers running C{handler_spec}, and keep that many alive.

    With C{dispatcher} C{None} (a worker host's pool: its workers answer a remote producer),
    give C{stats} and override L{socketArguments}. C{max_requests} (plus a random 0 to
    C{max_requests_jitter}) and C{max_memory} (MB) have a worker ask to be recycled (see
    L{gaspar_tw.workers.recycling}); one over C{max_memory_hard} (MB) is killed. A call whose
    result is over C{max_call_bytes} (0: no limit) fails in its worker, never sent.
    """

    def __init__(
        self,
        reactor,
        handler_spec: str,
        size: int,
        dispatcher: Dispatcher | None,
        pythonpath: Sequence[str] = (),
        stats: Stats | None = None,
        *,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        max_memory: int = 0,
        max_memory_hard: int = 0,
        max_call_bytes: int = 0,
        exact_path: bool = False,
    ) -> None:
        self.reactor = reactor
        #: C{pythonpath} is the workers' whole path (a pool's), not directories to put first
        #: on it (a worker host's).
        self.exact_path = exact_path
        self.max_call_bytes = max_call_bytes
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.max_memory = max_memory
        self.max_memory_hard = max_memory_hard
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
        self._failures: dict[int, int] = {}
        self._respawns: dict[int, object] = {}
        self._readyWaiters: list[Deferred] = []
        self.recycler = Recycler(self)
        self._memorySweep: LoopingCall | None = None

    def start(self, hub: ChannelHub | None) -> None:
        """Start every worker (again, after L{stop}); warn if they crowd the CPUs."""
        self.hub = hub
        self.stopping = False
        self._failures = {}
        crowded = crowding_warning(self.size)
        if crowded:
            log.warn("{warning}", warning=crowded)
        for slot in range(self.size):
            self._spawn(slot)
        if self.max_memory_hard:
            self._memorySweep = LoopingCall(self._checkMemory)
            self._memorySweep.clock = self.reactor
            self._memorySweep.start(HARD_MEMORY_SWEEP_SECONDS, now=False)

    def whenReady(self) -> Deferred:
        """Fires once every slot has a ready worker."""
        if self.readyCount() >= self.size:
            return succeed(None)
        d: Deferred = Deferred()
        self._readyWaiters.append(d)
        return d

    def readyCount(self) -> int:
        return sum(1 for p in self.processes.values() if p.ready and not p.retiring)

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
        elif kind == messages.RETIRE and token in self.processes:
            self.recycler.recycle(token, frames[1].decode("ascii", "replace"))

    # -- reload, recycle, resize -------------------------------------------------------------

    def reload(self) -> bool:
        """Replace every worker, each by a new process that imports the handler anew (see
        L{gaspar_tw.workers.recycling}); C{False} if there is none."""
        return self.recycler.reload()

    def startReplacement(self, old: WorkerProcess) -> WorkerProcess | None:
        """Start a worker to replace C{old}, in its slot (C{None} if it cannot start)."""
        process = self._spawn(old.slot, old)
        if process is not None:
            old.replacedBy = process
        return process

    def retireProcess(self, process: WorkerProcess) -> None:
        """Give C{process} no more work; it exits once it has answered what it holds."""
        process.retiring = True
        if self.dispatcher is not None and process.ready:
            self.dispatcher.retire(process.token)  # its link's drained closes its stdin
        else:
            process.closeStdin()

    def _drained(self, token: int) -> None:
        process = self.processes.get(token)
        if process is not None:
            process.closeStdin()

    def grow(self) -> int:
        """Start one worker more (up to L{MAX_WORKERS}); returns the new size."""
        if self.size >= MAX_WORKERS or self.stopping:
            return self.size
        self.size += 1
        used = {p.slot for p in self.processes.values() if not p.retiring} | set(self._respawns)
        self._spawn(min(set(range(self.size)) - used))
        return self.size

    def shrink(self) -> int:
        """Retire one worker (never the last); returns the new size."""
        if self.size <= 1 or self.stopping:
            return self.size
        self.size -= 1
        if self._respawns:  # a slot waiting to be started again: just don't
            slot = max(self._respawns)
            call = self._respawns.pop(slot)
            if call.active():
                call.cancel()
            return self.size
        busy = set()
        if self.recycler.current is not None:
            busy = {p for p in self.recycler.current[:2] if p is not None}
        candidates = [
            p for p in self.processes.values() if not p.retiring and not p.killed and p not in busy
        ]
        if candidates:
            process = max(candidates, key=lambda p: (p.ready, p.slot))
            log.info(
                "worker {slot} (pid {pid}) is being retired (resize: {n} workers)",
                slot=process.slot,
                pid=process.pid,
                n=self.size,
            )
            self.stats.workerRecycled("resize")
            self.retireProcess(process)
        return self.size

    def _checkMemory(self) -> None:
        """Kill a worker over C{max_memory_hard}: its requests are retried as after a crash."""
        limit = self.max_memory_hard * MEGABYTE
        for process in list(self.processes.values()):
            if process.pid is None or process.killed or not process.ready:
                continue  # (a replacement still loading is not killed: its slot is served)
            size = resident_bytes(process.pid)
            if size > limit:
                log.warn(
                    "worker {slot} (pid {pid}) uses {mb} MB, over --max-memory-hard {limit} MB;"
                    " killing it",
                    slot=process.slot,
                    pid=process.pid,
                    mb=size // MEGABYTE,
                    limit=self.max_memory_hard,
                )
                self.stats.workerRecycled("hard_memory")
                self.kill(process.token, "killed over --max-memory-hard")

    def workerArguments(self) -> list[str]:
        """Each worker's limits, as arguments (its own share of the recycling jitter)."""
        argv = ["--max-call-bytes", str(self.max_call_bytes)] if self.max_call_bytes else []
        if self.max_requests:
            jitter = random.randint(0, self.max_requests_jitter)
            argv += ["--max-requests", str(self.max_requests + jitter)]
        if self.max_memory:
            argv += ["--max-memory", str(self.max_memory)]
        return argv

    # -- starting and ending -----------------------------------------------------------------

    def _spawn(self, slot: int, replaces: WorkerProcess | None = None) -> WorkerProcess | None:
        if replaces is None:
            self._respawns.pop(slot, None)
        token = next(self._tokens)
        process = WorkerProcess(self, slot, token)
        process.replaces = replaces
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
            *self.workerArguments(),
        ]
        flag = "--path" if self.exact_path else "--pythonpath"
        for directory in self.pythonpath:
            argv += [flag, directory]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.processes[token] = process
        try:
            argv += self._runningArguments(process)
            self.reactor.spawnProcess(
                process, sys.executable, argv, env=env, childFDs={0: "w", 1: "r", 2: "r"}
            )
        except Exception as e:  # e.g. OSError EMFILE: out of file descriptors
            del self.processes[token]
            self._closeRunning(process)
            if replaces is not None:
                log.error("cannot start a worker: {error}", error=f"{type(e).__name__}: {e}")
                return None
            delay = self._failedToStart(slot)
            log.error(
                "cannot start worker {slot}: {error}; retrying in {delay:.1f}s",
                slot=slot,
                error=f"{type(e).__name__}: {e}",
                delay=delay,
            )
            self._respawns[slot] = self.reactor.callLater(delay, self._spawn, slot)
            return None
        self.spawned(process)
        return process

    def _failedToStart(self, slot: int) -> float:
        """Count a failure to start a worker in C{slot}; return the wait before the next try."""
        failures = self._failures[slot] = self._failures.get(slot, 0) + 1
        return min(FIRST_RESPAWN_DELAY * 2 ** (failures - 1), MAX_RESPAWN_DELAY)

    def socketArguments(self, token: int) -> list[str]:
        """The worker's command-line arguments saying where its sockets are."""
        return ["--work", self.hub.work_address(token), "--reply", self.hub.reply_address]

    def _runningArguments(self, process: WorkerProcess) -> list[str]:
        """A producer's worker publishes the request it is running in a file of the pool's
        private directory, which the pool maps too (L{gaspar_tw.wire.running}): its
        argument. (A worker host's workers answer a remote producer: none.)"""
        if self.dispatcher is None:
            return []
        path = os.path.join(self.hub.directory, f"running-{process.token}")
        process.running = RunningRequest.create(path)
        return ["--running", path]

    def _closeRunning(self, process: WorkerProcess) -> None:
        """Unmap and remove the file a worker published its running request in, if any."""
        running, process.running = process.running, None
        if running is not None:
            running.close()
            try:
                os.unlink(running.path)
            except OSError:
                pass

    def spawned(self, process: WorkerProcess) -> None:
        """Called after each worker process starts (for subclasses)."""

    def outputBeforeReady(self, process: WorkerProcess, line: str) -> None:
        """A line a worker wrote on stdout before it was ready (for subclasses)."""

    def hello(self, token: int, pid: int) -> None:
        """A worker imported its handler and bound its socket: give it work."""
        process = self.processes.get(token)
        if process is None or process.ready or self.stopping:
            return
        process.ready = True
        process.channel = self.hub.connect_worker(token)
        log.info("worker {slot} ready (pid {pid})", slot=process.slot, pid=pid)
        self.stats.workerReady(token, process.slot, pid)
        process.link = WorkerLink(
            token,
            pid,
            process.channel.send,
            partial(self.kill, token),
            partial(self._drained, token),
            local=True,
            running=None if process.running is None else process.running.get,
        )
        self.dispatcher.workerReady(process.link)
        self.becameReady(process)
        if self.readyCount() >= self.size and self._readyWaiters:
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.callback(None)

    def becameReady(self, process: WorkerProcess) -> None:
        """C{process} has loaded the handler: retire it if it was resized away meanwhile, or
        let the worker it replaces go."""
        if process.retiring:
            self.retireProcess(process)
        elif process.replaces is not None:
            # No longer a replacement that may fail to start (and no chain of every worker
            # it ever replaced kept alive).
            process.replaces = None
            self.recycler.replacementReady(process)

    def _slotServed(self, slot: int) -> bool:
        """Whether a worker that will go on serving C{slot} is running, starting or about
        to be started again (not one being killed or retired)."""
        return slot in self._respawns or any(
            p.slot == slot and not p.killed and not p.retiring for p in self.processes.values()
        )

    def kill(self, token: int, why: str = "given up on", *, stack: bool = True) -> None:
        """Kill a worker the dispatcher gave up on, its stack logged first (C{stack=False}:
        at once, no stack); its replacement starts at once, no backoff (none for a worker
        being retired: it was not to be replaced).

        The worker is sent L{STACK_SIGNAL} (it writes each thread's stack on stderr), then
        SIGKILL after L{STACK_DUMP_SECONDS}; what it wrote meanwhile is logged as one event.
        """
        process = self.processes.get(token)
        if process is None or process.killed:
            return
        process.killed = True
        process.ready = False
        process.killedWhy = why
        replace = not (self.stopping or process.retiring or self._slotServed(process.slot))
        if not stack:
            process.signal("KILL")
            if replace:
                self._spawn(process.slot)
            return
        process.stack = []
        process.signal(STACK_SIGNAL)
        timer = self.reactor.callLater(STACK_DUMP_SECONDS, self._killStuck, process)
        if replace:
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
            "worker {slot} (pid {pid}) {why}{where}: {stack}",
            slot=process.slot,
            pid=process.pid,
            why=process.killedWhy,
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
        self._closeRunning(process)
        if self.stopping:
            return
        self.recycler.exited(process)
        code = getattr(reason.value, "exitCode", None)
        if process.replaces is not None and not process.ready:
            self.recycler.replacementFailed(process, code)
            if not self._slotServed(process.slot):  # the old one is gone, or being killed
                self._respawns[process.slot] = self.reactor.callLater(
                    self._failedToStart(process.slot), self._spawn, process.slot
                )
            return
        if process.retiring:
            log.info("worker {slot} (pid {pid}) retired", slot=process.slot, pid=process.pid)
            return
        if not process.killed and self._slotServed(process.slot):
            log.warn(
                "worker {slot} (pid {pid}) ended unexpectedly; its replacement is starting",
                slot=process.slot,
                pid=process.pid,
            )
            return
        self.restarts += 1
        self.stats.workerRestarted()
        if process.killed:
            log.info(
                "worker {slot} (pid {pid}) killed; its replacement started when it was given up on",
                slot=process.slot,
                pid=process.pid,
            )
            if not self._slotServed(process.slot):  # that replacement has failed since
                self._respawns[process.slot] = self.reactor.callLater(
                    self._failedToStart(process.slot), self._spawn, process.slot
                )
            return
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
        self.dispatcher.failAll(HandlerError(f"worker processes {self.cannotLoad(process)}"))

    def cannotLoad(self, process: WorkerProcess) -> str:
        """C{cannot load handler 'm:f': <the worker's own line>}."""
        why = process.lastError.removeprefix("gaspar_tw worker: ") or "see the log"
        return f"cannot load handler {self.handler_spec!r}: {why}"

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> Deferred:
        """Stop every worker: close its stdin, then SIGTERM after C{grace}, SIGKILL after 2x.

        Fires once every worker process has exited and been reaped (and what it forked
        killed). L{start} starts them again.
        """
        self.stopping = True
        self.recycler.stop()
        if self._memorySweep is not None and self._memorySweep.running:
            self._memorySweep.stop()
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        processes = list(self.processes.values())
        for process in processes:
            process.closeStdin()
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
