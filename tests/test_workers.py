"""Worker processes against real processes: forked children, fd exhaustion, restarts, output.

The numbers in the test names are the points of issue 10.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest_twisted
from conftest import READY, TESTS, assert_reaped, pid_alive, wait_until
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from gaspar_tw import GasparClient, Producer
from gaspar_tw.client import request
from gaspar_tw.host.service import WorkerHost
from gaspar_tw.workers.local import MAX_LOG_LINE, OutputLines


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process C{pid} so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def poll(predicate, timeout: float) -> bool:
    """Wait in the reactor until C{predicate()} is true, at most C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
    return predicate()


# -- 2. a worker's forked child ------------------------------------------------------------


def test_2_a_dead_workers_forked_child_holds_up_neither_requests_nor_shutdown(daemon_factory):
    daemon = daemon_factory("--handler", "handlers:forks", workers=1)
    worker, child = map(int, request(daemon.address, b"30", 10).split(b":"))
    assert worker == daemon.worker_pids[0] and pid_alive(child)
    os.kill(worker, signal.SIGKILL)
    started = time.monotonic()
    new_worker, new_child = map(int, request(daemon.address, b"30", 5).split(b":"))
    assert new_worker != worker and time.monotonic() - started < 2
    assert_reaped([worker, child], timeout=2)  # the child went with its worker's group
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 3
    assert_reaped([new_worker, new_child], timeout=2)


