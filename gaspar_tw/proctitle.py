"""Process titles for ``ps``: ``gaspar-tw producer :10123``, ``gaspar-tw worker 0 mod:fn``.

Titles are set with setproctitle; without it (not installed, or it fails) nothing happens.
"""

from __future__ import annotations

import os


def set_title(title: str) -> None:
    """Show C{title} as this process's command line, if setproctitle can."""
    try:
        from setproctitle import setproctitle

        setproctitle(title)
    except Exception:  # ImportError, or a platform it does not support
        pass


def worker_title(slot: int, handler_spec: str) -> str:
    return f"gaspar-tw worker {slot} {handler_spec}"


def producer_title(address=None) -> str:
    """C{gaspar-tw producer HOST:PORT}; the host is left out when bound to every interface."""
    if address is None:
        return "gaspar-tw producer"
    return f"gaspar-tw producer {address_text(address, hide_wildcard=True)}"


def address_text(address, *, hide_wildcard: bool = False) -> str:
    """C{127.0.0.1:10123}, C{[::1]:10123}, or a unix socket's path (C{:10123} if hidden)."""
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", address)
        return os.fsdecode(name) if isinstance(name, bytes) else str(name)
    if hide_wildcard and host in ("0.0.0.0", "::", ""):
        return f":{address.port}"
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
