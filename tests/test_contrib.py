"""contrib/: the unit files and the Dockerfile run commands that twistd gaspar accepts, and
their timeouts leave the drain its time."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from conftest import ROOT

from gaspar_tw.options import Options

CONTRIB = ROOT / "contrib"


def unit(name: str) -> dict[str, str]:
    """A unit file's settings (continued lines joined; the last of a name wins)."""
    text = (CONTRIB / "systemd" / name).read_text().replace("\\\n", " ")
    return dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))


def gaspar_options(argv: list[str]) -> Options:
    """twistd's arguments after ``gaspar``, parsed as twistd gaspar does."""
    options = Options()
    options.parseOptions(argv[argv.index("gaspar") + 1 :])
    return options


@pytest.mark.parametrize("name", ["gaspar-tw.service", "gaspar-tw-activated.service"])
def test_the_units_notify_reload_and_outlast_the_drain(name):
    settings = unit(name)
    assert settings["Type"] == "notify" and settings["KillMode"] == "mixed"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    argv = shlex.split(settings["ExecStart"])
    assert argv[1:4] == ["-n", "--pidfile=", "gaspar"]
    drain = float(argv[argv.index("--drain-timeout") + 1])
    assert int(settings["TimeoutStopSec"]) > drain


def test_the_plain_unit_runs_a_command_twistd_gaspar_accepts():
    argv = shlex.split(unit("gaspar-tw.service")["ExecStart"])
    assert gaspar_options(argv).config.endpoint == "tcp:10123:backlog=1024"


def test_the_activated_unit_listens_on_the_socket_its_socket_unit_makes():
    socket_unit = unit("gaspar-tw-activated.socket")
    assert socket_unit["Service"] == "gaspar-tw-activated.service"
    assert socket_unit["ListenStream"] == "10123"
    argv = shlex.split(unit("gaspar-tw-activated.service")["ExecStart"])
    assert argv[argv.index("--endpoint") + 1] == "systemd:domain=INET:index=0"


def test_the_dockerfile_runs_twistd_gaspar_on_the_ports_it_exposes():
    text = (CONTRIB / "Dockerfile").read_text()
    instructions = dict(re.findall(r"^([A-Z]+) (.*)$", text, re.MULTILINE))
    argv = json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions["CMD"])
    assert argv[:4] == ["twistd", "-n", "--pidfile=", "gaspar"]
    config = gaspar_options(argv).config
    assert instructions["EXPOSE"].split() == ["10123", "9100"]
    assert config.endpoint.startswith("tcp:10123:") and config.metrics == "tcp:9100"
    assert instructions["STOPSIGNAL"] == "SIGTERM" and instructions["USER"] != "root"
