"""Fault injection against a real ``twistd gaspar``: each fault, then normal requests still work.

The numbers in the test names are the points of issue 3. Timeouts are small and the
handlers are in tests/handlers.py (``faulty`` misbehaves on command).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_twisted
from conftest import READY, TESTS, assert_reaped, pid_alive
from twisted.internet import reactor

from gaspar_tw import Producer, RequestTimeout
from gaspar_tw.client import pack, request
from gaspar_tw.errors import GasparError

FAULTY = ("--handler", "handlers:faulty")


def serves_normally(daemon, n: int = 60, clients: int = 8) -> float:
    """A batch of normal requests is answered correctly by live workers; returns seconds."""
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(lambda i: request(daemon.address, b"ok-%d" % i, 10), range(n)))
    elapsed = time.monotonic() - started
    for i, reply in enumerate(replies):
        pid, _, body = reply.partition(b":")
        assert body == b"ok-%d" % i, reply
        assert pid_alive(int(pid))
    assert elapsed < 15, f"{n} normal requests took {elapsed:.1f}s"
    return elapsed


def background(fn, *args):
    """Run fn(*args) in a thread; the returned callable joins it and returns its result."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # re-raised in the test thread
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = 30):
        thread.join(timeout)
        assert not thread.is_alive(), "request thread did not finish"
        if "error" in result:
            raise result["error"]
        return result["value"]

    return join


def ready_pids(daemon) -> list[int]:
    return [int(pid) for _, pid in READY.findall(daemon.log())]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST rather than a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_no_unhandled_errors(daemon) -> None:
    log = daemon.log()
    assert b"Unhandled Error" not in log and b"Traceback" not in log, log.decode()


# -- 1. handler raises ---------------------------------------------------------------------


def test_1_handler_error_closes_without_bytes_logs_traceback_spares_others(daemon_factory):
    daemon = daemon_factory(*FAULTY, workers=2)
    messages = [b"raise:boom-%d" % i if i % 5 == 0 else b"fine-%d" % i for i in range(50)]
    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda m: request(daemon.address, m, 10), messages))
    for message, reply in zip(messages, replies, strict=True):
        if message.startswith(b"raise"):
            assert reply == b""
        else:
            assert reply.partition(b":")[2] == message
    log = daemon.log().decode()
    assert "handler raised ValueError: boom-10" in log
    assert "Traceback (most recent call last)" in log and "raise ValueError" in log
    assert ready_pids(daemon) == list(daemon.worker_pids.values())  # no worker was lost
    serves_normally(daemon)


# -- 2. worker dies ------------------------------------------------------------------------


@pytest.mark.parametrize("how", [b"kill", b"exit", b"segv"])
def test_2_worker_death_is_noticed_replaced_and_its_request_retried(daemon_factory, tmp_path, how):
    daemon = daemon_factory(*FAULTY, workers=2)
    flag = str(tmp_path / "crashed-once").encode()
    message = b"once:%s:%s" % (flag, how)
    started = time.monotonic()
    reply = request(daemon.address, message, 15)
    pid, _, body = reply.partition(b":")
    assert body == message and pid_alive(int(pid)), reply
    assert time.monotonic() - started < 10
    daemon.wait_for(rb"worker (\d+) ready", 3)  # a replacement was started
    dead = [p for p in daemon.worker_pids.values() if not pid_alive(p)]
    assert len(dead) == 1 and int(pid) not in dead
    assert b"died holding 1 requests: 1 retried, 0 failed" in daemon.log()
    serves_normally(daemon)


def test_2_poison_request_fails_after_one_retry_and_requests_behind_it_succeed(daemon_factory):
    daemon = daemon_factory(*FAULTY, workers=1)
    first = background(request, daemon.address, b"sleep:0.5", 15)
    time.sleep(0.15)
    poison = background(request, daemon.address, b"exit", 15)
    time.sleep(0.15)
    behind = background(request, daemon.address, b"behind", 15)
    assert first().endswith(b":sleep:0.5")
    assert poison() == b""
    assert behind().endswith(b":behind")
    log = daemon.log()
    assert b"it was retried alone on another worker, which died too" in log
    serves_normally(daemon)


