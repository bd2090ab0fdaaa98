"""The scheduler's rules: window sizes, least-loaded fair shares, concentrating tiny batches,
retiring workers, and requests retried alone after a crash.

A real L{Dispatcher} on a L{Clock}, with fake worker links that record what they are sent.
"""

from __future__ import annotations

import pytest
from dispatch_fakes import Outcomes, answer, link
from twisted.internet.task import Clock

from gaspar_tw.dispatch import Dispatcher, WorkerLink
from gaspar_tw.dispatch.scheduler import CONCENTRATE_SECONDS, INITIAL_WINDOW, WINDOW_SECONDS
from gaspar_tw.errors import WorkerCrashed


def submit(dispatcher: Dispatcher, n: int, outcomes: Outcomes | None = None) -> list[int]:
    outcomes = Outcomes() if outcomes is None else outcomes
    return [dispatcher.submitTo(b"x", outcomes) for _ in range(n)]


# -- window ----------------------------------------------------------------------------------


def test_a_worker_holds_the_initial_window_until_the_handler_time_is_known():
    clock = Clock()
    dispatcher = Dispatcher(clock, window=32)
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    submit(dispatcher, 40)
    clock.advance(0)
    assert sent.batches == [list(range(1, INITIAL_WINDOW + 1))]
    dispatcher.handlerTime(1, 0.000001)  # fast: the window opens
    answer(dispatcher, worker, INITIAL_WINDOW)
    assert sent.batches[1] == list(range(INITIAL_WINDOW + 1, INITIAL_WINDOW + 33))


def test_the_initial_window_is_no_larger_than_the_window():
    clock = Clock()
    dispatcher = Dispatcher(clock, window=1)
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    submit(dispatcher, 4)
    clock.advance(0)
    assert sent.batches == [[1]]


@pytest.mark.parametrize(
    "handler_time, expected",
    [
        (WINDOW_SECONDS / 8.5, 8),  # WINDOW_SECONDS of handler time
        (0.005, 2),  # slower than WINDOW_SECONDS: never fewer than 2
        (WINDOW_SECONDS / 1000, 32),  # fast: never more than window
        (0.0, 32),  # too fast to measure: window
    ],
)
def test_the_window_is_WINDOW_SECONDS_of_handler_time_between_2_and_window(handler_time, expected):
    clock = Clock()
    dispatcher = Dispatcher(clock, window=32)
    dispatcher.handlerTime(1, handler_time)
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    submit(dispatcher, 100)
    clock.advance(0)
    assert [len(batch) for batch in sent.batches] == [expected]


def test_the_handler_time_is_a_moving_average_of_what_workers_report():
    dispatcher = Dispatcher(Clock())
    assert dispatcher.handler_time is None
    dispatcher.handlerTime(0, 1.0)  # no request ran: nothing to learn
    assert dispatcher.handler_time is None
    dispatcher.handlerTime(2, 0.02)  # the first report is taken as is
    assert dispatcher.handler_time == pytest.approx(0.01)
    dispatcher.handlerTime(1, 0.06)  # later ones move it a fifth of the way
    assert dispatcher.handler_time == pytest.approx(0.02)


# -- least loaded, fair shares, concentrate --------------------------------------------------


def test_queued_requests_go_least_loaded_first_in_fair_shares_within_each_window():
    clock = Clock()
    dispatcher = Dispatcher(clock, window=20)
    dispatcher.handlerTime(1, WINDOW_SECONDS / 20)  # windows of 20, no concentrating
    (b, b_sent), (a, a_sent), (c, c_sent) = link(2), link(1), link(3)
    dispatcher.workerReady(b)
    submit(dispatcher, 18)
    clock.advance(0)
    assert b_sent.batches == [list(range(1, 19))]
    dispatcher.workerReady(a)
    dispatcher.workerReady(c)
    submit(dispatcher, 9)  # ids 19..27
    clock.advance(0)
    # a and c (idle) first, a third each; b has room for 2 of its 3; the one left goes to
    # the least loaded again.
    assert a_sent.batches == [[19, 20, 21], [27]]
    assert c_sent.batches == [[22, 23, 24]]
    assert b_sent.batches[1:] == [[25, 26]]


