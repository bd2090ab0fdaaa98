"""``twistd gaspar`` and ``gaspar-worker`` options: defaults, flags, and each mistake's one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TWISTD, child_env

import gaspar_tw
from gaspar_tw.options import HostOptions, Options

WORKER = ("--connect", "tcp://127.0.0.1:5570")
BIND_FORM = "must look like tcp://HOST:PORT (e.g. tcp://10.0.0.1:5570, port * for any free one)"
CONNECT_FORM = "must look like tcp://HOST:PORT (e.g. tcp://10.0.0.1:5570, the producer's --bind)"
ENDPOINT = "must be a Twisted server endpoint such as"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--handler", "mod:fn", *args])
    return options


def parse_host(*args: str) -> HostOptions:
    options = HostOptions()
    options.parseOptions(["--handler", "mod:fn", *args])
    return options


def refused(parser, *args: str) -> str:
    """The one line a command line is refused with (the SystemExit twistd exits 1 with)."""
    with pytest.raises(SystemExit) as exited:
        parser(*args)
    assert isinstance(exited.value.code, str), exited.value.code
    return exited.value.code


def test_defaults():
    options = parse()
    assert options["timeout"] == 30.0 and options["idle-timeout"] == 30.0
    assert options["drain-timeout"] == 10.0 and options["max-pending"] is None
    assert options["retry-on-crash"] is True
    # Room in the listen queue for 64+ concurrent one-connection-per-request clients.
    assert options["endpoint"] == "tcp:10123:backlog=1024"


def test_flags_and_values():
    options = parse("--no-retry-on-crash", "--timeout", "0", "--max-pending", "5")
    assert options["retry-on-crash"] is False
    assert options["timeout"] == 0.0 and options["max-pending"] == 5
    assert parse("--no-retry-on-crash", "--retry-on-crash")["retry-on-crash"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "0"), "--port must be from 1 to 65535, not 0"),
        (("--port", "70000"), "--port must be from 1 to 65535, not 70000"),
        (("--port", "http"), "--port must be a whole number, not 'http'"),
        (("--timeout", "inf"), "--timeout must be a finite number of seconds, not inf"),
        (("--timeout", "nan"), "--timeout must be a finite number of seconds, not nan"),
        (("--timeout", "-1"), "--timeout must be 0 or more (0 turns it off) seconds, not -1"),
        (("--timeout", "soon"), "--timeout must be a number of seconds, not 'soon'"),
        (("--idle-timeout", "nan"), "--idle-timeout must be a finite number of seconds, not nan"),
        (("--max-pending", "0"), "--max-pending must be at least 1, not 0"),
        (("--workers", "abc"), "--workers must be a whole number, not 'abc'"),
        (("--workers", "1000000"), "--workers must be at most 1,024, not 1,000,000"),
        (
            ("--workers", "-1", "--bind", "tcp://127.0.0.1:5570"),
            "--workers must be at least 0, not -1",
        ),
        (("--workers", "0"), "--workers 0 needs --bind (remote workers)"),
        (("--curve-keys", "keys"), "--curve-keys protects --bind; give --bind too"),
        (
            ("--endpoint", "10131"),
            f"--endpoint {ENDPOINT} tcp:10123, not '10131' (did you mean tcp:10131?)",
        ),
        (
            ("--endpoint", "tcp:abc"),
            f"--endpoint {ENDPOINT} tcp:10123, not 'tcp:abc' ('abc' is not a whole number)",
        ),
        (
            ("--endpoint", "tcp:"),
            f"--endpoint {ENDPOINT} tcp:10123, not 'tcp:' (a port number is missing)",
        ),
        (
            ("--endpoint", "tcp:70000"),
            f"--endpoint {ENDPOINT} tcp:10123, not 'tcp:70000' (port 70000 is not from 0 to 65535)",
        ),
        (
            ("--endpoint", "tcp:10123:bogus=1"),
            f"--endpoint {ENDPOINT} tcp:10123, not 'tcp:10123:bogus=1' (unknown option 'bogus')",
        ),
        (
            ("--endpoint", "carrier-pigeon:1"),
            f"--endpoint {ENDPOINT} tcp:10123, not 'carrier-pigeon:1' (unknown type"
            " 'carrier-pigeon'; known ones include tcp, tcp6, unix, ssl, systemd)",
        ),
        (
            ("--framed-endpoint", "tcpp:10124"),
            f"--framed-endpoint {ENDPOINT} tcp:10124, not 'tcpp:10124'"
            " (unknown type 'tcpp': did you mean tcp:10124?)",
        ),
        (
            ("--metrics", "9100"),
            f"--metrics {ENDPOINT} tcp:9100:interface=127.0.0.1, not '9100'"
            " (did you mean tcp:9100?)",
        ),
        (
            ("--bind", "127.0.0.1:5570"),
            f"--bind {BIND_FORM}, not '127.0.0.1:5570' (did you mean tcp://127.0.0.1:5570?)",
        ),
        (
            ("--bind", "tcp://127.0.0.1:99999"),
            f"--bind {BIND_FORM}, not 'tcp://127.0.0.1:99999'"
            " (the port must be from 1 to 65535 or *, not 99999)",
        ),
        (
            ("--bind", "tcp://127.0.0.1"),
            f"--bind {BIND_FORM}, not 'tcp://127.0.0.1' (the port is missing)",
        ),
        (("--bind", "tcp://:5570"), f"--bind {BIND_FORM}, not 'tcp://:5570' (the host is missing)"),
        (
            ("--bind", "udp://10.0.0.1:5570"),
            f"--bind {BIND_FORM}, not 'udp://10.0.0.1:5570' (udp:// is not served; use tcp://)",
        ),
        (("--bind", "eth0"), f"--bind {BIND_FORM}, not 'eth0'"),
        (
            ("--colour", "red"),
            "option --colour not recognized (twistd gaspar --help lists the options)",
        ),
        (("10123",), "unexpected argument '10123': every value follows its --option"),
    ],
)
def test_each_mistake_is_one_line_naming_the_flag(args, message):
    assert refused(parse, *args) == f"twistd gaspar: {message}"


def test_the_handler_is_required():
    assert refused(Options().parseOptions, []) == (
        "twistd gaspar: --handler MODULE:FUNCTION is required"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--connect", "127.0.0.1:5571"),
            f"--connect {CONNECT_FORM}, not '127.0.0.1:5571' (did you mean tcp://127.0.0.1:5571?)",
        ),
        (
            ("--connect", "tcp://10.0.0.1:*"),
            f"--connect {CONNECT_FORM}, not 'tcp://10.0.0.1:*'"
            " (port * is for --bind: give the port the producer bound)",
        ),
        (
            ("--connect", "tcp://*:5570"),
            f"--connect {CONNECT_FORM}, not 'tcp://*:5570'"
            " (host * is for --bind: give the producer's address)",
        ),
        (
            ("--connect", "tcp://10.0.0.1:0"),
            f"--connect {CONNECT_FORM}, not 'tcp://10.0.0.1:0'"
            " (the port must be from 1 to 65535, not 0)",
        ),
        ((), "--connect tcp://HOST:PORT is required"),
        ((*WORKER, "--workers", "0"), "--workers must be at least 1, not 0"),
        ((*WORKER, "--workers", "2000"), "--workers must be at most 1,024, not 2,000"),
        (
            (*WORKER, "--port", "1"),
            "option --port not recognized (twistd gaspar-worker --help lists the options)",
        ),
    ],
)
def test_each_worker_host_mistake_is_one_line(args, message):
    assert refused(parse_host, *args) == f"twistd gaspar-worker: {message}"


@pytest.mark.parametrize(
    "args",
    [
        ("--bind", "tcp://*:5570"),
        ("--bind", "tcp://127.0.0.1:*"),
        ("--bind", "tcp://[::1]:5570"),
        ("--bind", "ipc:///run/gaspar/workers"),
        ("--endpoint", "unix:/run/gaspar.sock"),
        ("--endpoint", "tcp6:0:interface=\\:\\:1"),
        ("--framed-endpoint", "tcp:10124:interface=127.0.0.1"),
        ("--metrics", "tcp:9100:interface=127.0.0.1"),
    ],
)
def test_right_addresses_are_taken_as_given(args):
    flag, value = args
    assert parse(*args)[flag.removeprefix("--")] == value


def test_right_connect_addresses_are_taken():
    for address in ("tcp://gaspar.example:5570", "tcp://[::1]:5570", "ipc:///run/gaspar/w"):
        assert parse_host("--connect", address).config.connect == address


@pytest.mark.parametrize("options", [Options, HostOptions])
def test_help_still_exits_0(options, capsys):
    with pytest.raises(SystemExit) as exited:
        options().parseOptions(["--help"])
    assert exited.value.code == 0
    assert "--handler" in capsys.readouterr().out


def test_checking_endpoints_installs_no_reactor():
    # twistd installs the reactor after parsing (unless --reactor is given): parsing must not.
    script = """