def test_2_no_retry_on_crash_fails_the_request_instead(daemon_factory, tmp_path):
    daemon = daemon_factory(*FAULTY, "--no-retry-on-crash", workers=2)
    flag = tmp_path / "crashed-once"
    assert request(daemon.address, b"once:%s:exit" % str(flag).encode(), 15) == b""
    assert flag.exists()  # it did run, once
    assert b"retrying is off (--no-retry-on-crash)" in daemon.log()
    daemon.wait_for(rb"worker (\d+) ready", 3)
    serves_normally(daemon)


def test_2_worker_crash_looping_at_start_is_backed_off_and_reported(daemon_factory, tmp_path):
    daemon = daemon_factory("--handler", "crash_at_import:echo", workers=1)
    (tmp_path / "crash-at-import").touch()
    os.kill(daemon.worker_pids[0], signal.SIGKILL)
    daemon.wait_for(rb"died 3 times in a row soon after start", timeout=15)
    deaths = len(re.findall(rb"worker 0 \(pid \d+\) (?:died|ended)", daemon.log()))
    time.sleep(1.0)
    later = len(re.findall(rb"worker 0 \(pid \d+\) (?:died|ended)", daemon.log()))
    assert later - deaths <= 3, "restarts are not backed off"
    (tmp_path / "crash-at-import").unlink()
    daemon.wait_for(READY, 2, timeout=20)
    assert request(daemon.address, b"back", 10) == b"back"


# -- 3. timeouts ---------------------------------------------------------------------------


def test_3_timeout_closes_kills_stuck_worker_and_retries_the_requests_behind_it(
    daemon_factory,
):
    daemon = daemon_factory(*FAULTY, "--timeout", "2", workers=1)
    stuck_pid = daemon.worker_pids[0]
    # Once a reply has told the producer the handler is fast, all of them go to the worker.
    assert request(daemon.address, b"warm-up", 10).endswith(b":warm-up")
    started = time.monotonic()
    stuck = background(request, daemon.address, b"sleep:60", 30)
    time.sleep(0.3)
    with ThreadPoolExecutor(5) as pool:
        behind = list(pool.map(lambda i: request(daemon.address, b"behind-%d" % i, 30), range(5)))
        assert stuck() == b""
    assert 1.9 < time.monotonic() - started < 15
    assert_reaped([stuck_pid])
    new_pid = ready_pids(daemon)[-1]
    assert new_pid != stuck_pid
    assert behind == [b"%d:behind-%d" % (new_pid, i) for i in range(5)]
    log = daemon.log()
    assert b"ran one request for over 2.0s (--timeout)" in log
    assert b"retrying the 5 queued behind it" in log
    serves_normally(daemon)


@pytest_twisted.ensureDeferred
async def test_3_submit_fails_with_a_timeout_error_when_running_or_waiting_too_long():
    producer = Producer("handlers:faulty", None, 1, timeout=0.5, window=1, pythonpath=[str(TESTS)])
    producer.startService()
    try:
        await producer.whenReady().addTimeout(15, reactor)
        pid = producer.workerPids()[0]
        running = producer.submit(b"sleep:30")
        waiting = producer.submit(b"waits")  # the only worker's window (1) is full
        with pytest.raises(RequestTimeout, match="ran for over 0.5s") as info:
            await running.addTimeout(10, reactor)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, GasparError)
        with pytest.raises(RequestTimeout, match="no worker was free for 0.5s"):
            await waiting.addTimeout(10, reactor)
        assert producer.stats.timeout == 2
        reply = await producer.submit(b"after").addTimeout(10, reactor)
        assert reply.endswith(b":after") and int(reply.split(b":")[0]) != pid
    finally:
        pids = producer.workerPids()
        await producer.stopService()
    assert not any(pid_alive(p) for p in pids)


# -- 4. back-pressure ----------------------------------------------------------------------


