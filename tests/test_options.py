"""``twistd gaspar`` options for reliability: defaults, flags, and values refused."""

import pytest
from twisted.python import usage

from gaspar_tw.options import Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--handler", "mod:fn", *args])
    return options


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
    "args",
    [("--timeout", "-1"), ("--timeout", "soon"), ("--idle-timeout", "nan"), ("--max-pending", "0")],
)
def test_bad_values_are_usage_errors(args):
    with pytest.raises(usage.UsageError, match=args[0]):
        parse(*args)


def test_workers_zero_needs_bind():
    options = parse("--workers", "0", "--bind", "tcp://127.0.0.1:5570")
    assert options["workers"] == 0 and options["bind"] == "tcp://127.0.0.1:5570"
    with pytest.raises(usage.UsageError, match="--bind"):
        parse("--workers", "0")
    with pytest.raises(usage.UsageError, match="--bind"):
        parse("--curve-keys", "keys")
    with pytest.raises(usage.UsageError, match="--workers"):
        parse("--workers", "-1", "--bind", "tcp://127.0.0.1:5570")


def test_producer_without_workers_needs_bind():
    from gaspar_tw.producer import Producer

    with pytest.raises(ValueError, match="bind"):
        Producer("gaspar_tw.examples:echo", None, 0)
    assert Producer("gaspar_tw.examples:echo", None, 0, bind="tcp://127.0.0.1:*").workers == 0


def test_unreadable_curve_keys_are_usage_errors(tmp_path):
    from gaspar_tw.host import tap as workerhost

    with pytest.raises(usage.UsageError, match="producer.key_secret"):
        parse("--bind", "tcp://127.0.0.1:5570", "--curve-keys", str(tmp_path))
    host = workerhost.Options()
    with pytest.raises(usage.UsageError, match="worker.key_secret"):
        host.parseOptions(
            ["--connect", "tcp://127.0.0.1:5570", "--handler", "m:f", "--curve-keys", str(tmp_path)]
        )