@pytest.mark.parametrize(
    "handler_time, shares",
    [
        (CONCENTRATE_SECONDS / 40, [20, 0, 0]),  # 20 of them take half the threshold
        (CONCENTRATE_SECONDS / 5, [7, 7, 6]),  # 20 of them take 4 times the threshold
    ],
)
def test_requests_adding_up_to_little_handler_time_go_to_one_worker(handler_time, shares):
    clock = Clock()
    dispatcher = Dispatcher(clock, window=32)
    dispatcher.handlerTime(1, handler_time)
    workers = [link(token) for token in (1, 2, 3)]
    for worker, _ in workers:
        dispatcher.workerReady(worker)
    submit(dispatcher, 20)
    clock.advance(0)
    assert [len(sent.sent) for _, sent in workers] == shares
    assert all(len(sent.batches) <= 1 for _, sent in workers)  # one message each


# -- retiring ----------------------------------------------------------------------------------


def test_a_retiring_worker_gets_no_more_work_and_is_drained_once_it_answered_all():
    clock = Clock()
    dispatcher = Dispatcher(clock)
    (a, a_sent), (b, b_sent) = link(1), link(2)
    dispatcher.workerReady(a)
    dispatcher.workerReady(b)
    submit(dispatcher, 6)
    clock.advance(0)
    assert (a_sent.batches, b_sent.batches) == ([[1, 2]], [[3, 4]])
    dispatcher.retire(a.token)
    answer(dispatcher, a)
    assert a_sent.drained == 0 and a_sent.batches == [[1, 2]]  # it holds one still
    answer(dispatcher, a)
    assert a_sent.drained == 1 and a_sent.batches == [[1, 2]]
    answer(dispatcher, b, 2)
    assert b_sent.batches[1:] == [[5, 6]]  # what waited went to the other
    dispatcher.retire(a.token)
    assert a_sent.drained == 1  # once


def test_retiring_a_worker_that_holds_nothing_drains_it_at_once():
    dispatcher = Dispatcher(Clock())
    worker, sent = link(1)
    dispatcher.workerReady(worker)
    dispatcher.retire(worker.token)
    assert sent.drained == 1


# -- a worker that cannot be sent to ---------------------------------------------------------


def test_a_worker_that_cannot_be_sent_to_is_killed_and_its_requests_go_to_another():
    clock = Clock()
    dispatcher = Dispatcher(clock)
    outcomes = Outcomes()
    killed: list[int] = []

    def broken(messages: list) -> None:
        raise OSError("the socket is gone")

    (good, good_sent) = link(2)
    dispatcher.workerReady(WorkerLink(1, 1001, broken, kill=lambda: killed.append(1)))
    dispatcher.workerReady(good)
    rids = submit(dispatcher, 4, outcomes)
    clock.advance(0)
    assert killed == [1]  # its batch went to the other worker instead
    assert good_sent.batches == [rids[:2]]
    answer(dispatcher, good, 2)
    assert good_sent.batches[1:] == [rids[2:]]
    answer(dispatcher, good, 2)
    assert sorted(outcomes.replies) == rids and not outcomes.failures
    submit(dispatcher, 1, outcomes)
    clock.advance(0)
    assert killed == [1] and good_sent.sent[-1] == rids[-1] + 1  # none for the broken one


# -- retried alone after a crash -------------------------------------------------------------


def crashed_holding_two(**options) -> tuple[Clock, Dispatcher, Outcomes, list]:
    """Worker 1 dies holding requests 1 and 2; workers 2 and 3 are idle."""
    clock = Clock()
    dispatcher = Dispatcher(clock, **options)
    dispatcher.handlerTime(1, 0.01)  # a 10 ms handler: windows of 2
    outcomes = Outcomes()
    dead, _ = link(1)
    dispatcher.workerReady(dead)
    submit(dispatcher, 2, outcomes)
    clock.advance(0)
    survivors = [link(2), link(3)]
    for worker, _ in survivors:
        dispatcher.workerReady(worker)
    dispatcher.workerLost(dead.token)
    clock.advance(0)
    return clock, dispatcher, outcomes, survivors


