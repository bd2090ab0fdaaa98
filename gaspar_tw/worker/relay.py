"""A remote worker's link to its producer: a thread owns the DEALER socket and heartbeats.

The worker loop (L{gaspar_tw.worker.loop.Worker}) runs unchanged on in-process sockets; a relay
thread forwards work from the producer to it and its replies back, pings the producer every
L{HEARTBEAT_SECONDS} (even while a handler runs) and, after L{HEARTBEAT_MISSES} silent
intervals, connects afresh and says hello again. Nothing here imports Twisted.

Work and its cancels are forwarded to the worker loop in order; the control words of
L{gaspar_tw.wire.control} are answered here (a L{BYE} is sent when the worker host stops
this worker, and it exits on L{DONE}: no request is cut short or run twice). A remote hello
is C{[b"H" + token, pid, capacity, hostname]}. If the relay thread fails, the worker process
exits (L{gaspar_tw.worker.crash}) and its worker host starts another.

A worker told to refuse calls (its host connects over an address that is neither loopback
nor CURVE-protected) never unpickles one: it answers each with an error, and still serves
the bytes requests beside it.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
import threading
import time
from itertools import count

import zmq

from gaspar_tw.handler import Handler
from gaspar_tw.wire import messages
from gaspar_tw.wire.calls import CallFrames
from gaspar_tw.wire.control import (
    BYE,
    CONNECTING,
    DONE,
    EXIT_GIVEN_UP,
    HEARTBEAT_MISSES,
    HEARTBEAT_SECONDS,
    KILL,
    PING,
    WHO,
)
from gaspar_tw.wire.failures import encode_error
from gaspar_tw.worker.crash import crashed
from gaspar_tw.worker.loop import Worker, call_handler
from gaspar_tw.zeromq.curve import HANDSHAKE_FAILED, HandshakeFailures
from gaspar_tw.zeromq.ipv6 import is_ipv6

_WORK = "inproc://gaspar-work"
_REPLIES = "inproc://gaspar-replies"
_monitors = count()


def _say(text: str) -> None:
    print(f"gaspar_tw worker: {text}", flush=True)


class RemoteWorker(Worker):
    """A worker process answering a producer at C{address} (its C{--bind}) over a relay;
    with C{refuse_calls}, it answers calls with an error instead of unpickling them."""

    def __init__(
        self,
        handler: Handler,
        token: int,
        address: str,
        curve_keys: str | None = None,
        refuse_calls: bool = False,
    ) -> None:
        self.address = address
        self.curve_keys = curve_keys
        super().__init__(handler, token, _WORK, _REPLIES)
        self._refusedCalls = 0
        if refuse_calls:
            self.runMixed = self._refuseCalls

    def _refuseCalls(self, handler: Handler, payload) -> tuple[int, bytes]:
        """A mixed message's request: the handler runs a bytes request; a call is answered
        with an error, unread (the first one is logged)."""
        if type(payload) is not CallFrames:
            return call_handler(handler, payload)
        self._refusedCalls += 1
        why = (
            f"a worker host refused to run the call: it reaches its producer at {self.address},"
            f" which is neither loopback nor CURVE-protected, and a pickled call runs code"
            f" wherever it is read; give the producer and its worker hosts --curve-keys"
        )
        if self._refusedCalls == 1:
            _say(f"pid {os.getpid()} answers calls with an error, unread: {why}")
        return messages.ERROR, encode_error(ValueError(why), "")

    def openSockets(self, work_address: str, reply_address: str):
        relayReplies = self.context.socket(zmq.PULL)
        relayReplies.bind(reply_address)
        work, replies = super().openSockets(work_address, reply_address)
        relayWork = self.context.socket(zmq.PUSH)
        relayWork.setsockopt(zmq.LINGER, 0)
        relayWork.connect(work_address)
        self.relay = Relay(self.context, self.address, relayWork, relayReplies, self.curve_keys)
        self.relay.start()
        return work, replies

    def retire(self) -> bool:
        """Tell the producer we are stopping; keep serving until it answers L{DONE}."""
        self.relay.retiring.set()
        return True

    def close(self) -> None:
        self.relay.stop()
        self.replies.setsockopt(zmq.LINGER, 0)
        super().close()


class Relay(threading.Thread):
    """Forward between the producer's ROUTER and the worker loop; keep both sides told."""

    def __init__(self, context, address, work, replies, curve_keys=None) -> None:
        super().__init__(name="gaspar-relay", daemon=True)
        self.context = context
        self.address = address
        self.work = work  # PUSH to the worker loop
        self.replies = replies  # PULL from the worker loop
        self.curve_keys = curve_keys
        self._stopping = threading.Event()
        self._handshakes = HandshakeFailures(
            lambda why: _say(f"the CURVE handshake with the producer at {address} failed: {why}")
        )
        self._monitor: zmq.Socket | None = None
        #: Set by the worker loop when its host stops it: say L{BYE}, await L{DONE}.
        self.retiring = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def _dealer(self, poller: zmq.Poller) -> zmq.Socket:
        """A new DEALER to the producer, polled, with a monitor of its handshakes."""
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.copy_threshold = messages.ZERO_COPY_BYTES
        dealer.ipv6 = is_ipv6(self.address)
        if self.curve_keys:
            from gaspar_tw.zeromq.curve import client_options

            client_options(dealer, self.curve_keys)
        self._monitor = dealer.get_monitor_socket(
            HANDSHAKE_FAILED, f"inproc://gaspar-relay-monitor-{next(_monitors)}"
        )
        poller.register(dealer, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        dealer.connect(self.address)
        return dealer

    def _closeDealer(self, poller: zmq.Poller, dealer: zmq.Socket) -> None:
        poller.unregister(dealer)
        poller.unregister(self._monitor)
        dealer.disable_monitor()
        self._monitor.close()
        dealer.close()

    def _readMonitor(self) -> None:
        while True:
            try:
                self._handshakes.event(self._monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return

    def run(self) -> None:
        try:
            self._relay()
        except BaseException as e:  # the worker loop waits on us: without us it would idle
            crashed(f"the relay to the producer at {self.address}", e)

    def _relay(self) -> None:
        clock = time.monotonic
        poller = zmq.Poller()
        poller.register(self.replies, zmq.POLLIN)
        dealer = self._dealer(poller)
        hello = None
        heard = next_ping = clock()
        word = None  # the producer's last word (unlike heard, not reset when reconnecting)
        silence = HEARTBEAT_SECONDS * HEARTBEAT_MISSES
        byeSent = cued = False
        while not self._stopping.is_set():
            if self.retiring.is_set():
                if not byeSent and hello is not None:
                    byeSent = _send(dealer, [BYE])
                if not cued and (word is None or clock() - word > silence):
                    cued = True
                    self.work.send(DONE)  # no producer to hand back to: stop now
            wait = min(max(next_ping - clock(), 0.0), 0.25)
            events = dict(poller.poll(wait * 1000))
            if self.replies in events:
                hello = self._forwardReplies(dealer, hello)
            if dealer in events:
                heard = word = clock()
                self._forwardWork(dealer, hello)
            if self._monitor in events:
                self._readMonitor()
            now = clock()
            if hello is None or now < next_ping:
                continue
            next_ping = now + HEARTBEAT_SECONDS
            if now - heard > silence:
                _say(
                    f"no word from the producer at {self.address} for {now - heard:.1f}s;"
                    " connecting again"
                )
                self._closeDealer(poller, dealer)
                dealer = self._dealer(poller)
                heard = now
                _send(dealer, hello)
            else:
                _send(dealer, [PING])
        self._closeDealer(poller, dealer)
        self.work.close()
        self.replies.close()

    def _forwardReplies(self, dealer: zmq.Socket, hello):
        while True:
            try:
                frames = self.replies.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return hello
            if frames[0].bytes[:1] == messages.HELLO:
                hello = [frames[0].bytes, frames[1].bytes, b"1", socket.gethostname().encode()]
                _say(f"pid {os.getpid()} {CONNECTING} {self.address}")
                frames = hello
            if not _send(dealer, frames):
                _say("the producer is not taking replies (high-water mark); dropped some")

    def _forwardWork(self, dealer: zmq.Socket, hello) -> None:
        while True:
            try:
                frames = dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) > 1:
                self.work.send_multipart(frames, copy=False)
                continue
            kind = frames[0].bytes
            if kind == WHO and hello is not None and not self.retiring.is_set():
                _send(dealer, hello)  # (a retiring worker does not join again)
            elif kind == KILL:
                _say(
                    "the producer gave up on this worker (--timeout, or its call was cancelled);"
                    " its stack, then exiting:"
                )
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                os._exit(EXIT_GIVEN_UP)
            elif kind == DONE:
                self.work.send(DONE)  # one frame: the worker loop's cue to stop
            elif kind[:1] == messages.CANCEL:
                self.work.send(frames[0], copy=False)


def _send(dealer: zmq.Socket, frames) -> bool:
    try:
        dealer.send_multipart(frames, zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True
