"""Remote worker hosts on loopback: ``twistd gaspar --workers 0 --bind`` and ``gaspar-worker``.

Issue 5: requests are served by another host's workers; a worker host that vanishes (SIGKILL)
or goes silent (SIGSTOP) is lost, its requests retried; another host takes over.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from conftest import TESTS, TWISTD, assert_reaped, child_env, pid_alive, wait_until

from gaspar_tw.client import request

BOUND = re.compile(rb"remote workers connect to (tcp://[\d.]+:\d+)")
REMOTE_READY = rb"remote worker ready \(pid (\d+) on"
BIND = ("--handler", "handlers:faulty", "--bind", "tcp://127.0.0.1:*", "--timeout", "20")


@pytest.fixture
def hosts(tmp_path):
    """Start worker hosts with start(address, workers); all are killed and reaped after."""
    started: list[subprocess.Popen] = []

    def start(address: str, workers: int = 2, *args: str) -> subprocess.Popen:
        log = open(tmp_path / f"host-{len(started)}.log", "wb")
        argv = [*TWISTD, "-n", "--pidfile=", "gaspar-worker", "--connect", address]
        argv += ["--handler", "handlers:faulty", "--workers", str(workers)]
        argv += ["--pythonpath", str(TESTS), *args]
        with log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=child_env()
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
    assert_reaped([p.pid for p in started])


def ready_pids(daemon, count: int) -> list[int]:
    return [int(pid) for pid in daemon.wait_for(REMOTE_READY, count, timeout=20)]


def pid_of(reply: bytes) -> int:
    return int(reply.split(b":", 1)[0])


def test_remote_host_serves_and_a_killed_host_is_replaced(daemon_factory, hosts):
    producer = daemon_factory(*BIND, workers=0)
    address = producer.wait_for(BOUND)[0].decode()
    first = hosts(address, 2)
    first_pids = ready_pids(producer, 2)
    replies = [request(producer.address, b"hello %d" % i, timeout=15) for i in range(6)]
    assert all(reply.endswith(b":hello %d" % i) for i, reply in enumerate(replies))
    assert {pid_of(reply) for reply in replies} <= set(first_pids)

    with ThreadPoolExecutor(4) as pool:
        in_flight = [
            pool.submit(request, producer.address, b"sleep:1", timeout=30) for _ in range(2)
        ]
        time.sleep(0.5)  # both are on the first host's workers now
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert_reaped(first_pids)  # its workers die with it (PR_SET_PDEATHSIG)
        producer.wait_for(rb"remote worker pid \d+ on \S+ (disconnected|was silent)", 2)
        waiting = pool.submit(request, producer.address, b"after", timeout=30)
        time.sleep(0.5)
        assert not waiting.done()  # no worker anywhere: the new request waits
        hosts(address, 2)
        second_pids = set(ready_pids(producer, 4)) - set(first_pids)
        assert len(second_pids) == 2
        for future in in_flight:  # retried on the new host's workers
            assert pid_of(future.result(30)) in second_pids
        assert pid_of(waiting.result(30)) in second_pids
    assert b"retried" in producer.log()


def test_a_stopped_host_answers_what_it_holds_and_nothing_runs_twice(
    daemon_factory, hosts, tmp_path
):
    producer = daemon_factory(*BIND, workers=0)
    address = producer.wait_for(BOUND)[0].decode()
    first = hosts(address, 1)
    (first_pid,) = ready_pids(producer, 1)
    # "once:PATH:sleep:1" sleeps only on its first run: a reply ending ":sleep:1" ran once.
    messages = [b"once:%s:sleep:1" % str(tmp_path / f"ran-{i}").encode() for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        replies = [pool.submit(request, producer.address, m, timeout=30) for m in messages]
        time.sleep(0.5)  # both are on the first host's one worker: one running, one queued
        first.send_signal(signal.SIGTERM)
        producer.wait_for(rb"remote worker pid \d+ on \S+ is stopping")
        assert [r.result(timeout=20) for r in replies] == [b"%d:sleep:1" % first_pid] * 2
    producer.wait_for(rb"answered all it held; it may stop")
    first.wait(10)  # well before its host's SIGTERM to workers at 5 s: they were told to go
    assert_reaped([first_pid])
    assert b"treating it as lost" not in producer.log()
    second = hosts(address, 1)
    (second_pid,) = ready_pids(producer, 2)[1:]
    assert request(producer.address, b"next", timeout=15) == b"%d:next" % second_pid
    second.terminate()


def test_silent_host_is_lost_then_announces_itself_again(daemon_factory, hosts):
    producer = daemon_factory(*BIND, workers=0)
    address = producer.wait_for(BOUND)[0].decode()
    host = hosts(address, 1)
    (pid,) = ready_pids(producer, 1)
    for stopped in (pid, host.pid):
        subprocess.run(["kill", "-STOP", str(stopped)], check=True)
    try:
        producer.wait_for(rb"remote worker pid %d on \S+ was silent" % pid, timeout=15)
    finally:
        for stopped in (pid, host.pid):
            subprocess.run(["kill", "-CONT", str(stopped)], check=True)
    assert ready_pids(producer, 2)[1] == pid  # the same worker said hello again
    assert pid_of(request(producer.address, b"back", timeout=15)) == pid
    assert pid_alive(pid)
    producer.stop()
    assert wait_until(lambda: host.poll() is None)  # the host outlives its producer


def keygen(directory) -> None:
    command = [sys.executable, "-m", "gaspar_tw.ops.cli", "keygen", str(directory)]
    subprocess.run(command, check=True, env=child_env(), capture_output=True, timeout=30)


def test_curve_right_keys_work_wrong_keys_get_nothing(daemon_factory, hosts, tmp_path):
    keys, other = tmp_path / "keys", tmp_path / "other"
    keygen(keys)
    keygen(other)
    # The intruder knows the producer's public key, but its own key is not authorized.
    shutil.copy(keys / "producer.key", other / "producer.key")
    producer = daemon_factory(*BIND, "--curve-keys", str(keys), workers=0)
    address = producer.wait_for(BOUND)[0].decode()
    intruder = hosts(address, 1, "--curve-keys", str(other))
    hosts(address, 1, "--curve-keys", str(keys))
    (pid,) = ready_pids(producer, 1)
    replies = [request(producer.address, b"secret %d" % i, timeout=15) for i in range(4)]
    assert [pid_of(reply) for reply in replies] == [pid] * 4
    time.sleep(1.0)
    assert len(re.findall(REMOTE_READY, producer.log())) == 1  # the intruder never joined
    assert intruder.poll() is None


def test_loopback_detection():
    from gaspar_tw.workers.remote import is_loopback

    assert is_loopback("tcp://127.0.0.1:5570")
    assert is_loopback("tcp://[::1]:5570")
    assert is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://0.0.0.0:5570")
    assert not is_loopback("tcp://*:5570")
    assert not is_loopback("tcp://10.0.0.1:5570")


def test_remote_worker_past_timeout_is_told_to_exit_and_replaced(daemon_factory, hosts):
    producer = daemon_factory(*BIND[:-1], "1", workers=0)  # --timeout 1
    address = producer.wait_for(BOUND)[0].decode()
    hosts(address, 1)
    (pid,) = ready_pids(producer, 1)
    assert request(producer.address, b"sleep:10", timeout=15) == b""  # failed: closed, no bytes
    assert_reaped([pid])
    new = ready_pids(producer, 2)[1]
    assert new != pid
    assert pid_of(request(producer.address, b"again", timeout=15)) == new


def test_workers_find_a_restarted_producer(daemon_factory, hosts):
    producer = daemon_factory(*BIND, workers=0)
    address = producer.wait_for(BOUND)[0].decode()
    host = hosts(address, 1)
    (pid,) = ready_pids(producer, 1)
    producer.stop(signal.SIGKILL)
    again = daemon_factory(*BIND[:-3], address, "--timeout", "20", workers=0)  # same address
    assert again.wait_for(BOUND)[0].decode() == address
    assert ready_pids(again, 1) == [pid]  # the same worker, connected again
    assert pid_of(request(again.address, b"hi", timeout=15)) == pid
    assert host.poll() is None


def test_concurrent_load_flows_without_stalls(daemon_factory, hosts):
    producer = daemon_factory(*BIND, workers=0)
    address = producer.wait_for(BOUND)[0].decode()
    hosts(address, 1)
    ready_pids(producer, 1)
    messages = [b"load %d" % i for i in range(1500)]
    with ThreadPoolExecutor(48) as pool:
        replies = list(pool.map(lambda m: request(producer.address, m, timeout=30), messages))
    assert [reply.split(b":", 1)[1] for reply in replies] == messages
    assert b"treating it as lost" not in producer.log()


def test_local_and_remote_workers_share_the_work(daemon_factory, hosts):
    producer = daemon_factory(*BIND, workers=1)
    address = producer.wait_for(BOUND)[0].decode()
    hosts(address, 1)
    (remote,) = ready_pids(producer, 1)
    (local,) = producer.worker_pids.values()
    with ThreadPoolExecutor(2) as pool:  # two slow requests at once: one on each worker
        replies = list(
            pool.map(lambda m: request(producer.address, m, timeout=15), [b"sleep:1"] * 2)
        )
    assert {pid_of(reply) for reply in replies} == {local, remote}


def said_in(pattern: bytes, log_path) -> bool:
    return re.search(pattern, log_path.read_bytes()) is not None


def test_curve_key_mismatch_is_logged_on_both_sides(daemon_factory, hosts, tmp_path):
    keys, stranger, intruder = tmp_path / "keys", tmp_path / "stranger", tmp_path / "intruder"
    for directory in (keys, stranger, intruder):
        keygen(directory)
    shutil.copy(keys / "producer.key", intruder / "producer.key")  # only its own key is wrong
    producer = daemon_factory(*BIND, "--curve-keys", str(keys), workers=0)
    address = producer.wait_for(BOUND)[0].decode()
    hosts(address, 1, "--curve-keys", str(stranger))  # holds another producer's public key
    hosts(address, 1, "--curve-keys", str(intruder))
    failed = rb"a remote worker failed the CURVE handshake on tcp://127.0.0.1:\d+: "
    producer.wait_for(failed + rb"a cryptographic error", timeout=8)
    producer.wait_for(failed + rb"the producer refused the worker's key", timeout=8)
    for n, why in enumerate([rb"the other end closed the connection", rb"the producer refused"]):
        host_log = tmp_path / f"host-{n}.log"
        said = rb"the CURVE handshake with the producer at %s failed: %s" % (address.encode(), why)
        assert wait_until(partial(said_in, said, host_log), 8), host_log.read_text()
        assert b"file descriptor limit" in host_log.read_bytes()
    time.sleep(1)  # the stranger tries again several times a second: still one line a kind
    assert len(re.findall(failed + rb"a cryptographic error", producer.log())) == 1
    said = rb"the CURVE handshake with the producer at \S+ failed: the other end closed"
    assert len(re.findall(said, (tmp_path / "host-0.log").read_bytes())) == 1
