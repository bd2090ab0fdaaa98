"""``gaspar-tw`` mistakes: each is one line on stderr with the right exit status, no traceback.

Most run C{main(argv)} in this process; a few run the console script, for what only a process
shows. The daemon-side ones (a real producer) are in test_cli.py and test_cli_status.py.
"""

from __future__ import annotations

import http.server
import os
import platform
import re
import socket
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest
import zmq
from conftest import ROOT, child_env
from test_cli import GASPAR_TW
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError

from gaspar_tw.ops.cli import main
from gaspar_tw.ops.loadgen import LoadRun
from gaspar_tw.ops.targets import gaspar_endpoint
from gaspar_tw.version import checkout_version, version
from gaspar_tw.zeromq.curve import KEY_FILES, client_keys, server_keys


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """C{main(argv)}: its exit status, stdout and stderr."""
    try:
        status = main(list(argv))
    except SystemExit as e:  # argparse: --help, --version, usage errors
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line(capsys, argv: tuple[str, ...], status: int, line: str) -> None:
    assert run(capsys, *argv) == (status, "", line + "\n")


@pytest.fixture
def closed_port():
    """A loopback port that refuses connections: bound (so nobody else gets it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- usage errors: exit status 2 -----------------------------------------------------------------

ENDPOINT_FORMS = (
    "ENDPOINT must look like HOST:PORT (e.g. 127.0.0.1:10123; port 10123 if left out) or a"
    " Twisted client endpoint (e.g. tcp:127.0.0.1:10123, unix:/run/gaspar.sock), not "
)
TCP_FORM = "write tcp:HOST:PORT (e.g. tcp:127.0.0.1:10123)"


@pytest.mark.parametrize(
    "endpoint, message",
    [
        ("http://127.0.0.1:10123", ENDPOINT_FORMS + "the URL 'http://127.0.0.1:10123'"),
        ("foo:bar", ENDPOINT_FORMS + "'foo:bar'"),
        ("localhost:0", ENDPOINT_FORMS + "'localhost:0'"),
        ("localhost:65536", ENDPOINT_FORMS + "'localhost:65536'"),
        ("", ENDPOINT_FORMS + "''"),
        ("tcp:localhost", f"endpoint 'tcp:localhost' has no port: {TCP_FORM}"),
        ("tcp:x:abc", f"endpoint 'tcp:x:abc' has 'abc' where a number goes: {TCP_FORM}"),
        ("tcp:x:1:foo=1", f"endpoint 'tcp:x:1:foo=1' has an unknown option 'foo': {TCP_FORM}"),
        ("unix:", "endpoint 'unix:' has no path: write unix:PATH (e.g. unix:/run/gaspar.sock)"),
    ],
)
def test_bench_refuses_an_endpoint_it_cannot_use(capsys, endpoint, message):
    assert_one_line(capsys, ("bench", endpoint), 2, f"gaspar-tw bench: {message}")


def test_bench_takes_host_port_and_a_bare_host_means_the_gaspar_port():
    assert gaspar_endpoint("localhost") == ("tcp:localhost:10123", "localhost:10123")
    assert gaspar_endpoint("10.0.0.1:5") == ("tcp:10.0.0.1:5", "10.0.0.1:5")
    assert gaspar_endpoint("[::1]:5") == ("tcp:\\:\\:1:5", "[::1]:5")
    assert gaspar_endpoint("unix:/run/g.sock") == ("unix:/run/g.sock", "unix:/run/g.sock")


METRICS_FORM = (
    "gaspar-tw status: HOST:PORT must be the address of the daemon's --metrics port"
    " (e.g. 127.0.0.1:9100 for --metrics tcp:9100; there is no default), not "
)


@pytest.mark.parametrize(
    "address", ["localhost", "tcp:9100", "http://127.0.0.1", "http://127.0.0.1:x/", "a b:1"]
)
def test_status_refuses_an_address_that_is_not_host_port(capsys, address):
    assert_one_line(capsys, ("status", address), 2, METRICS_FORM + repr(address))


@pytest.mark.parametrize(
    "argv, line",
    [
        ((), "gaspar-tw: the following arguments are required: COMMAND; see gaspar-tw --help"),
        (
            ("bench", "x", "-c", "0"),
            "gaspar-tw bench: argument --concurrency/-c: must be at least 1, not 0;"
            " see gaspar-tw bench --help",
        ),
        (
            ("bench", "x", "-n", "many"),
            "gaspar-tw bench: argument --requests/-n: must be a whole number, not 'many';"
            " see gaspar-tw bench --help",
        ),
        (
            ("bench", "x", "--size", "-1"),
            "gaspar-tw bench: argument --size/-s: must be 0 or more bytes, not -1;"
            " see gaspar-tw bench --help",
        ),
        (
            ("status", "x:1", "--timeout", "0"),
            "gaspar-tw status: argument --timeout: must be a number of seconds above 0,"
            " not '0'; see gaspar-tw status --help",
        ),
    ],
)
def test_argparse_errors_are_one_line_too(capsys, argv, line):
    assert_one_line(capsys, argv, 2, line)


def test_a_usage_error_from_the_console_script_is_one_line_and_exit_2():
    result = subprocess.run(
        [str(GASPAR_TW), "bench", "http://127.0.0.1:10123"],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"gaspar-tw bench: {ENDPOINT_FORMS}the URL 'http://127.0.0.1:10123'\n")


# -- bench: nothing listening ----------------------------------------------------------------


def test_bench_stops_at_once_when_nothing_accepts_the_connection(closed_port):
    result = subprocess.run(
        [str(GASPAR_TW), "bench", f"127.0.0.1:{closed_port}", "-n", "1000000", "--json"],
        capture_output=True,
        text=True,
        timeout=30,  # a million refused requests would take minutes
        env=child_env(),
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"gaspar-tw bench: cannot connect to 127.0.0.1:{closed_port}: connection refused"
        " (is the producer running?)\n"
    )


class Sends:
    """A C{send} for L{LoadRun} whose Deferreds the test fires."""

    def __init__(self) -> None:
        self.waiting: list[Deferred] = []

    def __call__(self, payload: bytes) -> Deferred:
        self.waiting.append(Deferred())
        return self.waiting[-1]

    def fire(self, outcome) -> None:
        d = self.waiting.pop(0)
        d.errback(outcome) if isinstance(outcome, Exception) else d.callback(outcome)


def test_a_load_run_stops_when_its_first_requests_cannot_connect():
    sends = Sends()
    load = LoadRun(None, sends, b"x", 1000, 4, stop_if_unreachable=True)
    results: list = []
    load.start().addCallback(results.append)
    while sends.waiting:
        sends.fire(ConnectionRefusedError())
    [result] = results
    assert isinstance(result.unreachable, ConnectionRefusedError)
    assert load.started == 4 and result.errors == 4


def test_a_load_run_that_got_a_reply_runs_on_through_refusals():
    sends = Sends()
    load = LoadRun(None, sends, b"x", 20, 4, stop_if_unreachable=True)
    results: list = []
    load.start().addCallback(results.append)
    sends.fire(b"reply")
    while sends.waiting:
        sends.fire(ConnectionRefusedError())
    [result] = results
    assert result.unreachable is None and load.started == 20
    assert result.ok == 1 and result.errors == 19


# -- status: nothing there, or not a gaspar_tw metrics port --------------------------------------


@contextmanager
def http_server(code: int, body: bytes):
    """A loopback HTTP server answering every GET with C{code} and C{body}; its HOST:PORT."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(code)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_status_of_a_closed_port_says_connection_refused(capsys, closed_port):
    address = f"127.0.0.1:{closed_port}"
    line = (
        f"gaspar-tw status: cannot connect to {address}: connection refused"
        " (is the daemon running, with --metrics on this address?)"
    )
    assert_one_line(capsys, ("status", address), 1, line)
    assert_one_line(capsys, ("status", f"http://{address}/metrics"), 1, line)  # the logged URL


