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
