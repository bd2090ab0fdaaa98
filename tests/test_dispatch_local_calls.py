"""Calls kept on local workers (an exposed bind): every place the scheduler moves requests.

A real L{Dispatcher} on a L{Clock}, with fake worker links, local and remote, that record
which requests they are sent: calls and bytes requests apart.
"""

from __future__ import annotations

import pytest
from dispatch_fakes import Outcomes, answer, tick
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from gaspar_tw.dispatch import Dispatcher, WorkerLink
from gaspar_tw.errors import RequestTimeout, ServiceStopped
from gaspar_tw.wire import messages as wire
from gaspar_tw.wire.calls import CallFrames


class Far:
    """The far end of one link: the calls and bytes requests it was sent, in batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.calls: list[int] = []
        self.requests: list[int] = []
        self.killed = 0
        self.failing = False

    def send(self, messages: list[list]) -> None:
        if self.failing:
            raise OSError("gone")
        for frames in messages:
            if len(frames) == 1:
                continue  # a cancel
            if wire.is_mixed_work(frames):
                ids, payloads = wire.decode_mixed_work(frames)
            else:
                ids, payloads = wire.decode_work(frames)
            self.batches.append(list(ids))
            for rid, payload in zip(ids, payloads, strict=True):
                (self.calls if type(payload) is CallFrames else self.requests).append(rid)

    def kill(self) -> None:
        self.killed += 1


def joined(dispatcher: Dispatcher, token: int, local: bool) -> tuple[WorkerLink, Far]:
    """A worker, local or remote, ready for work, and its far end."""
    far = Far()
    link = WorkerLink(token, 1000 + token, far.send, kill=far.kill, local=local)
    dispatcher.workerReady(link)
    return link, far


def kept_local(timeout: float | None = None) -> tuple[Clock, Dispatcher]:
    clock = Clock()
    dispatcher = Dispatcher(clock, window=32, timeout=timeout)
    dispatcher.keepCallsLocal()
    return clock, dispatcher


def calls(dispatcher: Dispatcher, n: int) -> list[int]:
    return [dispatcher.submitCall(CallFrames([b"call"])).rid for _ in range(n)]


def requests(dispatcher: Dispatcher, n: int) -> list[int]:
    outcomes = Outcomes()
    return [dispatcher.submitTo(b"x", outcomes) for _ in range(n)]


def answer_all(clock: Clock, dispatcher: Dispatcher, links: list[WorkerLink]) -> None:
    for _ in range(100):
        clock.advance(0)
        if not any(link.outstanding for link in links):
            return
        for link in links:
            if link.outstanding:
                answer(dispatcher, link, len(link.outstanding))
    raise AssertionError("requests left unanswered")


@pytest.mark.parametrize("keep_local", [True, False])
def test_kept_local_calls_go_to_local_workers_only_and_bytes_requests_everywhere(keep_local):
    clock = Clock()
    dispatcher = Dispatcher(clock, window=32)
    if keep_local:
        dispatcher.keepCallsLocal()
    local, near = joined(dispatcher, 1, local=True)
    remote, far = joined(dispatcher, 2, local=False)
    call_ids = calls(dispatcher, 8)
    request_ids = requests(dispatcher, 8)
    answer_all(clock, dispatcher, [local, remote])
    assert sorted(near.requests + far.requests) == request_ids
    assert sorted(near.calls + far.calls) == call_ids
    if keep_local:
        assert far.calls == [] and near.calls == call_ids and far.requests
    else:  # the rule is what keeps them off: spread as usual without it
        assert far.calls


@pytest.mark.parametrize("given_up_by", ["a failed send", "the timeout"])
def test_calls_a_lost_local_worker_held_go_back_to_local_workers_only(given_up_by):
    clock, dispatcher = kept_local(timeout=1.0)
    dispatcher.start()
    first, near = joined(dispatcher, 1, local=True)
    remote, far = joined(dispatcher, 2, local=False)
    held = calls(dispatcher, 2)
    clock.advance(0)
    assert near.calls == held
    if given_up_by == "a failed send":
        answer(dispatcher, first, 1)  # room for one more: the next send fails
        near.failing = True
        later = calls(dispatcher, 1)
        clock.advance(0)
        retried = held[1:] + later
    else:  # stuck on the first: it fails, the one behind it is requeued
        tick(clock, 1.5)
        retried = held[1:]
    assert near.killed == 1
    requests(dispatcher, 4)
    clock.advance(0)
    assert far.calls == [] and far.requests  # bytes requests still go to the remote one
    second, other = joined(dispatcher, 3, local=True)
    clock.advance(0)
    assert other.calls == retried
    assert far.calls == []


def test_a_retried_call_runs_alone_on_a_local_worker_and_holds_back_no_remote_one():
    clock, dispatcher = kept_local()
    doomed, _ = joined(dispatcher, 1, local=True)
    remote, far = joined(dispatcher, 2, local=False)
    held = calls(dispatcher, 2)
    first_bytes = requests(dispatcher, 2)
    clock.advance(0)
    assert doomed.outstanding.keys() == set(held) and far.requests == first_bytes
    survivor, near = joined(dispatcher, 3, local=True)
    requests(dispatcher, 2)
    clock.advance(0)
    assert len(near.requests) == 2  # both live workers are busy now
    dispatcher.workerLost(doomed.token)  # its two calls are retried, each alone
    more = requests(dispatcher, 2)
    answer(dispatcher, remote, 2)  # the remote one is idle: it may not take a call ...
    assert far.calls == [] and far.requests == first_bytes + more  # ... but takes bytes
    answer(dispatcher, survivor, 2)  # the local one, held back for the calls, is idle
    assert near.batches[-1] == held[:1]
    answer(dispatcher, survivor, 1)
    assert near.batches[-1] == held[1:]
    answer_all(clock, dispatcher, [survivor, remote])
    assert far.calls == [] and near.calls == held


def test_a_kept_local_call_is_cancelled_expired_or_failed_where_it_waits():
    clock, dispatcher = kept_local(timeout=1.0)
    dispatcher.start()
    remote, far = joined(dispatcher, 2, local=False)
    cancelled, *waiting = (dispatcher.submitCall(CallFrames([b"c"])) for _ in range(3))
    outcomes = []
    for d in (cancelled, *waiting):
        d.addErrback(outcomes.append)
    cancelled.cancel()
    assert outcomes.pop().check(CancelledError)
    assert dispatcher.queued == 2 and dispatcher.pending == 2
    tick(clock, 0.6)
    retiring, gone = joined(dispatcher, 3, local=True)
    dispatcher.retire(retiring.token)  # a retiring local worker takes no call either
    clock.advance(0)
    assert far.calls == [] and gone.calls == [] and dispatcher.queued == 2
    tick(clock, 1.0)  # no local worker free for the timeout: the queued calls expire
    assert dispatcher.queued == 0 and dispatcher.pending == 0
    assert [failure.check(RequestTimeout) for failure in outcomes] == [RequestTimeout] * 2
    stopped = dispatcher.submitCall(CallFrames([b"c"]))
    stopped.addErrback(outcomes.append)
    dispatcher.failAll(ServiceStopped("stopped"))
    assert outcomes[-1].check(ServiceStopped) and dispatcher.queued == 0
    ready, near = joined(dispatcher, 1, local=True)
    clock.advance(0)
    assert near.calls == [] and far.calls == []  # nothing was left behind in a queue
    dispatcher.stop()
