"""What the process pool asks of every place its workers come from: L{IWorkerSource}."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Interface


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process as C{/status} shows it.

    C{where} is C{"local"} or the remote worker's host name; C{slot} its place in a local
    pool (C{None} for a remote one); C{ready_at} (epoch seconds) when it became ready, or
    C{None} while it is starting.
    """

    where: str
    pid: int | None
    slot: int | None
    served: int
    ready_at: float | None


class IWorkerSource(Interface):
    """A source of workers: it hands the dispatcher a L{gaspar_tw.dispatch.WorkerLink} for
    each worker that becomes ready, takes it back (C{Dispatcher.workerLost}) when the worker
    goes, and passes its replies to C{Dispatcher.repliesMessage}."""

    def start(hub) -> None:
        """Start giving workers, on the pool's L{gaspar_tw.workers.channels.ChannelHub}."""

    def stop(grace: float) -> Deferred:
        """Stop its workers (giving them C{grace} seconds to finish); fires when they are
        gone."""

    def whenReady() -> Deferred:
        """Fires once the workers it was asked for are ready (at once if it promises none)."""

    def pids() -> list[int]:
        """The process ids of its workers."""

    def workers() -> list[WorkerInfo]:
        """Its workers, ready or starting."""
