"""Starting with a mistake: a port in use, an address not this machine's, a setting out of range.

Each is one line (twistd: on stderr, exit status 1, in daemon mode too; a library caller: the
exception), said before anything is started. A port "in use" is one this test holds.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import READY, TWISTD, assert_reaped, child_env, wait_until
from twisted.internet import reactor
from twisted.internet.error import CannotListenError

from gaspar_tw import Config, ProcessPool, Producer
from gaspar_tw.addresses import TCPAddress, cannot
from gaspar_tw.config import MAX_WORKERS, WORKERS_PER_CPU, crowding_warning, default_worker_count
from gaspar_tw.errors import ListenError
from gaspar_tw.host.service import WorkerHost
from gaspar_tw.tap import tryListening

ECHO = "gaspar_tw.examples:echo"
#: TEST-NET-1 (RFC 5737): an address no machine here has.
NOT_OURS = "192.0.2.1"
IN_USE = "address already in use (is another gaspar running?)"
NOT_ASSIGNABLE = f"cannot assign requested address (is {NOT_OURS} an address of this machine?)"


@pytest.fixture
def held():
    """A port on 127.0.0.1 that something else listens on (as Twisted would: SO_REUSEADDR)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def run_twistd(tmp_path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TWISTD, *args],
        cwd=tmp_path,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def processes_naming(text: str) -> list[int]:
    """The processes whose command line contains C{text}."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


# -- before twistd starts anything: the pre-flight of makeService -------------------------------


def test_a_port_in_use_is_one_line_for_each_listener(held):
    port = f"tcp:{held}:interface=127.0.0.1"
    cases = [
        (Config(endpoint=port), f"cannot listen on {port}: {IN_USE}"),
        (Config(endpoint="tcp:0", framed_endpoint=port), f"cannot listen on {port}: {IN_USE}"),
        (
            Config(endpoint="tcp:0", metrics=port),
            f"cannot listen on {port}: address already in use (is another program using it?)",
        ),
        (
            Config(endpoint="tcp:0", bind=f"tcp://127.0.0.1:{held}"),
            f"cannot bind tcp://127.0.0.1:{held}: {IN_USE}",
        ),
    ]
    for config, message in cases:
        with pytest.raises(ListenError) as raised:
            tryListening(config)
        assert str(raised.value) == message
        assert raised.value.__cause__.errno == errno.EADDRINUSE


def test_an_address_not_this_machines_is_one_line():
    with pytest.raises(ListenError) as raised:
        tryListening(Config(endpoint=f"tcp:0:interface={NOT_OURS}"))
    assert str(raised.value) == f"cannot listen on tcp:0:interface={NOT_OURS}: {NOT_ASSIGNABLE}"
    with pytest.raises(ListenError) as raised:
        tryListening(Config(endpoint="tcp:0", bind=f"tcp://{NOT_OURS}:5570"))
    assert str(raised.value) == f"cannot bind tcp://{NOT_OURS}:5570: {NOT_ASSIGNABLE}"


def test_a_port_given_twice_is_one_line(held):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(ListenError) as raised:
        tryListening(Config(endpoint=f"tcp:{port}", framed_endpoint=f"tcp:{port}"))
    assert str(raised.value) == (
        f"cannot listen on tcp:{port}: address already in use"
        " (it is given twice: each listener needs its own port)"
    )


def test_a_unix_socket_in_a_missing_directory_is_one_line(tmp_path):
    path = tmp_path / "missing" / "gaspar.sock"
    with pytest.raises(ListenError) as raised:
        tryListening(Config(endpoint=f"unix:{path}"))
    assert str(raised.value) == f"cannot listen on unix:{path}: no such directory {path.parent}"


def test_free_addresses_pass_and_are_let_go():
    config = Config(
        endpoint="tcp:0:interface=127.0.0.1",
        framed_endpoint="tcp:0",
        metrics="tcp:0:interface=127.0.0.1",
        bind="tcp://127.0.0.1:*",
    )
    tryListening(config)
    tryListening(config)  # what it bound is let go


def test_permission_denied_below_1024_says_why():
    address = TCPAddress("", 80)
    error = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    assert cannot("listen on", address, error, address) == (
        "cannot listen on tcp:80: permission denied"
        " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    )


# -- library callers: the same line, as an exception chained from the cause --------------------


def test_a_producer_on_a_port_in_use_raises_one_line(held):
    producer = Producer(ECHO, f"tcp:{held}:interface=127.0.0.1", 1, reactor=reactor)
    with pytest.raises(ListenError) as raised:
        producer.privilegedStartService()
    assert str(raised.value) == f"cannot listen on tcp:{held}:interface=127.0.0.1: {IN_USE}"
    assert isinstance(raised.value.__cause__, CannotListenError)
    assert producer.workerPids() == []


@pytest.mark.parametrize(
    ("address", "message"),
    [(f"tcp://{NOT_OURS}:5570", NOT_ASSIGNABLE), ("tcp://127.0.0.1:{held}", IN_USE)],
)
def test_a_pool_that_cannot_bind_raises_one_line_and_starts_nothing(held, address, message):
    import zmq

    address = address.format(held=held)
    pool = ProcessPool(ECHO, 1, bind=address, reactor=reactor)
    with pytest.raises(ListenError) as raised:
        pool.startService()
    assert str(raised.value) == f"cannot bind {address}: {message}"
    assert isinstance(raised.value.__cause__, zmq.ZMQError)
    assert not pool.running and pool.workerPids() == [] and pool.hub is None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Producer(ECHO, "tcpp:1"),
            "endpoint must be a Twisted server endpoint such as tcp:10123, not 'tcpp:1'"
            " (unknown type 'tcpp': did you mean tcp:1?)",
        ),
        (
            lambda: Config(framed_endpoint="tcpp:10124"),
            "framed_endpoint must be a Twisted server endpoint such as tcp:10124, not"
            " 'tcpp:10124' (unknown type 'tcpp': did you mean tcp:10124?)",
        ),
        (
            lambda: Producer(ECHO, 70000),
            "endpoint must be a port number from 0 to 65535, not 70000",
        ),
        (
            lambda: ProcessPool(ECHO, bind="127.0.0.1:5570"),
            "bind must look like tcp://HOST:PORT (e.g. tcp://10.0.0.1:5570, port * for any free"
            " one), not '127.0.0.1:5570' (did you mean tcp://127.0.0.1:5570?)",
        ),
        (
            lambda: WorkerHost(ECHO, "127.0.0.1:5571"),
            "connect must look like tcp://HOST:PORT (e.g. tcp://10.0.0.1:5570, the producer's"
            " --bind), not '127.0.0.1:5571' (did you mean tcp://127.0.0.1:5571?)",
        ),
        (
            lambda: ProcessPool(ECHO, MAX_WORKERS + 1),
            f"workers must be at most {MAX_WORKERS:,}, not {MAX_WORKERS + 1:,}",
        ),
    ],
)
def test_library_callers_get_the_same_line_at_construction(build, message):
    with pytest.raises(ValueError) as raised:
        build()
    assert str(raised.value) == message


def test_more_than_four_workers_a_cpu_is_a_warning():
    cpus = default_worker_count()
    plural = "s" if cpus > 1 else ""
    assert crowding_warning(WORKERS_PER_CPU * cpus) is None
    assert crowding_warning(WORKERS_PER_CPU * cpus + 1) == (
        f"starting {WORKERS_PER_CPU * cpus + 1} workers on {cpus} usable CPU{plural} (more than"
        f" {WORKERS_PER_CPU} a CPU): fine for handlers that mostly wait, but busy ones only take"
        " turns (--workers)"
    )


# -- what only a process shows: stderr, the exit status, daemon mode ---------------------------


def test_a_usage_error_is_one_line_on_stderr_and_exit_1(tmp_path):
    # twistd itself would print its whole --help, then "twistd -n: ..." (its argv[0:2]).
    args = ["--connect", "127.0.0.1:5571"]
    done = run_twistd(tmp_path, "-n", "--pidfile=", "gaspar-worker", "--handler", ECHO, *args)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "twistd gaspar-worker: --connect must look like tcp://HOST:PORT (e.g."
        " tcp://10.0.0.1:5570, the producer's --bind), not '127.0.0.1:5571'"
        " (did you mean tcp://127.0.0.1:5571?)\n"
    )


def test_a_port_in_use_is_one_line_in_the_foreground(tmp_path, held):
    endpoint = f"tcp:{held}:interface=127.0.0.1"
    done = run_twistd(
        tmp_path, "-n", "--pidfile=", "gaspar", "--handler", ECHO, "--endpoint", endpoint
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"twistd gaspar: cannot listen on {endpoint}: {IN_USE}\n"


def test_a_port_in_use_is_one_line_in_daemon_mode_and_leaves_nothing(tmp_path, held):
    pidfile, logfile = tmp_path / "gaspar.pid", tmp_path / "gaspar.log"
    args = ["--pidfile", str(pidfile), "--logfile", str(logfile), "gaspar", "--handler", ECHO]
    done = run_twistd(tmp_path, *args, "--port", str(held))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"twistd gaspar: cannot listen on tcp:{held}: {IN_USE}\n"
    assert not pidfile.exists()
    assert processes_naming(str(logfile)) == []


def test_a_bind_address_not_this_machines_is_one_line(tmp_path):
    args = ["--endpoint", "tcp:0:interface=127.0.0.1", "--bind", f"tcp://{NOT_OURS}:5570"]
    done = run_twistd(tmp_path, "-n", "--pidfile=", "gaspar", "--handler", ECHO, *args)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"twistd gaspar: cannot bind tcp://{NOT_OURS}:5570: {NOT_ASSIGNABLE}\n"


def test_more_workers_than_four_a_cpu_starts_them_with_a_warning(tmp_path):
    log_path = tmp_path / "daemon.log"
    one_cpu = min(os.sched_getaffinity(0))
    workers = WORKERS_PER_CPU + 1
    argv = [*TWISTD, "-n", "--pidfile=", "gaspar", "--handler", ECHO, "--workers", str(workers)]
    argv += ["--endpoint", "tcp:0:interface=127.0.0.1", "--import-timeout", "0"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=child_env(),
            preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}),
        )
    try:
        wait_until(lambda: len(READY.findall(log_path.read_bytes())) == workers, 30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    text = log_path.read_text()
    warning = f"starting {workers} workers on 1 usable CPU (more than {WORKERS_PER_CPU} a CPU)"
    assert warning in text, text
    pids = [int(pid) for _, pid in READY.findall(log_path.read_bytes())]
    assert len(pids) == workers and process.returncode == 0, text
    assert_reaped(pids)
