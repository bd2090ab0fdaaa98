"""A worker process whose relay thread or loop fails exits at once, in one line on stderr.

Issue 12: a remote worker given a --connect address ZeroMQ refuses lost its relay thread to
a traceback and then waited for work forever, never replaced.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import zmq
from conftest import assert_reaped, child_env

from gaspar_tw.worker.crash import EXIT_CRASHED

#: What a crash has to be seen within (it takes a Python start and a zmq import).
PROMPTLY = 10.0


@pytest.fixture
def worker():
    """Start python -m gaspar_tw.worker with start(*args); its stdin stays open (as under a
    pool, where closing it means stop). Every worker is killed and reaped after."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "gaspar_tw.worker", "--handler", "gaspar_tw.examples:echo"]
        process = subprocess.Popen(
            [*argv, "--token", "7", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    assert_reaped([p.pid for p in started])


def test_a_relay_that_fails_ends_its_worker_in_one_line(worker):
    # ZeroMQ refuses an address without its transport: the relay thread fails as it connects.
    process = worker("--connect", "127.0.0.1:5571")
    try:
        process.wait(PROMPTLY)  # it used to wait for work forever
    except subprocess.TimeoutExpired:
        pytest.fail("the worker outlived its relay thread")
    assert process.returncode == EXIT_CRASHED == 1  # not a "cannot load" status: replaced
    _, stderr = process.communicate(timeout=10)
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"gaspar_tw worker: the relay to the producer at 127\.0\.0\.1:5571 failed:"
        r" zmq\.error\.ZMQError: Invalid argument \(addr='127\.0\.0\.1:5571'\)"
        r" \(gaspar_tw/worker/relay\.py, line \d+\); exiting",
        lines[0],
    ), lines[0]


def test_a_worker_loop_that_fails_ends_its_worker_in_one_line(worker):
    # A producer (here a bare ROUTER socket) that sends work the loop cannot decode.
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        process = worker("--connect", f"tcp://127.0.0.1:{port}")
        assert router.poll(PROMPTLY * 1000), "no hello from the worker"
        identity, hello, *_ = router.recv_multipart()
        assert hello[:1] == b"H"
        router.send_multipart([identity, b"\x01", b"not work"])
        process.wait(PROMPTLY)
    finally:
        router.close()
        context.term()
    assert process.returncode == EXIT_CRASHED
    _, stderr = process.communicate(timeout=10)
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"gaspar_tw worker: the worker loop failed: struct\.error: unpack_from requires a buffer"
        r" of at least 4 bytes .*\(gaspar_tw/wire/messages\.py, line \d+\); exiting",
        lines[0],
    ), lines[0]
