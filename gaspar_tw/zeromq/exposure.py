"""Whether a worker link is exposed: reachable from other machines and not CURVE-protected."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ address such as C{tcp://127.0.0.1:5570} binds to loopback only."""
    if not address.startswith("tcp://"):
        return True  # ipc://, inproc://: not reachable from another machine
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name


def is_exposed(address: str, curve_keys: str | None) -> bool:
    """Whether anyone who reaches C{address} could read and write what travels on it: it is
    not loopback and has no CURVE keys. A pickled call never travels on such a link (a
    pickle runs code wherever it is read)."""
    return not curve_keys and not is_loopback(address)
