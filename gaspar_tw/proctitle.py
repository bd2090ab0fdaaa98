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
    host = getattr(address, "host", None)
    if host is None:
        name = getattr(address, "name", address)
        return f"gaspar-tw producer {os.fsdecode(name) if isinstance(name, bytes) else name}"
    if host in ("0.0.0.0", "::", ""):
        host = ""
    elif ":" in host:
        host = f"[{host}]"
    return f"gaspar-tw producer {host}:{address.port}"
