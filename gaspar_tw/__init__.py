"""gaspar_tw: take CPU-heavy work off a Twisted reactor and spread it over worker processes.

Public names are loaded lazily, so that a worker process (``python -m gaspar_tw.worker``)
imports neither Twisted nor ZeroMQ glue it does not use; importing any of them installs no
reactor (a pool looks the global one up when it starts).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ProcessPool": "gaspar_tw.pool",
    "Producer": "gaspar_tw.producer",
    "Config": "gaspar_tw.config",
    "Consumer": "gaspar_tw.consumer",
    "RemoteError": "gaspar_tw.errors",
    "WorkerCrashed": "gaspar_tw.errors",
    "Overloaded": "gaspar_tw.errors",
    "RequestTimeout": "gaspar_tw.errors",
    "ServiceStopped": "gaspar_tw.errors",
    "HandlerError": "gaspar_tw.errors",
    "ListenError": "gaspar_tw.errors",
    "GasparClient": "gaspar_tw.client",
    "client": "gaspar_tw.client",
    "deferToProcess": "gaspar_tw.default_pool",
    "getProcessPool": "gaspar_tw.default_pool",
    "suggestProcessPoolSize": "gaspar_tw.default_pool",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from gaspar_tw import client
    from gaspar_tw.client import GasparClient
    from gaspar_tw.config import Config
    from gaspar_tw.consumer import Consumer
    from gaspar_tw.default_pool import deferToProcess, getProcessPool, suggestProcessPoolSize
    from gaspar_tw.errors import (
        HandlerError,
        ListenError,
        Overloaded,
        RemoteError,
        RequestTimeout,
        ServiceStopped,
        WorkerCrashed,
    )
    from gaspar_tw.pool import ProcessPool
    from gaspar_tw.producer import Producer


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from gaspar_tw.version import version

        return version()
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'gaspar_tw' has no attribute {name!r}")
    module = import_module(module_name)
    value = module if module_name.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value
