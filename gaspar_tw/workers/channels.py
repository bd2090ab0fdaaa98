"""The producer's ZeroMQ sockets, on txZMQ: one PULL for every reply, one PUSH per worker.

This module imports txZMQ, which imports (and so installs) the global reactor: import it
only once a service starts, so that the twistd plugin can be discovered, and
C{twistd --reactor} chosen, without installing the default reactor.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from itertools import count

import zmq
from txzmq import ZmqEndpoint, ZmqEndpointType, ZmqFactory
from txzmq.connection import ZmqConnection

from gaspar_tw.wire import messages
from gaspar_tw.zeromq.multipart import recv_frames, send_frames, waiting

#: Replies are read from the reply socket for at most this long per reactor turn (and at
#: most L{MAX_READS_PER_TURN} messages, L{READ_BYTES_PER_TURN} bytes), so that a stream of
#: replies cannot starve timers and TCP connections: the rest is read on the next turn.
#: Yielding after large replies also lets the requests they set free go out sooner.
READ_SECONDS_PER_TURN = 0.001
MAX_READS_PER_TURN = 64
READ_BYTES_PER_TURN = messages.MESSAGE_BYTES


class ReplyChannel(ZmqConnection):
    """The bound PULL socket every worker answers on; calls C{onMessage(frames)}."""

    socketType = zmq.PULL

    def __init__(self, factory: ZmqFactory, address: str, onMessage: Callable[[list], None]):
        self.onMessage = onMessage
        super().__init__(factory, ZmqEndpoint(ZmqEndpointType.bind, address))

    def doRead(self) -> None:
        # txZMQ's doRead drains the socket in one go; read a bounded number of messages and
        # come back on the next reactor turn if more are waiting (the fd is edge-triggered).
        if self.read_scheduled is not None:
            if not self.read_scheduled.called:
                self.read_scheduled.cancel()
            self.read_scheduled = None
        socket = self.socket
        onMessage = self.onMessage
        clock = time.monotonic
        deadline = clock() + READ_SECONDS_PER_TURN
        size = 0
        for _ in range(MAX_READS_PER_TURN):
            if self.factory is None or not waiting(socket):
                return
            frames = recv_frames(socket)
            onMessage(frames)
            size += sum(map(len, frames))
            if size >= READ_BYTES_PER_TURN or clock() > deadline:
                break
        if self.factory is not None:
            self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)

    def messageReceived(self, message: list) -> None:  # pragma: no cover - doRead bypasses it
        self.onMessage(message)


class WorkChannel(ZmqConnection):
    """A PUSH socket connected to one worker's PULL; C{send(messages)} never blocks."""

    socketType = zmq.PUSH
    reconnectInterval = 10

    def __init__(self, factory: ZmqFactory, address: str):
        super().__init__(factory, ZmqEndpoint(ZmqEndpointType.connect, address))
        self.socket.set(zmq.LINGER, 0)
        self.socket.copy_threshold = messages.ZERO_COPY_BYTES

    def messageReceived(self, message: list) -> None:  # pragma: no cover - PUSH receives nothing
        pass

    def send(self, messages: list[list]) -> None:
        """Send L{gaspar_tw.wire.messages.encode_work}'s messages (large frames without a copy)."""
        socket = self.socket
        for frames in messages:
            send_frames(socket, frames, copy=False)


class MonitorChannel(ZmqConnection):
    """Reads the monitor events of C{watched} (a socket of the same context): calls
    C{onEvent(frames)} for each of C{events}."""

    socketType = zmq.PAIR
    _numbers = count()

    def __init__(
        self, factory: ZmqFactory, watched: zmq.Socket, events: int, onEvent: Callable[[list], None]
    ):
        self.onEvent = onEvent
        address = f"inproc://gaspar-monitor-{next(self._numbers)}"
        watched.monitor(address, events)
        super().__init__(factory, ZmqEndpoint(ZmqEndpointType.connect, address))

    def messageReceived(self, message: list) -> None:
        self.onEvent(message)


class ChannelHub:
    """Owns the ZeroMQ context and a private directory of ipc:// sockets for the workers.

    Its sockets are read on C{reactor} (txZMQ's own default is the global reactor).
    """

    def __init__(self, onMessage: Callable[[list], None], reactor) -> None:
        self.directory = tempfile.mkdtemp(prefix="gaspar-tw-")
        self.factory = ZmqFactory()
        self.factory.reactor = reactor
        self.reply_address = f"ipc://{self.directory}/replies"
        self.replies = ReplyChannel(self.factory, self.reply_address, onMessage)

    def work_address(self, token: int) -> str:
        return f"ipc://{self.directory}/work-{token}"

    def connect_worker(self, token: int) -> WorkChannel:
        return WorkChannel(self.factory, self.work_address(token))

    def forget_worker(self, channel: WorkChannel | None, token: int) -> None:
        """Close a worker's PUSH socket and remove its ipc file."""
        if channel is not None and channel.socket is not None:
            channel.shutdown()
        try:
            os.unlink(os.path.join(self.directory, f"work-{token}"))
        except OSError:
            pass

    def close(self) -> None:
        self.factory.shutdown()
        shutil.rmtree(self.directory, ignore_errors=True)
