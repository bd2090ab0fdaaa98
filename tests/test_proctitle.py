"""Process titles of a live ``twistd gaspar``, as ``ps`` shows them (/proc/PID/cmdline)."""

from __future__ import annotations

from gaspar_tw.proctitle import address_text, producer_title


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def test_producer_and_workers_show_their_titles(daemon):
    assert cmdline(daemon.process.pid) == f"gaspar-tw producer {daemon.address}"
    for slot, pid in daemon.worker_pids.items():
        assert cmdline(pid) == f"gaspar-tw worker {slot} gaspar_tw.examples:echo"


def test_producer_title_leaves_out_a_wildcard_host():
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    assert producer_title(IPv4Address("TCP", "0.0.0.0", 10123)) == "gaspar-tw producer :10123"
    assert producer_title(IPv6Address("TCP", "::1", 5)) == "gaspar-tw producer [::1]:5"
    assert producer_title(UNIXAddress(b"/run/g.sock")) == "gaspar-tw producer /run/g.sock"
    assert address_text(IPv4Address("TCP", "0.0.0.0", 10123)) == "0.0.0.0:10123"
    assert address_text(UNIXAddress(b"/run/g.sock")) == "/run/g.sock"
