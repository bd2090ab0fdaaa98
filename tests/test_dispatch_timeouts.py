"""The timeout rules: a worker stuck on one request is abandoned (the request fails, the
worker is killed, what queued behind it goes to another), and queued requests expire.

A real L{Dispatcher} on a L{Clock}, with fake worker links that record what they are sent.
"""

from __future__ import annotations

from dispatch_fakes import Outcomes, answer, link, tick
from twisted.internet.task import Clock

from gaspar_tw.dispatch import Dispatcher
from gaspar_tw.dispatch.sweep import Sweep
from gaspar_tw.errors import RequestTimeout


def test_a_stuck_request_fails_between_the_timeout_and_one_sweep_more():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=1.0)  # a sweep every 0.25 s
    dispatcher.start()
    worker, _ = link(1)
    dispatcher.workerReady(worker)
    outcomes = Outcomes()
    clock.advance(0.2)
    rid = dispatcher.submitTo(b"stuck", outcomes)
    clock.advance(0)  # sent at 0.2: the worker runs it from now on
    clock.advance(0.1)  # the first sweep (due at 0.25) runs 50 ms late, at 0.3
    while rid not in outcomes.failures and clock.seconds() < 5:
        clock.advance(0.005)  # the other sweeps are (nearly) on time
    assert isinstance(outcomes.failures[rid], RequestTimeout)
    ran = clock.seconds() - 0.2
    assert 1.0 <= ran <= 1.25 + 0.005, f"failed after {ran:.2f}s (timeout 1 s, sweeps of 0.25 s)"
    assert dispatcher.stats.timeout == 1
    dispatcher.stop()


def test_a_stuck_worker_is_killed_and_the_requests_behind_it_go_to_another_worker():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=1.0)
    dispatcher.start()
    (stuck, stuck_sent), (other, other_sent) = link(1), link(2)
    dispatcher.workerReady(stuck)
    outcomes = Outcomes()
    first, behind = dispatcher.submitTo(b"x", outcomes), dispatcher.submitTo(b"x", outcomes)
    clock.advance(0)
    assert stuck_sent.batches == [[first, behind]]
    dispatcher.workerReady(other)
    tick(clock, 1.0)
    assert stuck_sent.killed == 0 and not outcomes.failures  # not yet: it ran 1 s exactly
    tick(clock, 0.3)
    assert stuck_sent.killed == 1 and isinstance(outcomes.failures[first], RequestTimeout)
    clock.advance(0)
    assert other_sent.batches == [[behind]]
    answer(dispatcher, other)
    assert list(outcomes.replies) == [behind]
    dispatcher.submitTo(b"x", outcomes)
    clock.advance(0)
    assert stuck_sent.batches == [[first, behind]]  # the abandoned worker gets no more work
    dispatcher.stop()


def test_a_worker_is_timed_from_when_it_starts_each_request_not_from_its_first():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=1.0)
    dispatcher.start()
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    outcomes = Outcomes()
    dispatcher.submitTo(b"x", outcomes)
    dispatcher.submitTo(b"x", outcomes)
    clock.advance(0)
    for _ in range(2):
        tick(clock, 0.75)  # each request runs 0.75 s: the worker is never stuck
        answer(dispatcher, worker)
    tick(clock, 5)
    assert sorted(outcomes.replies) == [1, 2] and not outcomes.failures and not sent.killed
    dispatcher.stop()


def test_queued_requests_expire_within_one_sweep_of_the_timeout():
    clock = Clock()
    timeout = 10.5
    dispatcher = Dispatcher(clock, timeout=timeout)
    dispatcher.start()
    outcomes = Outcomes()
    clock.advance(0.01)
    rid = dispatcher.submitTo(b"waits", outcomes)  # no worker: it waits in the queue
    while rid not in outcomes.failures and clock.seconds() < 30:
        clock.advance(0.01)
    waited = clock.seconds() - 0.01
    interval = Sweep(timeout, lambda: None).interval  # sweeps divide the timeout
    assert timeout <= waited <= timeout + interval + 0.01, f"failed after {waited:.2f}s"
    assert isinstance(outcomes.failures[rid], RequestTimeout)
    assert dispatcher.pending == 0 and dispatcher.queued == 0 and dispatcher.stats.timeout == 1
    dispatcher.stop()


def test_a_requeued_request_waits_a_whole_timeout_again_before_it_expires():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=1.0)
    dispatcher.start()
    worker, _ = link(1)
    dispatcher.workerReady(worker)
    outcomes = Outcomes()
    first, behind = dispatcher.submitTo(b"x", outcomes), dispatcher.submitTo(b"x", outcomes)
    clock.advance(0)
    while first not in outcomes.failures:
        tick(clock, 0.25)
    abandoned = clock.seconds()  # behind is back in the queue, with no worker to go to
    assert dispatcher.queued == 1
    while behind not in outcomes.failures and clock.seconds() < 5:
        clock.advance(0.005)
    assert isinstance(outcomes.failures[behind], RequestTimeout)
    waited = clock.seconds() - abandoned
    assert 1.0 <= waited <= 1.25 + 0.005, f"expired {waited:.2f}s after it was requeued"
    dispatcher.stop()


def test_without_a_timeout_nothing_is_swept_and_nothing_expires():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=None)
    dispatcher.start()
    assert clock.getDelayedCalls() == []
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    outcomes = Outcomes()
    dispatcher.submitTo(b"x", outcomes)
    clock.advance(0)
    clock.advance(3600)
    assert not outcomes.failures and not sent.killed and dispatcher.pending == 1
    dispatcher.stop()