def test_each_request_a_dead_worker_held_is_retried_alone_on_an_idle_worker():
    clock, dispatcher, outcomes, [(b, b_sent), (c, c_sent)] = crashed_holding_two()
    assert sorted([*b_sent.batches, *c_sent.batches]) == [[1], [2]]
    submit(dispatcher, 1, outcomes)  # request 3 waits: each worker runs a suspect alone
    clock.advance(0)
    assert dispatcher.queued == 1
    answer(dispatcher, b)
    assert [3] in b_sent.batches  # b ran its suspect: it takes work again
    answer(dispatcher, c)
    assert sorted(outcomes.replies) == [1, 2] and not outcomes.failures


def test_a_retried_request_whose_worker_dies_too_fails_with_WorkerCrashed():
    clock, dispatcher, outcomes, [(b, b_sent), (c, _)] = crashed_holding_two()
    (suspect,) = b_sent.sent
    dispatcher.workerLost(b.token)
    assert isinstance(outcomes.failures[suspect], WorkerCrashed)
    assert dispatcher.stats.error == 1
    answer(dispatcher, c)
    assert len(outcomes.replies) == 1 and dispatcher.pending == 0


def test_without_retry_on_crash_a_dead_workers_requests_fail_with_WorkerCrashed():
    clock, dispatcher, outcomes, survivors = crashed_holding_two(retry_on_crash=False)
    assert sorted(outcomes.failures) == [1, 2]
    assert all(isinstance(e, WorkerCrashed) for e in outcomes.failures.values())
    assert not any(sent.batches for _, sent in survivors)
    assert dispatcher.pending == 0 and dispatcher.stats.error == 2


def test_a_retried_request_holds_back_only_the_least_loaded_worker_and_runs_alone():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=5)
    dispatcher.handlerTime(1, 0.01)  # a 10 ms handler: windows of 2
    outcomes = Outcomes()
    (a, _), (b, b_sent), (c, c_sent) = link(1), link(2), link(3)
    for worker in (a, b, c):
        dispatcher.workerReady(worker)
    submit(dispatcher, 6, outcomes)
    clock.advance(0)
    answer(dispatcher, a)
    answer(dispatcher, c)  # a and c hold one request each, b two
    (suspect,) = a.outstanding
    dispatcher.workerLost(a.token)
    submit(dispatcher, 4, outcomes)
    clock.advance(0)
    assert len(c_sent.batches) == 1  # c, the least loaded, is held back for the suspect
    answer(dispatcher, b)
    assert len(b.outstanding) == 2  # b is not: it was given new work at once
    answer(dispatcher, c)
    assert c_sent.batches[1:] == [[suspect]]  # then c runs the suspect, alone
    answer(dispatcher, c)
    assert outcomes.replies[suspect] == b"%d" % suspect
    assert len(c.outstanding) == 2  # and c takes new work again
    assert not outcomes.failures and [suspect] not in b_sent.batches


def test_retried_requests_are_run_within_one_window_under_steady_load():
    clock = Clock()
    dispatcher = Dispatcher(clock, timeout=5)
    dispatcher.handlerTime(1, 0.01)
    outcomes = Outcomes()
    (a, _), (b, b_sent) = link(1), link(2)
    dispatcher.workerReady(a)
    dispatcher.workerReady(b)
    submit(dispatcher, 8, outcomes)
    clock.advance(0)
    lost = list(a.outstanding)
    dispatcher.workerLost(a.token)
    clock.advance(0)
    answers = 0
    while any(rid not in outcomes.replies for rid in lost) and answers < 50:
        answer(dispatcher, b)
        dispatcher.submitTo(b"x", outcomes)  # the load never lets b run dry
        clock.advance(0)
        answers += 1
    # b answered its window (2), then each retried request alone: 4 answers in all.
    assert answers == 4, f"the retried requests took {answers} answers of the survivor"
    assert [batch for batch in b_sent.batches if set(batch) & set(lost)] == [[r] for r in lost]
    assert not outcomes.failures
