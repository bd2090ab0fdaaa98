"""Fake worker links for the dispatcher's unit tests: what a worker is sent, decoded."""

from __future__ import annotations

from twisted.internet.task import Clock

from gaspar_tw.dispatch import Dispatcher, WorkerLink
from gaspar_tw.wire import messages as wire


class Recorder:
    """The far end of one L{WorkerLink}: each work batch's ids and payloads, each cancel's
    ids, and how often the dispatcher had it killed or found it drained."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.payloads: list[bytes] = []
        self.cancels: list[int] = []
        self.killed = 0
        self.drained = 0

    def send(self, messages: list[list]) -> None:
        for frames in messages:
            if len(frames) == 1 and frames[0][:1] == wire.CANCEL:
                self.cancels += wire.decode_cancel(frames[0])
            else:
                ids, payloads = wire.decode_work(frames)
                self.batches.append(list(ids))
                self.payloads += [bytes(p) for p in payloads]

    def kill(self) -> None:
        self.killed += 1

    def drain(self) -> None:
        self.drained += 1

    @property
    def sent(self) -> list[int]:
        """Every request id sent, in order."""
        return [rid for batch in self.batches for rid in batch]


def tick(clock: Clock, seconds: float, step: float = 0.05) -> None:
    """Let C{seconds} pass in small steps, as a reactor does (a L{Clock} advanced in one leap
    runs a looping call once, not once per interval it skipped)."""
    for _ in range(round(seconds / step)):
        clock.advance(step)


def link(token: int) -> tuple[WorkerLink, Recorder]:
    recorder = Recorder()
    worker = WorkerLink(
        token, 1000 + token, recorder.send, kill=recorder.kill, drained=recorder.drain
    )
    return worker, recorder


def answer(dispatcher: Dispatcher, worker: WorkerLink, n: int = 1) -> list[int]:
    """The worker answers the first C{n} requests it holds (OK, echoing the id)."""
    ids = list(worker.outstanding)[:n]
    replies = [b"%d" % rid for rid in ids]
    dispatcher.repliesReceived(worker.token, ids, bytes(len(ids)), replies)
    return ids


class Outcomes:
    """The receiver of every request: replies and failures by id."""

    def __init__(self) -> None:
        self.replies: dict[int, bytes] = {}
        self.failures: dict[int, Exception] = {}

    def replyReceived(self, rid: int, reply: bytes) -> None:
        self.replies[rid] = reply

    def requestFailed(self, rid: int, reason: Exception) -> None:
        self.failures[rid] = reason
