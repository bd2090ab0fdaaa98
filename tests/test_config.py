"""One configuration: the settings' defaults and checks, shared by the options and the services."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import fields

import pytest
from conftest import child_env

from gaspar_tw import Config, ProcessPool, Producer
from gaspar_tw.host.service import WorkerHost
from gaspar_tw.options import HostOptions, Options


def test_the_twistd_options_default_to_the_config():
    options = Options()
    options.parseOptions(["--handler", "m:f"])
    config = options.config
    for f in fields(Config):
        if "gaspar" in f.metadata["commands"] and f.metadata["flag"]:
            assert options[f.metadata["flag"]] == getattr(Config, f.name), f.name
    assert config.endpoint == "tcp:10123:backlog=1024"
    assert config.proctitle and config.retry_on_crash
    given = Options()
    given.parseOptions(["--handler", "m:f", "--timeout", "2.5", "--no-retry-on-crash", "-w", "3"])
    assert (given.config.timeout, given.config.retry_on_crash, given.config.workers) == (
        2.5,
        False,
        3,
    )


def test_a_producer_a_pool_and_a_host_take_the_same_settings():
    config = Config(timeout=3.0, window=4, max_pending=7, workers=2)
    assert ProcessPool("gaspar_tw.examples:echo", config=config).config == config
    producer = Producer("gaspar_tw.examples:echo", None, config=config, drain_timeout=1.0)
    assert producer.config.timeout == 3.0 and producer.config.drain_timeout == 1.0
    assert producer.endpoint is None and producer.workers == 2
    host = HostOptions()
    host.parseOptions(["--handler", "m:f", "--connect", "tcp://127.0.0.1:5570", "-w", "2"])
    worker_host = WorkerHost("gaspar_tw.examples:echo", config=host.config)
    assert worker_host.config.connect == "tcp://127.0.0.1:5570"
    assert worker_host.config.worker_count == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"timeout": -1}, "timeout must be 0 or more \\(0 turns it off\\) seconds, not -1"),
        ({"timeout": math.inf}, "timeout must be a finite number"),
        ({"idle_timeout": math.nan}, "idle_timeout must be a finite number"),
        ({"max_pending": 0}, "max_pending must be at least 1, not 0"),
        ({"workers": "2"}, "workers must be a whole number"),
        ({"log_format": "xml"}, "log_format must be one of text, json"),
        ({"workers": 0}, "0 only with bind"),
        ({"curve_keys": "keys"}, "curve_keys protects bind"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(settings, message):
    with pytest.raises(ValueError, match=message):
        Config(**settings)


def test_an_unknown_setting_suggests_the_closest_name():
    with pytest.raises(TypeError, match="unknown setting 'timout' \\(did you mean 'timeout'\\?\\)"):
        Producer("gaspar_tw.examples:echo", None, timout=3)
    with pytest.raises(TypeError, match="unknown setting 'colour'$"):
        ProcessPool("gaspar_tw.examples:echo", colour="red")


@pytest.mark.parametrize(
    ("service", "setting"),
    [(ProcessPool, "endpoint"), (ProcessPool, "idle_timeout"), (Producer, "metrics")],
)
def test_a_setting_the_service_would_ignore_is_refused(service, setting):
    with pytest.raises(TypeError, match=f"{service.__name__} takes no setting {setting!r}"):
        service("gaspar_tw.examples:echo", **{setting: "tcp:9100"})
    with pytest.raises(TypeError, match="'timeout'"):
        WorkerHost("gaspar_tw.examples:echo", "tcp://127.0.0.1:5570", timeout=3)


def test_no_limit_is_none_or_zero_and_settings_read_as_attributes():
    pool = ProcessPool("gaspar_tw.examples:echo", timeout=None, max_pending=9)
    assert pool.timeout is None and pool.config.timeout_or_none is None and pool.max_pending == 9
    producer = Producer("gaspar_tw.examples:echo", None, idle_timeout=0, drain_timeout=2)
    assert producer.idle_timeout == 0 and producer.drain_timeout == 2 and producer.endpoint is None
    with pytest.raises(ValueError, match="retry_on_crash must be True or False"):
        ProcessPool("gaspar_tw.examples:echo", retry_on_crash="no")


@pytest.mark.parametrize("command", ["gaspar", "gaspar-worker"])
def test_help_loads_no_dispatcher_protocol_zeromq_or_reactor(command):
    script = f"""
import sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted import plugins
[maker] = [p for p in getPlugins(IServiceMaker, plugins) if p.tapname == {command!r}]
usage = str(maker.options())
assert "--handler" in usage and "--workers" in usage, usage
heavy = ("gaspar_tw.dispatch", "gaspar_tw.server", "gaspar_tw.workers", "gaspar_tw.producer",
         "gaspar_tw.pool", "zmq", "txzmq", "twisted.internet.reactor")
loaded = sorted(m for m in sys.modules if m.startswith(heavy))
print("loaded", loaded)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "loaded []" in done.stdout, done.stdout
