"""Calls and remote worker hosts: over CURVE they run there; over an exposed bind (neither
loopback nor CURVE-protected) they stay on local workers, and no pickle crosses it.

Real pools, worker hosts and worker processes, on loopback only: a pool bound to every
interface (tcp://0.0.0.0) is reached at 127.0.0.1.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import call_targets as targets
import pytest
import pytest_twisted
import zmq
from conftest import TESTS, assert_reaped, child_env
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from gaspar_tw import ProcessPool, RemoteError
from gaspar_tw.config import WORKER_HOST, Config
from gaspar_tw.host.service import HostPool, WorkerHost
from gaspar_tw.wire import messages as wire
from gaspar_tw.wire.calls import CALL_RESULT, CallFrames
from gaspar_tw.zeromq.curve import keygen

WAIT = 15
EXPOSED = "tcp://0.0.0.0:*"
KEPT_LOCAL = "calls run on this pool's local workers only"


def call(pool, fn, *args, **kwargs) -> Deferred:
    return pool.call(fn, *args, **kwargs).addTimeout(WAIT, reactor)


async def remote_ready(pool, count: int = 1) -> list[int]:
    """The pids of the pool's remote workers, once C{count} have said hello."""
    for _ in range(WAIT * 20):
        if len(pool.remote.pids()) >= count:
            return pool.remote.pids()
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("no remote worker said hello")


def loopback(address: str) -> str:
    """The address of a pool bound to every interface, as a host on this machine reaches it."""
    return "tcp://127.0.0.1:" + address.rsplit(":", 1)[1]


@pytest.fixture
def logged():
    """The text of every event logged while the test runs."""
    texts: list[str] = []

    def observe(event: dict) -> None:
        texts.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield texts
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_calls_run_on_a_remote_worker_host_over_curve(tmp_path):
    keys = str(tmp_path / "keys")
    keygen(keys)
    pool = ProcessPool(
        "handlers:tagged", 0, bind="tcp://127.0.0.1:*", curve_keys=keys, pythonpath=[str(TESTS)]
    )
    pool.startService()
    host = WorkerHost(
        "handlers:tagged", pool.remote.boundAddress, 1, curve_keys=keys, pythonpath=[str(TESTS)]
    )
    host.startService()
    pids = []
    try:
        pids = await remote_ready(pool)
        assert await call(pool, targets.pid) == pids[0] == host.pool.pids()[0]
        data = bytes(range(256)) * 2048  # a frame of its own, through the relay and CURVE
        assert await call(pool, targets.identity, data) == data
    finally:
        await host.stopService()
        await pool.stopService()
    assert_reaped(pids)


@pytest_twisted.ensureDeferred
async def test_on_an_exposed_bind_calls_stay_local_and_bytes_requests_go_everywhere(logged):
    pool = ProcessPool("handlers:tagged", 1, bind=EXPOSED, pythonpath=[str(TESTS)])
    pool.startService()
    host = WorkerHost(
        "handlers:tagged", loopback(pool.remote.boundAddress), 1, pythonpath=[str(TESTS)]
    )
    host.startService()
    pids = []
    try:
        await pool.whenReady().addTimeout(WAIT, reactor)
        (remote,) = await remote_ready(pool)
        pids = pool.workerPids()
        local = set(pids) - {remote}
        for _ in range(2):  # calls and bytes requests queued together, least loaded first
            calls = [call(pool, targets.pid) for _ in range(30)]
            requests = [pool.submit(b"r%d" % n).addTimeout(WAIT, reactor) for n in range(30)]
            results = await gatherResults([*calls, *requests])
            assert set(results[:30]) == local
            assert remote in {int(reply.split(b":")[0]) for reply in results[30:]}
        assert sum(KEPT_LOCAL in text for text in logged) == 1
    finally:
        await host.stopService()
        await pool.stopService()
    assert_reaped(pids)


def test_on_an_exposed_bind_a_pool_without_local_workers_fails_calls_at_once():
    pool = ProcessPool("handlers:tagged", 0, bind=EXPOSED)  # no worker is needed to know
    d = pool.call(targets.pid)
    assert d.called
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(ValueError)
    message = str(failures[0].value)
    assert "no local workers (workers=0)" in message and "neither loopback nor CURVE" in message
    assert "\n" not in message


