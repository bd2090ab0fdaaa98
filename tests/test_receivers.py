"""Dispatcher.submitTo: outcomes delivered to IReplyReceivers (the protocols' path)."""

from __future__ import annotations

import pytest_twisted
from conftest import pid_alive
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gaspar_tw import Producer
from gaspar_tw.dispatch import IReplyReceiver
from gaspar_tw.errors import Overloaded
from gaspar_tw.server.framed import FramedProtocol
from gaspar_tw.server.gaspar import GasparProtocol


@implementer(IReplyReceiver)
class Receiver:
    """Fires C{done} with the outcome; C{explode} makes replyReceived raise first."""

    def __init__(self, explode: bool = False) -> None:
        self.explode = explode
        self.done: Deferred = Deferred()

    def replyReceived(self, rid: int, reply: bytes) -> None:
        self.done.callback(("reply", rid, reply))
        if self.explode:
            raise RuntimeError("a receiver with a bug")

    def requestFailed(self, rid: int, reason: Exception) -> None:
        self.done.callback(("failed", rid, reason))


def test_the_protocols_are_reply_receivers():
    assert verifyObject(IReplyReceiver, GasparProtocol())
    assert verifyObject(IReplyReceiver, FramedProtocol())


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_raises_costs_no_other_request_its_reply():
    producer = Producer("gaspar_tw.examples:echo", None, 1, max_pending=6)
    producer.privilegedStartService()
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        dispatcher = producer.dispatcher
        receivers = [Receiver(explode=i % 2 == 0) for i in range(6)]
        # Submitted in one reactor turn: one message to the worker, one batch of replies.
        rids = [dispatcher.submitTo(b"m%d" % i, r) for i, r in enumerate(receivers)]
        refused = Receiver()
        assert dispatcher.submitTo(b"over", refused) == 0  # max_pending: refused at once
        kind, rid, reason = refused.done.result
        assert (kind, rid) == ("failed", 0) and isinstance(reason, Overloaded)
        outcomes = await gatherResults([r.done for r in receivers]).addTimeout(10, reactor)
        assert outcomes == [("reply", rid, b"m%d" % i) for i, rid in enumerate(rids)]
        assert dispatcher.pending == 0
        assert await producer.submit(b"still serving") == b"still serving"
    finally:
        pids = producer.workerPids()
        await producer.stopService()
        assert not any(pid_alive(pid) for pid in pids)


@pytest_twisted.ensureDeferred
async def test_a_cancelled_request_never_reaches_its_receiver():
    producer = Producer("gaspar_tw.examples:echo", None, 1)
    producer.privilegedStartService()
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        dispatcher = producer.dispatcher
        dropped, kept = Receiver(), Receiver()
        dispatcher.cancel(dispatcher.submitTo(b"dropped", dropped))
        kept_rid = dispatcher.submitTo(b"kept", kept)
        assert await kept.done.addTimeout(10, reactor) == ("reply", kept_rid, b"kept")
        assert not dropped.done.called and dispatcher.pending == 0
    finally:
        await producer.stopService()
