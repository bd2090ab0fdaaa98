"""Remote workers: a bound ROUTER socket that worker hosts connect to, with heartbeats.

Each remote worker process connects a DEALER (see L{gaspar_tw.worker.relay}), says hello and
becomes a L{WorkerLink} like a local worker: the dispatcher's per-worker window balances
load by readiness. A worker that disconnects or stays silent for L{HEARTBEAT_MISSES}
heartbeats is lost (its requests are retried or failed like a crashed worker's).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from functools import partial
from itertools import count

import zmq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from gaspar_tw.addresses import cannot, zmq_tcp_address
from gaspar_tw.dispatch import Dispatcher, WorkerLink
from gaspar_tw.errors import ListenError
from gaspar_tw.stats import Stats
from gaspar_tw.wire import messages
from gaspar_tw.wire.control import BYE, DONE, HEARTBEAT_MISSES, HEARTBEAT_SECONDS, KILL, PING, WHO
from gaspar_tw.workers.channels import ChannelHub, MonitorChannel, ReplyChannel
from gaspar_tw.workers.source import IWorkerSource, WorkerInfo
from gaspar_tw.zeromq.curve import HANDSHAKE_FAILED, HandshakeFailures
from gaspar_tw.zeromq.exposure import is_exposed, is_loopback
from gaspar_tw.zeromq.ipv6 import is_ipv6

log = Logger()

#: Remote workers' tokens start here, far from the local pool's.
FIRST_TOKEN = 1 << 32
#: Replies from a worker not (or no longer) known go to the dispatcher under this token.
UNKNOWN_TOKEN = 0


class RouterChannel(ReplyChannel):
    """The bound ROUTER socket: messages arrive as C{[identity, *frames]}."""

    socketType = zmq.ROUTER

    def __init__(self, factory, address, onMessage, curve_keys: str | None = None) -> None:
        self.curve_keys = curve_keys
        super().__init__(factory, address, onMessage)

    def addEndpoints(self, endpoints) -> None:
        # Options that must be set before the socket binds.
        self.socket.set(zmq.ROUTER_MANDATORY, 1)  # sending to a gone worker raises
        self.socket.set(zmq.LINGER, 0)
        self.socket.copy_threshold = messages.ZERO_COPY_BYTES
        self.socket.ipv6 = any(is_ipv6(endpoint.address) for endpoint in endpoints)
        if self.curve_keys:
            from gaspar_tw.zeromq.curve import server_options

            server_options(self.socket, self.curve_keys)
        try:
            super().addEndpoints(endpoints)
        except zmq.ZMQError:
            self.socket.close()  # not the factory's yet: left open, it would hang its shutdown
            raise

    @property
    def boundAddress(self) -> str:
        return self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()

    def sendTo(self, identity: bytes, messages: list[list]) -> None:
        """Send messages to one worker without blocking (raises if it is gone or full)."""
        send = self.socket.send_multipart
        try:
            for frames in messages:
                send([identity, *frames], zmq.NOBLOCK, copy=False)
        finally:
            # The ZeroMQ fd is edge-triggered and shared by sends and receives: after a send,
            # replies already waiting would not wake the reactor, so read on the next turn.
            if self.read_scheduled is None and self.factory is not None:
                self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)


@dataclass(eq=False)
class _Remote:
    token: int
    pid: int
    host: str
    heard: float


@implementer(IWorkerSource)
class RemoteWorkers:
    """Accept remote workers on C{address} and give them to C{dispatcher}."""

    def __init__(
        self,
        reactor,
        dispatcher: Dispatcher,
        address: str,
        stats: Stats | None = None,
        curve_keys: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.dispatcher = dispatcher
        self.stats = dispatcher.stats if stats is None else stats
        self.address = address
        self.curve_keys = curve_keys
        self.remotes: dict[bytes, _Remote] = {}
        self.channel: RouterChannel | None = None
        self.boundAddress: str | None = None
        self._tokens = count(FIRST_TOKEN)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        self._auth = None
        self._handshakes = None
        #: Anyone who reaches C{address} may join: never read a pickle from there (see
        #: L{_callOutcomesRefused}).
        self.exposed = is_exposed(address, curve_keys)
        self._saidOutcomesRefused = False

    def start(self, hub: ChannelHub) -> None:
        """Bind (on C{hub}'s ZeroMQ context); C{boundAddress} is then the address bound,
        port included. An address that cannot be bound is a L{ListenError}."""
        factory = hub.factory
        if self.curve_keys:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(factory.context)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=self.curve_keys)
        elif not is_loopback(self.address):
            log.warn(
                "remote workers' socket {address} is not loopback and has no --curve-keys:"
                " anyone who can reach it can take and answer requests; keep it on a private"
                " network",
                address=self.address,
            )
        try:
            self.channel = RouterChannel(factory, self.address, self._onMessage, self.curve_keys)
        except zmq.ZMQError as e:
            self.stop()
            error = OSError(e.errno, zmq.strerror(e.errno))  # e's text names the address too
            address = zmq_tcp_address(self.address)
            raise ListenError(cannot("bind", self.address, error, address)) from e
        self.boundAddress = self.channel.boundAddress
        failures = HandshakeFailures(
            lambda why: log.warn(
                "a remote worker failed the CURVE handshake on {address}: {why}",
                address=self.boundAddress,
                why=why,
            ),
            self.reactor.seconds,
        )
        self._handshakes = MonitorChannel(
            factory, self.channel.socket, HANDSHAKE_FAILED, failures.event
        )
        log.info(
            "gaspar_tw: remote workers connect to {address}{curve}",
            address=self.boundAddress,
            curve=" (CURVE)" if self.curve_keys else "",
        )
        self._heartbeat.start(HEARTBEAT_SECONDS, now=False)

    def whenReady(self) -> Deferred:
        """Remote workers come when they come: nothing to wait for."""
        return succeed(None)

    def stop(self, grace: float = 0.0) -> Deferred:
        """Forget every remote worker and close the socket (their hosts stop them)."""
        if self._heartbeat.running:
            self._heartbeat.stop()
        for identity in list(self.remotes):
            # Gone with this socket: the dispatcher must not send to them after a restart.
            self._end(identity, log.info, "is forgotten: the producer stopped")
        if self._handshakes is not None:
            self._handshakes.shutdown()
            self._handshakes = None
        if self.channel is not None and self.channel.socket is not None:
            self.channel.shutdown()
        self.channel = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        return succeed(None)

    def pids(self) -> list[int]:
        return [remote.pid for remote in self.remotes.values()]

    def workers(self) -> list[WorkerInfo]:
        infos = []
        for remote in sorted(self.remotes.values(), key=lambda r: (r.host, r.pid)):
            worker = self.stats.workers.get(remote.token)
            served = 0 if worker is None else worker.served
            readyAt = None if worker is None else worker.ready_at
            infos.append(WorkerInfo(remote.host, remote.pid, None, served, readyAt))
        return infos

    # -- messages --------------------------------------------------------------------------

    def _onMessage(self, frames: list) -> None:
        if len(frames) < 2:
            return
        identity, head = frames[0], frames[1]
        remote = self.remotes.get(identity)
        kind = head[:1]
        if remote is not None:
            remote.heard = self.reactor.seconds()
        if kind == messages.REPLIES and len(frames) >= 3:
            if self.exposed and messages.is_mixed_replies(head):
                self._callOutcomesRefused(identity, remote)
                return
            token = UNKNOWN_TOKEN if remote is None else remote.token
            self.dispatcher.repliesMessage(token, frames[1:])
        elif kind == messages.HELLO and len(frames) >= 5:
            if remote is None:
                self._hello(identity, frames[2:])
            return
        elif head == BYE:
            if remote is not None:
                log.info(
                    "remote worker pid {pid} on {host} is stopping; it gets no more work",
                    pid=remote.pid,
                    host=remote.host,
                )
                self.dispatcher.retire(remote.token)
            return
        elif head != PING:
            self.stats.badInput()
            log.warn("remote worker sent a message of unknown kind {kind!r}", kind=kind)
        if remote is None:
            self._sendControl(identity, WHO)

    def _callOutcomesRefused(self, identity: bytes, remote: _Remote | None) -> None:
        """Replies that may carry calls' outcomes came over an exposed address, which is
        never sent calls: drop them unread (an outcome is a pickle, which runs code where it
        is read); a worker that sent them is treated as lost, its requests retried."""
        self.stats.badInput()
        if not self._saidOutcomesRefused:
            self._saidOutcomesRefused = True
            log.warn(
                "a remote worker on {address} sent what may be calls' outcomes (pickles),"
                " though calls never go there (neither loopback nor CURVE-protected);"
                " dropped unread",
                address=self.boundAddress,
            )
        if remote is not None:
            self._lost(identity, "sent calls' outcomes it was never asked for")

    def _hello(self, identity: bytes, frames: list) -> None:
        try:
            pid, capacity, host = int(frames[0]), int(frames[1]), frames[2].decode()
        except (ValueError, UnicodeDecodeError):
            self.stats.badInput()
            log.warn("remote worker sent a malformed hello; ignored")
            return
        token = next(self._tokens)
        self.remotes[identity] = _Remote(token, pid, host, self.reactor.seconds())
        log.info(
            "remote worker ready (pid {pid} on {host}, capacity {capacity})",
            pid=pid,
            host=host,
            capacity=capacity,
        )
        # Remote workers have no pool slot: negative numbers keep their stats apart.
        self.stats.workerReady(token, FIRST_TOKEN - 1 - token, pid)
        link = WorkerLink(
            token,
            pid,
            partial(self._send, identity),
            partial(self._kill, identity),
            partial(self._retired, identity),
        )
        self.dispatcher.workerReady(link)

    def _send(self, identity: bytes, messages: list[list]) -> None:
        self.channel.sendTo(identity, messages)

    def _sendControl(self, identity: bytes, kind: bytes) -> bool:
        """Send a one-frame control message; C{False} if the worker is disconnected."""
        if self.channel is None:
            return False
        try:
            self.channel.sendTo(identity, [[kind]])
        except zmq.ZMQError as e:
            return e.errno != errno.EHOSTUNREACH
        return True

    # -- liveness --------------------------------------------------------------------------

    def _beat(self) -> None:
        now = self.reactor.seconds()
        limit = HEARTBEAT_SECONDS * HEARTBEAT_MISSES
        for identity, remote in list(self.remotes.items()):
            if now - remote.heard > limit:
                self._lost(identity, f"was silent for {now - remote.heard:.1f}s")
            elif not self._sendControl(identity, PING):
                self._lost(identity, "disconnected")

    def _lost(self, identity: bytes, why: str) -> None:
        self._end(identity, log.warn, "{why}; treating it as lost", why=why)

    def _retired(self, identity: bytes) -> None:
        """A stopping worker answered all it held: tell it to go, and forget it."""
        if self._end(identity, log.info, "answered all it held; it may stop") is not None:
            self._sendControl(identity, DONE)

    def _end(self, identity: bytes, emit, text: str, **fields) -> _Remote | None:
        """Forget a remote worker, say why, and take it from the dispatcher, which retries or
        fails whatever it still held (nothing, for a retired one)."""
        remote = self._forget(identity)
        if remote is not None:
            emit(
                "remote worker pid {pid} on {host} " + text,
                pid=remote.pid,
                host=remote.host,
                **fields,
            )
            self.dispatcher.workerLost(remote.token)
        return remote

    def _kill(self, identity: bytes, *, stack: bool = True) -> None:
        """The dispatcher gave up on this worker (--timeout, or the call it ran was cancelled):
        tell it to exit (its host starts another; C{stack} changes nothing: a remote worker
        writes its stack to its host's log either way), forget it."""
        if self._forget(identity) is not None:
            self._sendControl(identity, KILL)

    def _forget(self, identity: bytes) -> _Remote | None:
        remote = self.remotes.pop(identity, None)
        if remote is not None:
            self.stats.workerEnded(remote.token)
        return remote