import sys
from gaspar_tw.options import Options
options = Options()
options.parseOptions(["--handler", "m:f", "--endpoint", "tcp:10123:interface=127.0.0.1",
                      "--framed-endpoint", "unix:/tmp/framed.sock", "--metrics", "tcp:9100"])
try:
    Options().parseOptions(["--handler", "m:f", "--endpoint", "tcpp:1"])
except SystemExit:
    pass
print("reactor", "twisted.internet.reactor" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reactor False"


def test_producer_without_workers_needs_bind():
    from gaspar_tw.producer import Producer

    with pytest.raises(ValueError, match="bind"):
        Producer("gaspar_tw.examples:echo", None, 0)
    assert Producer("gaspar_tw.examples:echo", None, 0, bind="tcp://127.0.0.1:*").workers == 0


def test_unreadable_curve_keys_are_one_line(tmp_path):
    message = refused(parse, "--bind", "tcp://127.0.0.1:5570", "--curve-keys", str(tmp_path))
    assert message.startswith("twistd gaspar: --curve-keys: ") and "producer.key_secret" in message
    message = refused(parse_host, *WORKER, "--curve-keys", str(tmp_path))
    assert message.startswith("twistd gaspar-worker: --curve-keys: ")
    assert "worker.key_secret" in message


@pytest.mark.parametrize("command", ["gaspar", "gaspar-worker"])
def test_version_names_gaspar_tw_and_what_it_runs_on(command):
    from twisted import version as twisted_version

    done = subprocess.run(
        [*TWISTD, command, "--version"], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"twistd {command}: gaspar_tw {gaspar_tw.__version__} (Twisted "), line
    assert twisted_version.short() in line and "pyzmq" in line and "Python" in line


def test_port_and_endpoint_together_are_refused_and_port_alone_is_the_endpoint():
    assert refused(parse, "--port", "10130", "--endpoint", "tcp:10131") == (
        "twistd gaspar: give --port or --endpoint, not both (--endpoint says the port)"
    )
    assert parse("--port", "10130")["endpoint"] == "tcp:10130:backlog=1024"
    assert parse()["endpoint"] == "tcp:10123:backlog=1024"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--pythonpath", "/nonexistent-gaspar-dir"),
            "--pythonpath must name directories that exist: no directory '/nonexistent-gaspar-dir'",
        ),
        (
            ("--pythonpath", __file__),
            f"--pythonpath must name directories, not the file {__file__!r}:"
            f" give {str(Path(__file__).parent)!r}",
        ),
        (
            ("--endpoint", "tcp6:10126:interface=::1"),
            "--endpoint must be a Twisted server endpoint such as tcp:10123, not"
            " 'tcp6:10126:interface=::1' (an IPv6 interface's colons must be escaped:"
            r" interface=\:\:1)",
        ),
        (
            ("--workers", "0", "--bind", "tcp://127.0.0.1:5570", "--curve-keys", "/nonexistent-k"),
            "--curve-keys: no directory /nonexistent-k (make the keys with: gaspar-tw keygen DIR)",
        ),
    ],
)
def test_more_mistakes_are_one_line(args, message):
    assert refused(parse, *args) == f"twistd gaspar: {message}"


def test_curve_keys_in_a_directory_without_them_say_so(tmp_path):
    assert refused(
        parse, "--workers", "0", "--bind", "tcp://127.0.0.1:5570", "--curve-keys", str(tmp_path)
    ) == (
        f"twistd gaspar: --curve-keys: {tmp_path} holds no producer.key_secret"
        " (gaspar-tw keygen DIR makes it)"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "./mymod.py:work",
            "handler './mymod.py:work' names a file: give its module's name, 'mymod:work'",
        ),
        (
            "sub/mymod.py:work",
            "handler 'sub/mymod.py:work' names a file: give its module's"
            " name, 'mymod:work' (with --pythonpath sub)",
        ),
        (
            "mymod.work",
            "handler 'mymod.work' must look like 'module:function': did you mean 'mymod:work'?",
        ),
    ],
)
def test_a_handler_given_as_a_file_or_with_a_dot_says_what_to_write(spec, message):
    from gaspar_tw.errors import HandlerError
    from gaspar_tw.handler import load_handler

    with pytest.raises(HandlerError) as failed:
        load_handler(spec)
    assert str(failed.value) == message