@pytest.mark.parametrize(
    "code, body, why",
    [
        (404, b"no", "answered 404 Not Found"),
        (200, b"<html>hello</html>", "answered no JSON"),
        (200, b'{"hello": 1}', "answered JSON that is not a gaspar_tw status"),
    ],
)
def test_status_of_another_http_server_says_it_is_not_a_metrics_port(capsys, code, body, why):
    with http_server(code, body) as address:
        line = (
            f"gaspar-tw status: http://{address}/status {why}:"
            f" is {address} a gaspar_tw --metrics port?"
        )
        assert_one_line(capsys, ("status", address), 1, line)


def test_status_of_a_port_that_does_not_speak_http(capsys):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        def answer() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(b"hello\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        line = (
            f"gaspar-tw status: {address} does not answer HTTP: give the daemon's --metrics"
            " address, not its gaspar port"
        )
        assert_one_line(capsys, ("status", address), 1, line)
        thread.join(10)


def test_status_gives_up_after_its_timeout(capsys):
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts in the kernel, never answers
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        line = f"gaspar-tw status: no answer from {address} within 0.2 s (--timeout)"
        assert_one_line(capsys, ("status", address, "--timeout", "0.2"), 1, line)


# -- keygen ----------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_private_keys_and_will_not_overwrite_them(capsys, tmp_path):
    keys = tmp_path / "keys"
    status, out, err = run(capsys, "keygen", str(keys))
    assert status == 0 and err == ""
    assert out.splitlines()[:4] == [str(keys / name) for name in KEY_FILES]
    assert sorted(os.listdir(keys)) == sorted(KEY_FILES)  # nothing left behind
    assert mode(keys) == 0o700
    assert mode(keys / "producer.key_secret") == mode(keys / "worker.key_secret") == 0o600
    assert server_keys(str(keys)) and client_keys(str(keys))  # the producer's, a worker's
    before = {name: (keys / name).read_bytes() for name in KEY_FILES}

    line = (
        f"gaspar-tw keygen: {keys} already holds producer.key, producer.key_secret, worker.key,"
        " worker.key_secret: --force replaces them (every worker host then needs the new keys)"
    )
    assert_one_line(capsys, ("keygen", str(keys)), 1, line)
    assert {name: (keys / name).read_bytes() for name in KEY_FILES} == before

    (keys / "worker.key_secret").chmod(0o644)
    status, out, err = run(capsys, "keygen", str(keys), "--force")
    assert status == 0 and err == ""
    for name in KEY_FILES:
        assert (keys / name).read_bytes() != before[name]
    assert sorted(os.listdir(keys)) == sorted(KEY_FILES)
    assert mode(keys / "producer.key_secret") == mode(keys / "worker.key_secret") == 0o600


def test_keygen_where_it_cannot_write_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    line = f"gaspar-tw keygen: {tmp_path / 'file'} is not a directory"
    assert_one_line(capsys, ("keygen", str(tmp_path / "file")), 1, line)
    below = tmp_path / "file" / "keys"
    line = f"gaspar-tw keygen: cannot write keys in {below}: not a directory"
    assert_one_line(capsys, ("keygen", str(below)), 1, line)


# -- version ---------------------------------------------------------------------------------


def test_version_names_gaspar_tw_and_what_it_runs_on(capsys):
    project = (ROOT / "pyproject.toml").read_text()
    expected = re.search(r'^version = "([^"]+)"$', project, re.MULTILINE).group(1)
    assert version() == expected
    # A source checkout without an installed copy reads pyproject.toml (with 3.11's tomllib).
    assert checkout_version() == (expected if sys.version_info >= (3, 11) else None)
    line = (
        f"gaspar-tw {expected} (Twisted {metadata.version('twisted')}, pyzmq {zmq.pyzmq_version()},"
        f" libzmq {zmq.zmq_version()}, Python {platform.python_version()})"
    )
    assert run(capsys, "--version") == (0, line + "\n", "")
