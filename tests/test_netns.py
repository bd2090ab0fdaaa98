"""A worker host at its own address: a network namespace (and veth pair) made by the test.

The producer binds its remote-worker socket on the host end of the veth pair; ``twistd
gaspar-worker`` runs inside the namespace and reaches it over the veth link only. Skipped
where namespaces cannot be made (not root, no ``ip``, no permission).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
from conftest import TESTS, TWISTD, assert_reaped, child_env
from test_remote import BOUND, REMOTE_READY, pid_of

from gaspar_tw.client import request


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, timeout=10)


@pytest.fixture
def worker_namespace():
    """A namespace joined to this one by a veth pair: yields (name, host_ip, namespace_ip)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's ip")
    tag = f"{os.getpid() % 100000}"
    name, outside, inside = f"gtw{tag}", f"gtwh{tag}", f"gtwn{tag}"
    subnet = f"10.231.{random.randrange(1, 255)}"
    host_ip, namespace_ip = f"{subnet}.1", f"{subnet}.2"
    if _ip("netns", "add", name).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        steps = [
            ("link", "add", outside, "type", "veth", "peer", "name", inside),
            ("link", "set", inside, "netns", name),
            ("addr", "add", f"{host_ip}/30", "dev", outside),
            ("link", "set", outside, "up"),
            ("-n", name, "addr", "add", f"{namespace_ip}/30", "dev", inside),
            ("-n", name, "link", "set", inside, "up"),
            ("-n", name, "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                pytest.skip(f"ip {' '.join(step)}: {result.stderr.decode().strip()}")
        yield name, host_ip, namespace_ip
    finally:
        _ip("link", "del", outside)  # removes both ends
        _ip("netns", "del", name)


def test_worker_host_in_its_own_namespace_serves_requests(
    tmp_path, daemon_factory, worker_namespace
):
    name, host_ip, _ = worker_namespace
    producer = daemon_factory(
        "--handler", "handlers:faulty", "--bind", f"tcp://{host_ip}:*", workers=0
    )
    address = producer.wait_for(BOUND)[0].decode()
    assert address.startswith(f"tcp://{host_ip}:")
    # Not loopback and no CURVE keys: the operator is told the socket must stay private.
    producer.wait_for(rb"is not loopback and has no --curve-keys")

    argv = ["ip", "netns", "exec", name, *TWISTD, "-n", "--pidfile=", "gaspar-worker"]
    argv += ["--connect", address, "--handler", "handlers:faulty", "--workers", "2"]
    argv += ["--pythonpath", str(TESTS)]
    with open(tmp_path / "host.log", "wb") as log:
        host = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=child_env()
        )
    try:
        pids = {int(pid) for pid in producer.wait_for(REMOTE_READY, 2, timeout=20)}
        assert len(pids) == 2
        # Inside the namespace only the veth link reaches host_ip: these replies crossed it.
        replies = [request(producer.address, b"ns %d" % i, timeout=15) for i in range(20)]
        for i, reply in enumerate(replies):
            assert reply.endswith(b":ns %d" % i)
        assert {pid_of(reply) for reply in replies} <= pids
    finally:
        host.terminate()
        try:
            host.wait(15)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait(5)
    assert_reaped([host.pid, *pids])
