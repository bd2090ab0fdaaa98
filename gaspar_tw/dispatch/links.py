"""A ready worker as the dispatcher sees it: how to reach it, and the requests it holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def _noop(*args, **kwargs) -> None:
    pass


@dataclass(eq=False)
class WorkerLink:
    """Where to send a worker's work, how to end it, and what it holds.

    C{outstanding} keeps request ids in the order they were sent; a worker answers in that
    order (a request cancelled before it started is answered L{messages.SKIPPED}), but may
    hold finished replies back while it runs the next request, so its first id is the
    request it is running now or one it has finished. C{running}, where given (a local
    worker: L{gaspar_tw.wire.running}), tells which: it returns the id of the request of a
    mixed message (one carrying calls) the worker is running now, or 0 (between requests,
    or running a plain message's request); C{None} (a remote worker): the first id is taken
    for the running one. C{send} takes a list of messages (work, or a cancel). C{kill()}
    asks the worker's owner to end the process (the dispatcher has already given up on it),
    having it write its stack first where it can (a stuck worker); C{kill(stack=False)}, at
    once (the call it runs was cancelled). C{local}: a worker process of this pool's own
    (over its private C{ipc://} channel), not a remote one; only local workers are sent
    calls while the dispatcher keeps calls local (L{Dispatcher.keepCallsLocal}).
    """

    token: int
    pid: int
    send: Callable[[list], None]
    kill: Callable[..., None] = _noop
    #: Called once a retiring worker (L{Dispatcher.retire}) has answered all it held.
    drained: Callable[[], None] = _noop
    local: bool = False
    running: Callable[[], int] | None = None
    outstanding: dict = field(default_factory=dict)
    retiring: bool = False
    #: The request first at the last sweep, and the sweep count stamped when it became so.
    watched: int | None = None
    watchedAt: int = 0


def runningRequest(link: WorkerLink) -> int | None:
    """The id of the request C{link}'s worker is running, as far as the dispatcher can tell:
    the one it publishes (L{WorkerLink.running}), else its first outstanding one (C{None}
    if it holds none)."""
    if link.running is not None:
        running = link.running()
        if running in link.outstanding:
            return running
    return next(iter(link.outstanding), None)


def load(link: WorkerLink) -> int:
    """The requests C{link} holds: the key that orders workers least-loaded first."""
    return len(link.outstanding)
