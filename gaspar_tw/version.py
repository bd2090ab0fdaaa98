"""Which gaspar_tw this is, and what it runs on: for ``--version`` and C{/status}."""

from __future__ import annotations

import platform
from functools import cache
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "gaspar_tw"


@cache
def version() -> str:
    """gaspar_tw's version: the installed distribution's, else a source checkout's."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return checkout_version() or "unknown"


def checkout_version() -> str | None:
    """The version in the C{pyproject.toml} beside the package, if this is a source checkout."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: an installed distribution has its version
        return None
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        with path.open("rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return project.get("version") if project.get("name") == DISTRIBUTION else None


def runtime() -> dict[str, str]:
    """The versions of what gaspar_tw runs on: Twisted, pyzmq, libzmq and Python."""
    import zmq
    from twisted.copyright import version as twisted_version

    return {
        "Twisted": twisted_version,
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "Python": platform.python_version(),
    }


def version_line(program: str) -> str:
    """C{PROGRAM VERSION (Twisted X, pyzmq Y, libzmq Z, Python W)}, as ``--version`` prints."""
    parts = ", ".join(f"{name} {number}" for name, number in runtime().items())
    return f"{program} {version()} ({parts})"
