"""The worker loop: receive batches of requests over ZeroMQ, run the handler, send replies.

Plain blocking pyzmq, no reactor (L{gaspar_tw.worker.__main__} starts it). The loop ends
when its standard input closes (the producer is gone).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections import deque
from functools import partial

import zmq

from gaspar_tw.handler import Handler
from gaspar_tw.wire import messages
from gaspar_tw.wire.calls import CallFrames, run_call
from gaspar_tw.wire.control import STOP_GRACE_SECONDS, resident_bytes
from gaspar_tw.wire.failures import encode_error
from gaspar_tw.wire.running import RunningRequest
from gaspar_tw.zeromq.multipart import BLOCK, recv_frames, send_frames, waiting

#: Replies computed for longer than this are sent without waiting for the rest of the batch.
FLUSH_AFTER_SECONDS = 0.001
#: A worker busy with a batch reads what has arrived (cancels, more work) before a request
#: once this long has passed since it last looked: a slow handler's next request is checked
#: every time, a fast handler's batch costs no extra socket call per request.
LOOK_AFTER_SECONDS = 0.001
#: A worker that asked to retire (L{Worker.retire}) stops after this long without the word to
#: go: before its worker host's SIGTERM.
RETIRE_SECONDS = STOP_GRACE_SECONDS - 0.5
#: A worker with a memory limit reads its size after a batch at most this often.
MEMORY_CHECK_SECONDS = 0.1


def call_handler(handler: Handler, payload: bytes) -> tuple[int, bytes]:
    """Run the handler on one request; return (status, reply or encoded error)."""
    try:
        result = handler(payload)
        if isinstance(result, bytes):
            return messages.OK, result
        if isinstance(result, str):
            return messages.OK, result.encode("utf-8")
        if isinstance(result, (bytearray, memoryview)):
            return messages.OK, bytes(result)
        raise TypeError(f"handler returned {type(result).__name__}, expected bytes or str")
    except Exception as e:
        return messages.ERROR, encode_error(e, traceback.format_exc())


def call_handler_or_run_call(
    handler: Handler, payload, max_call_bytes: int = 0
) -> tuple[int, object]:
    """A mixed message's request: run the call it is (its result at most C{max_call_bytes},
    0 for no limit), or the handler on it."""
    if type(payload) is CallFrames:
        return run_call(payload, max_call_bytes)
    return call_handler(handler, payload)


class _Held:
    """Replies computed and not yet sent."""

    __slots__ = ("ids", "statuses", "results", "size", "busy")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.statuses = bytearray()
        self.results: list[bytes] = []
        self.size = 0
        self.busy = 0.0

    def add(self, rid: int, status: int, result: bytes, seconds: float) -> None:
        self.ids.append(rid)
        self.statuses.append(status)
        self.results.append(result)
        self.size += len(result)
        self.busy += seconds


class Worker:
    """The loop of one worker process."""

    def __init__(
        self,
        handler: Handler,
        token: int,
        work_address: str,
        reply_address: str,
        max_requests: int = 0,
        max_memory: int = 0,
        max_call_bytes: int = 0,
        running_path: str | None = None,
    ):
        self.handler = handler
        self.token = token
        #: Ask to be recycled after this many requests (0: never) ...
        self.max_requests = max_requests
        #: ... or once resident memory is over this many bytes after a batch (0: never).
        self.max_memory = max_memory
        self.requests = 0
        self._memoryCheckedAt = 0.0
        self._retireAsked = False
        self.context = zmq.Context(1)
        self.work, self.replies = self.openSockets(work_address, reply_address)
        self._held = _Held()
        self._inbox: deque[list] = deque()  # messages read ahead of the batch being answered
        self._cancelled: set[int] = set()  # ids to skip, read ahead of the batch
        self._running = False  # a handler call is in progress
        self._alarm = False  # the flush timer is armed
        #: Plain replies until this worker is sent a call (no per-reply check before that).
        self._encodeReplies = messages.encode_replies
        #: How a mixed message's requests are run: a call whose result is larger than
        #: C{max_call_bytes} (pickled; 0: no limit) fails instead of being sent (a remote
        #: worker may refuse calls instead: see L{gaspar_tw.worker.relay}).
        self._runCall = partial(call_handler_or_run_call, max_call_bytes=max_call_bytes)
        self.runMixed = self._runGuarded
        #: Where the id of the mixed message's request being run is published for the
        #: producer (L{gaspar_tw.wire.running}): a local worker's, C{None} for a remote one.
        self.runningRequest = None if running_path is None else RunningRequest(running_path)
        self._alarmHandler = self._onAlarm
        signal.signal(signal.SIGALRM, self._alarmHandler)

    def openSockets(self, work_address: str, reply_address: str) -> tuple[zmq.Socket, zmq.Socket]:
        """The PULL socket work arrives on (bound) and the PUSH replies go to (connected)."""
        work = self.context.socket(zmq.PULL)
        work.setsockopt(zmq.LINGER, 0)
        work.bind(work_address)
        replies = self.context.socket(zmq.PUSH)
        replies.setsockopt(zmq.LINGER, 2000)
        replies.copy_threshold = messages.ZERO_COPY_BYTES
        replies.connect(reply_address)
        return work, replies

    def serve(self) -> None:
        """Announce readiness, then answer batches until stdin closes."""
        self.replies.send_multipart(messages.encode_hello(self.token, os.getpid()))
        poller = zmq.Poller()
        poller.register(self.work, zmq.POLLIN)
        stdin = sys.stdin.fileno()
        poller.register(stdin, zmq.POLLIN)
        deadline = None
        while True:
            # Sleep until work arrives or the producer closes our stdin. (answer() returns
            # once the work socket is empty, so trying it before polling would only fail.)
            wait = None if deadline is None else max(0, deadline - time.monotonic()) * 1000
            for socket, _ in poller.poll(wait):
                if socket == stdin and not os.read(stdin, 4096):
                    if not self.retire():
                        return
                    poller.unregister(stdin)
                    deadline = time.monotonic() + RETIRE_SECONDS
            if deadline is not None and time.monotonic() >= deadline:
                return
            frames = self._next()
            if frames is not None and self.answer(frames):
                return  # told to stop (a remote worker whose producer said it is done)

    def retire(self) -> bool:
        """Stdin closed: C{False} to stop now; C{True} to keep serving until told to stop
        (what a remote worker does, so the producer can take back nothing mid-request)."""
        return False

    def answer(self, frames: list) -> bool:
        """Answer a batch, and any batch already waiting behind it, in few reply messages.

        Returns C{True} if a stop cue (L{messages.STOP}, see L{retire}) came behind them. A
        request cancelled before it starts is skipped (answered L{messages.SKIPPED}): the worker
        reads what has arrived at most every L{LOOK_AFTER_SECONDS}, before a request.

        Replies are held while more work is at hand, and go out once the oldest is
        L{FLUSH_AFTER_SECONDS} old, they reach L{messages.MESSAGE_BYTES}, or no work is left: a
        fast handler's replies to several batches share one message. A handler call never
        keeps earlier replies waiting: if it runs past L{FLUSH_AFTER_SECONDS} while replies
        are held, a timer (SIGALRM) sends them, so the producer knows which request a worker
        is running (what C{--timeout} and cancelling a call rely on). The timer cannot fire
        inside one long C call (numpy, zlib): a local worker also publishes the id of the
        request of a mixed message (one with calls) it runs (L{gaspar_tw.wire.running});
        a plain message's requests pay nothing for it.
        """
        handler = self.handler
        clock = time.monotonic
        cancelled = self._cancelled
        oldest = 0.0
        now = looked = clock()
        while frames is not None:
            if len(frames) == 1:  # a stop cue behind the work: answered all, now stop
                self.flush()
                return True
            if messages.is_mixed_work(frames):  # calls: one check a message, not a request
                ids, payloads = messages.decode_mixed_work(frames)
                run = self.runMixed
                if self.runningRequest is not None:  # each request with its id, to publish it
                    payloads = zip(ids, payloads, strict=True)
                    run = self._runPublished
                self._encodeReplies = messages.encode_mixed_replies
            else:
                ids, payloads = messages.decode_work(frames)
                run = call_handler
            self.requests += len(ids)
            for rid, payload in zip(ids, payloads, strict=False):
                if now - looked >= LOOK_AFTER_SECONDS:
                    looked = now
                    self._look()
                if cancelled and rid in cancelled:
                    cancelled.discard(rid)
                    if not self._held.ids:
                        oldest = now
                    self._held.add(rid, messages.SKIPPED, b"", 0.0)
                    continue
                if self._held.ids and not self._alarm:
                    self._alarm = True
                    signal.setitimer(signal.ITIMER_REAL, FLUSH_AFTER_SECONDS)
                started = clock()
                self._running = True
                status, result = run(handler, payload)
                self._running = False
                now = clock()
                held = self._held  # the timer may have sent and replaced it meanwhile
                if not held.ids:
                    oldest = started
                held.add(rid, status, result, now - started)
                if held.size >= messages.MESSAGE_BYTES or now - oldest > FLUSH_AFTER_SECONDS:
                    self.flush()
            if (self.max_requests or self.max_memory) and not self._retireAsked:
                self._checkLimits(now)
            frames = self._next()
        cancelled.clear()  # every request is answered: what is left came too late
        self.flush()
        return False

    def _runPublished(self, handler: Handler, request: tuple) -> tuple[int, object]:
        """Run a mixed message's C{(rid, payload)}, its id published while it runs."""
        rid, payload = request
        slot = self.runningRequest.slot
        slot[0] = rid
        try:
            return self.runMixed(handler, payload)
        finally:
            slot[0] = 0

    def _checkLimits(self, now: float) -> None:
        """After a work message: past C{max_requests} or C{max_memory}, ask the producer to recycle
        this worker (it keeps serving until its replacement is ready and it is retired)."""
        reason = ""
        if self.max_requests and self.requests >= self.max_requests:
            reason = "max_requests"
        elif self.max_memory and now - self._memoryCheckedAt >= MEMORY_CHECK_SECONDS:
            self._memoryCheckedAt = now
            if resident_bytes() > self.max_memory:
                reason = "max_memory"
        if reason:
            self._retireAsked = True
            self.replies.send_multipart(messages.encode_retire(self.token, reason))

    def _look(self) -> None:
        """Read the messages waiting: note cancels now, keep work (and a stop) for later."""
        work = self.work
        while waiting(work):
            frames = recv_frames(work)
            if len(frames) == 1 and frames[0][:1] == messages.CANCEL:
                self._cancelled.update(messages.decode_cancel(frames[0]))
            else:
                self._inbox.append(frames)

    def _next(self) -> list | None:
        """The next work message (or stop cue), or C{None} if none has arrived."""
        if not self._inbox:
            self._look()
        return self._inbox.popleft() if self._inbox else None

    def flush(self) -> None:
        """Send the held replies, if any, and disarm the timer."""
        if self._alarm:
            self._alarm = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        held = self._held
        if held.ids:
            send_frames(
                self.replies,
                self._encodeReplies(
                    self.token, held.ids, bytes(held.statuses), held.results, held.busy
                ),
                copy=False,
                flags=BLOCK,
            )
            self._held = _Held()

    def _runGuarded(self, handler: Handler, payload) -> tuple[int, object]:
        """Run a mixed message's request; then take SIGALRM back if a called function took
        it (a timeout decorator's handler, or alarm(0), would silence the flush timer)."""
        outcome = self._runCall(handler, payload)
        if signal.getsignal(signal.SIGALRM) is not self._alarmHandler:
            signal.signal(signal.SIGALRM, self._alarmHandler)
            if self._alarm:
                signal.setitimer(signal.ITIMER_REAL, FLUSH_AFTER_SECONDS)
        elif self._alarm and not signal.getitimer(signal.ITIMER_REAL)[0]:
            signal.setitimer(signal.ITIMER_REAL, FLUSH_AFTER_SECONDS)  # disarmed by alarm(0)
        return outcome

    def _onAlarm(self, signum, frame) -> None:
        # Runs between bytecodes of the handler (or of the loop around it): only send when
        # the handler is running, so that the held replies are never half-updated.
        self._alarm = False
        if self._running:
            self.flush()

    def close(self) -> None:
        self.work.close()
        self.replies.close()
        self.context.term()
        if self.runningRequest is not None:
            self.runningRequest.close()
