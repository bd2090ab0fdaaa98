"""Exceptions a caller of gaspar_tw can receive."""

from __future__ import annotations


class GasparError(Exception):
    """Base class of every error gaspar_tw raises on purpose."""


class RemoteError(GasparError):
    """The handler raised inside a worker.

    ``type``, ``message`` and ``traceback`` are the remote exception's class name, ``str()``
    and formatted traceback text.
    """

    def __init__(self, type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message
        self.traceback = traceback


class WorkerCrashed(GasparError):
    """The worker process holding the request died before answering it."""


class RequestTimeout(GasparError, TimeoutError):
    """The request was not answered within C{--timeout} seconds.

    Either the handler ran that long on it (its worker was killed and replaced), or it waited
    that long for a worker. Also a built-in C{TimeoutError}.
    """


class Overloaded(GasparError):
    """Too many requests are already waiting; this one was refused."""


class ServiceStopped(GasparError):
    """The pool or producer is stopping or stopped and takes no more requests."""


class HandlerError(GasparError, ValueError):
    """A handler specification cannot be used (bad ``mod:fn``, not importable, not callable)."""


class ListenError(GasparError):
    """A port or C{bind} address cannot be listened on (in use, not this machine's, not
    permitted); the message is one line naming it, and the cause is chained."""