class Planted:
    """A pickle that makes a directory wherever it is read."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest_twisted.ensureDeferred
async def test_call_outcomes_from_a_remote_on_an_exposed_bind_are_dropped_unread(tmp_path, logged):
    pool = ProcessPool("handlers:tagged", 0, bind=EXPOSED, timeout=20)
    pool.startService()
    context = zmq.Context()
    intruder = context.socket(zmq.DEALER)
    intruder.linger = 0
    planted = tmp_path / "planted"
    try:
        intruder.connect(loopback(pool.remote.boundAddress))
        intruder.send_multipart([*wire.encode_hello(7, 4242), b"1", b"intruder"])
        await remote_ready(pool)
        request = pool.submit(b"secret")
        for _ in range(WAIT * 20):
            if intruder.poll(0):
                frames = intruder.recv_multipart()
                if len(frames) > 1:
                    break
            await deferLater(reactor, 0.05, lambda: None)
        (rid,), _ = wire.decode_work(frames)
        # It answers the bytes request as if it were a call: a pickle, which the pool must
        # never read from an exposed bind.
        outcome = CallFrames([pickle.dumps(Planted(str(planted)))])
        intruder.send_multipart(
            wire.encode_mixed_replies(7, [rid], bytes([CALL_RESULT]), [outcome])
        )
        for _ in range(WAIT * 20):
            if not pool.remote.pids():
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert not pool.remote.pids()  # given up on: the request waits for another worker
        assert not planted.exists() and not request.called
        assert sum("dropped unread" in text for text in logged) == 1
        assert pool.stats.bad_input == 1
        request.cancel()
        request.addErrback(lambda _: None)
    finally:
        intruder.close()
        context.term()
        await pool.stopService()


@pytest.mark.parametrize(
    "address, keys, refused",
    [
        ("tcp://10.0.0.1:5570", False, True),
        ("tcp://127.0.0.1:5570", False, False),
        ("tcp://10.0.0.1:5570", True, False),
    ],
)
def test_a_worker_host_has_its_workers_refuse_calls_on_an_exposed_address(
    address, keys, refused, tmp_path
):
    keys = str(tmp_path) if keys else None
    config = Config.of(None, (WORKER_HOST,), connect=address, curve_keys=keys)
    pool = HostPool(reactor, "handlers:tagged", config)
    assert ("--refuse-calls" in pool.socketArguments(1)) is refused


@pytest_twisted.ensureDeferred
async def test_a_worker_refusing_calls_answers_them_with_an_error_and_serves_bytes_requests(
    tmp_path,
):
    # The producer (on loopback) sends calls; a worker whose host reaches it over an exposed
    # address (here: told so) never unpickles one.
    pool = ProcessPool("handlers:tagged", 0, bind="tcp://127.0.0.1:*", timeout=20)
    pool.startService()
    output = tmp_path / "worker.log"
    argv = [sys.executable, "-m", "gaspar_tw.worker", "--handler", "handlers:tagged"]
    argv += ["--token", "1", "--connect", pool.remote.boundAddress, "--refuse-calls"]
    argv += ["--pythonpath", str(TESTS)]
    with open(output, "wb") as out:
        worker = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=child_env()
        )
    try:
        (pid,) = await remote_ready(pool)
        planted = tmp_path / "planted"
        both = [pool.call(os.mkdir, str(planted)), pool.submit(b"bytes")]  # one message
        refused, served = await gatherResults(
            [d.addTimeout(WAIT, reactor).addErrback(lambda f: f.value) for d in both]
        )
        assert served == b"%d:bytes" % pid
        assert isinstance(refused, RemoteError) and refused.type == "ValueError"
        assert "refused to run the call" in refused.message and "\n" not in refused.message
        assert not planted.exists()
        with pytest.raises(RemoteError, match="refused to run the call"):
            await pool.call(targets.pid).addTimeout(WAIT, reactor)
    finally:
        worker.kill()
        worker.wait(10)
        await pool.stopService()
    assert_reaped([pid])
    assert output.read_text().count("answers calls with an error, unread") == 1