def test_2_what_a_worker_wrote_just_before_it_exited_is_logged(daemon_factory):
    # Its pipes are closed once it has exited, not at their EOF: what is in them is read first.
    # (Workers that die together show it: output was lost from 1 in 5 of them before.)
    daemon = daemon_factory("--handler", "handlers:last_words", "--no-retry-on-crash", workers=4)
    messages = [b"last words %d" % i for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        for n in range(2):  # one request per worker: all four die together
            batch = messages[4 * n : 4 * n + 4]
            assert list(pool.map(lambda m: request(daemon.address, m, 10), batch)) == [b""] * 4
            daemon.wait_for(READY, 4 * (n + 2))  # all four replaced
    logged = re.findall(rb"\(pid \d+\): (last words \d)", daemon.log())
    assert sorted(logged) == messages


# -- 3. no file descriptors to start a worker with ------------------------------------------


def test_3_a_worker_that_cannot_start_for_want_of_fds_is_retried_with_backoff(daemon_factory):
    daemon = daemon_factory("--handler", "handlers:tagged", "--idle-timeout", "0", workers=1)
    producer = daemon.process.pid
    limit = open_fds(producer) + 16
    resource.prlimit(producer, resource.RLIMIT_NOFILE, (limit, limit))
    idle = [socket.create_connection((daemon.host, daemon.port), timeout=5) for _ in range(40)]
    try:
        daemon.wait_for(rb"cannot accept connections")  # every fd is taken; the rest turned away
        os.kill(daemon.worker_pids[0], signal.SIGKILL)
        daemon.wait_for(rb"cannot start worker 0: .*Too many open files.*; retrying", 3)
    finally:
        for sock in idle:
            sock.close()
    freed = time.monotonic()
    ((_, pid),) = daemon.wait_for(READY, 2, timeout=5)[1:]
    assert time.monotonic() - freed < 3.5  # within one back-off step of the fds coming back
    assert request(daemon.address, b"back", 5) == b"%s:back" % pid
    delays = re.findall(rb"cannot start worker 0: .*; retrying in ([\d.]+)s", daemon.log())
    first = float(delays[0])  # 0.2 if the killed worker counted as dying soon after start
    assert first <= 0.2 and [float(d) for d in delays] == [first * 2**i for i in range(len(delays))]
    assert b"Unhandled Error" not in daemon.log()


# -- 8. restart ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_8_a_stopped_producer_starts_again_like_the_first_time():
    producer = Producer("handlers:tagged", "tcp:0:interface=127.0.0.1", 1, pythonpath=[str(TESTS)])
    producer.privilegedStartService()
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        first = producer.workerPids()
        assert (await producer.submit(b"one")).endswith(b":one")
        await producer.stopService()
        assert not any(pid_alive(pid) for pid in first)
        producer.startService()
        await producer.whenReady().addTimeout(5, reactor)
        (pid,) = producer.workerPids()
        assert pid not in first
        assert await producer.submit(b"two").addTimeout(5, reactor) == b"%d:two" % pid
        client = GasparClient(reactor, f"tcp:127.0.0.1:{producer.port.getHost().port}", 5)
        assert await client.request(b"three") == b"%d:three" % pid
    finally:
        pids = producer.workerPids()
        if producer.running:
            await producer.stopService()
    assert not any(pid_alive(pid) for pid in pids)


@pytest_twisted.ensureDeferred
async def test_8_a_stopped_worker_host_starts_again_and_replaces_its_dead():
    producer = Producer(
        "handlers:tagged", None, 0, bind="tcp://127.0.0.1:*", pythonpath=[str(TESTS)]
    )
    producer.startService()
    host = WorkerHost("handlers:tagged", producer.remote.boundAddress, 1, pythonpath=[str(TESTS)])
    seen: list[int] = []
    try:
        host.startService()
        seen += [int((await producer.submit(b"one").addTimeout(15, reactor)).split(b":")[0])]
        await host.stopService()
        host.startService()
        seen += [int((await producer.submit(b"two").addTimeout(15, reactor)).split(b":")[0])]
        assert seen[1] != seen[0]
        os.kill(seen[1], signal.SIGKILL)
        assert await poll(lambda: set(host.pool.pids()) - set(seen), 5), "not replaced"
        seen += host.pool.pids()
        reply = await producer.submit(b"three").addTimeout(15, reactor)
        assert reply == b"%d:three" % seen[-1]
    finally:
        if host.running:
            await host.stopService()
        await producer.stopService()
    assert not any(pid_alive(pid) for pid in seen)


@pytest_twisted.ensureDeferred
async def test_8_a_producer_restarted_forgets_its_remote_workers_and_they_join_again():
    with socket.socket() as probe:  # a port to bind twice: "*" would pick another on restart
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    producer = Producer("handlers:tagged", None, 0, bind=address, pythonpath=[str(TESTS)])
    host = WorkerHost("handlers:tagged", address, 1, pythonpath=[str(TESTS)])
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        producer.startService()
        host.startService()
        assert (await producer.submit(b"one").addTimeout(15, reactor)).endswith(b":one")
        await producer.stopService()
        producer.startService()
        # The host's worker hears from the new producer, says hello again and is given work.
        assert (await producer.submit(b"two").addTimeout(15, reactor)).endswith(b":two")
        assert not failures, failures  # no send to a worker of the stopped producer
    finally:
        globalLogPublisher.removeObserver(observe)
        pids = host.pool.pids()
        await host.stopService()
        if producer.running:
            await producer.stopService()
    assert_reaped(pids)


# -- 10. a long line of output -------------------------------------------------------------


def test_10_a_long_line_without_newline_costs_linear_cpu_and_is_logged_in_pieces(
    daemon_factory,
):
    daemon = daemon_factory("--handler", "handlers:prints", workers=1)
    size = 8 * 1024 * 1024
    before = cpu_seconds(daemon.process.pid)
    started = time.monotonic()
    assert request(daemon.address, b"%d" % size, 10) == b"done"
    elapsed = time.monotonic() - started
    logged = wait_until(lambda: daemon.log().count(b"x" * 1024) >= size // 1024 - 64, 2)
    used = cpu_seconds(daemon.process.pid) - before
    assert elapsed < 2 and used < 1.5, f"{elapsed:.2f}s, producer CPU {used:.2f}s"
    assert logged  # all but the last piece, before the worker ends
    longest = max(map(len, daemon.log().splitlines()))
    assert MAX_LOG_LINE <= longest < MAX_LOG_LINE + 200
    assert b"[continued]" in daemon.log()


def test_10_output_lines_come_whole_or_in_pieces_that_do_not_split_characters():
    data = ("é" * 20 + "\nab\n\nrest").encode()
    lines = OutputLines(limit=8)
    out = [piece for i in range(0, len(data), 3) for piece in lines.feed(data[i : i + 3])]
    out += lines.flush()
    assert all(len(piece) <= 8 for piece, _ in out)
    whole, line = [], ""
    for piece, continued in out:
        line += piece.decode()  # strict: no piece ends inside a character
        if not continued:
            whole, line = [*whole, line], ""
    assert whole == ["é" * 20, "ab", "", "rest"]