def test_4_requests_over_max_pending_are_refused_promptly_and_memory_stays_flat(
    daemon_factory,
):
    daemon = daemon_factory(*FAULTY, "--max-pending", "4", workers=1)
    accepted = [background(request, daemon.address, b"sleep:3", 30)]
    time.sleep(0.2)
    accepted += [background(request, daemon.address, b"ok-%d" % i, 30) for i in range(3)]
    time.sleep(0.3)
    before = rss_kib(daemon.process.pid)
    body = os.urandom(128 * 1024)
    flood_started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        flood = list(pool.map(lambda i: request(daemon.address, body, 30), range(400)))
    flood_seconds = time.monotonic() - flood_started
    assert flood == [b""] * 400  # 50 MiB offered, none of it queued
    assert rss_kib(daemon.process.pid) - before < 25 * 1024
    assert accepted[0]().endswith(b":sleep:3")  # the flood did not wait behind it
    assert [join().partition(b":")[2] for join in accepted[1:]] == [b"ok-0", b"ok-1", b"ok-2"]
    counts = [int(n) for n in re.findall(rb"(\d+) refused so far", daemon.log())]
    assert counts and counts[-1] <= 400
    assert len(counts) <= flood_seconds + 2  # at most one line a second
    assert b"refusing requests: 4 already pending (max-pending 4)" in daemon.log()
    serves_normally(daemon, clients=4)


# -- 5. bad input on the TCP port ----------------------------------------------------------


def test_5_length_over_max_length_is_closed_before_the_body_arrives(daemon_factory):
    daemon = daemon_factory(*FAULTY, "--max-length", "1000", workers=1)
    assert request(daemon.address, b"x" * 1000, 10).endswith(b"x" * 1000)
    assert request(daemon.address, b"x" * 1001, 10) == b""
    with socket.create_connection((daemon.host, daemon.port), timeout=10) as sock:
        sock.sendall(struct.pack("!I", 0xFFFFFFFF))  # the header only: no body is ever sent
        assert sock.recv(10) == b""
    assert b"request of 4294967295 bytes is over the 1000-byte limit" in daemon.log()
    serves_normally(daemon)


def test_5_stalled_half_requests_are_dropped_after_idle_timeout(daemon_factory):
    daemon = daemon_factory(*FAULTY, "--idle-timeout", "0.5", workers=1)
    stalled = [socket.create_connection((daemon.host, daemon.port)) for _ in range(12)]
    started = time.monotonic()
    for i, sock in enumerate(stalled[:8]):
        sock.sendall(pack(b"half a request")[: 2 + i])  # part of the header or the body
    try:
        serves_normally(daemon, 20)  # served while the stalled ones wait
        for sock in stalled:
            sock.settimeout(10)
            try:
                assert sock.recv(10) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started > 0.4
    finally:
        for sock in stalled:
            sock.close()
    assert b"dropping" in daemon.log() and b"(--idle-timeout)" in daemon.log()


def test_5_clients_that_disconnect_before_the_reply_hold_no_slot(daemon_factory):
    daemon = daemon_factory(*FAULTY, "--max-pending", "2", workers=1)

    def send_then_vanish(i: int) -> None:
        sock = socket.create_connection((daemon.host, daemon.port), timeout=10)
        sock.sendall(pack(b"sleep:1"))
        time.sleep(0.2)  # the daemon has the request by now
        reset(sock)

    with ThreadPoolExecutor(5) as pool:
        list(pool.map(send_then_vanish, range(5)))
    # Were the vanished requests still counted, this one would be refused (max-pending 2).
    assert request(daemon.address, b"still-welcome", 15).endswith(b":still-welcome")
    assert_no_unhandled_errors(daemon)
    serves_normally(daemon, clients=2)


def bad_client(address: tuple[str, int], rng: random.Random) -> None:
    """One misbehaving client: garbage, lies about lengths, hangs up early, resets."""
    kind = rng.randrange(6)
    garbage = rng.randbytes(rng.randrange(1, 300))
    with socket.create_connection(address, timeout=10) as sock:
        if kind == 0:  # random bytes, then close
            sock.sendall(garbage)
        elif kind == 1:  # random bytes, half-close, read whatever comes back
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        elif kind == 2:  # a short valid frame followed by garbage the server must ignore
            body = garbage[: rng.randrange(0, 40)]
            sock.sendall(pack(body) + garbage)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            assert reply.partition(b":")[2] == body
        elif kind == 3:  # part of a header, then close
            sock.sendall(garbage[: rng.randrange(1, 4)])
        elif kind == 4:  # a valid frame, then a reset before the reply
            sock.sendall(pack(garbage))
            reset(sock)
        # kind 5: connect and close at once


