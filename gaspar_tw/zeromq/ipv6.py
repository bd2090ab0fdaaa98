"""ZeroMQ's IPv6 option, which both ends of a worker link set from the address alone."""

from __future__ import annotations


def is_ipv6(address: str) -> bool:
    """Whether a ZeroMQ C{tcp://} address names an IPv6 host (C{tcp://[::1]:5570}). ZeroMQ
    binds and connects such an address only on a socket whose C{IPV6} option is set."""
    return address.startswith("tcp://[")