def test_5_a_thousand_bad_clients_leave_the_daemon_serving_at_normal_speed(daemon_factory):
    daemon = daemon_factory(*FAULTY, "--max-length", "65536", "--idle-timeout", "0.5", workers=2)
    baseline = serves_normally(daemon, 200)
    rng = random.Random(20261123)
    for _ in range(1000):
        bad_client((daemon.host, daemon.port), rng)
    after = serves_normally(daemon, 200)
    assert after < 3 * baseline + 2, f"200 requests: {baseline:.2f}s before, {after:.2f}s after"
    assert_no_unhandled_errors(daemon)
    assert ready_pids(daemon) == list(daemon.worker_pids.values())


# -- 6. graceful shutdown ------------------------------------------------------------------


def test_6_sigterm_stops_accepting_finishes_in_flight_and_exits_0(daemon_factory):
    daemon = daemon_factory(*FAULTY, workers=2)
    in_flight = [background(request, daemon.address, b"sleep:1.5", 30) for _ in range(3)]
    silent = socket.create_connection((daemon.host, daemon.port))  # no request: not waited for
    time.sleep(0.3)
    daemon.process.send_signal(signal.SIGTERM)
    daemon.wait_for(rb"draining 3 pending requests and 3 open connections")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((daemon.host, daemon.port), timeout=5).close()
    for join in in_flight:
        assert join().endswith(b":sleep:1.5")
    assert daemon.process.wait(20) == 0
    silent.close()
    assert b"gaspar_tw producer stopped" in daemon.log()
    assert_reaped(daemon.worker_pids.values())


@pytest.mark.parametrize(
    "drain_timeout, sigterms, logged",
    [
        ("0.5", 1, b"still open (--drain-timeout 0.5s, or a second SIGTERM)"),
        ("60", 2, b"second SIGTERM: ending the drain now"),
    ],
)
def test_6_a_drain_cut_short_closes_what_is_left_and_exits_by_the_signal(
    daemon_factory, drain_timeout, sigterms, logged
):
    daemon = daemon_factory(*FAULTY, "--drain-timeout", drain_timeout, workers=1)
    stuck = background(request, daemon.address, b"sleep:60", 30)
    time.sleep(0.3)
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    if sigterms == 2:
        daemon.wait_for(rb"draining 1 pending requests")
        daemon.process.send_signal(signal.SIGTERM)
    assert stuck() == b""
    assert daemon.process.wait(20) == -signal.SIGTERM  # cut short: not a clean exit
    assert time.monotonic() - started < 10
    assert logged in daemon.log()
    assert_reaped(daemon.worker_pids.values())


def test_6_sigkill_of_busy_producer_leaves_no_worker(daemon_factory):
    daemon = daemon_factory(*FAULTY, workers=2)
    busy = [socket.create_connection((daemon.host, daemon.port)) for _ in range(2)]
    for sock in busy:
        sock.sendall(pack(b"sleep:60"))  # both workers are inside the handler
    time.sleep(0.5)
    daemon.process.kill()
    daemon.process.wait(5)
    assert_reaped(daemon.worker_pids.values(), timeout=5)
    for sock in busy:
        sock.close()


# -- 7. large and slow ---------------------------------------------------------------------


def test_7_sixteen_mib_round_trip_and_a_slow_reader_blocks_nobody(daemon_factory):
    daemon = daemon_factory("--handler", "gaspar_tw.examples:echo", workers=2)
    body = os.urandom(16 * 1024 * 1024)
    assert hashlib.sha256(request(daemon.address, body, 30)).digest() == (
        hashlib.sha256(body).digest()
    )
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(30)
    slow.connect((daemon.host, daemon.port))
    try:
        slow.sendall(pack(body))
        time.sleep(0.5)  # the reply is waiting in the daemon's buffer, unread
        with ThreadPoolExecutor(8) as pool:
            echoed = list(pool.map(lambda i: request(daemon.address, b"%d" % i, 10), range(100)))
        assert echoed == [b"%d" % i for i in range(100)]
        reply = bytearray()
        while chunk := slow.recv(1 << 20):
            reply += chunk
        assert len(reply) == len(body) and hashlib.sha256(reply).digest() == (
            hashlib.sha256(body).digest()
        )
    finally:
        slow.close()
