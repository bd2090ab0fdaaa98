"""A worker process: receive batches of requests over ZeroMQ, run the handler, send replies.

Run by the producer as ``python -m gaspar_tw.worker ...``. Plain blocking pyzmq, no reactor.
The worker exits when its standard input closes (the producer is gone) and, on Linux, the
kernel kills it when the producer dies (``PR_SET_PDEATHSIG``), even mid-handler.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time
import traceback

import zmq

from gaspar_tw import wire
from gaspar_tw.errors import HandlerError
from gaspar_tw.handler import Handler, load_handler
from gaspar_tw.proctitle import set_title, worker_title

#: Exit status meaning "the handler cannot be loaded": the producer stops respawning.
EXIT_HANDLER_ERROR = 4

#: Replies computed for longer than this are sent without waiting for the rest of the batch.
FLUSH_AFTER_SECONDS = 0.001


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies; elsewhere, rely on stdin EOF."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def call_handler(handler: Handler, payload: bytes) -> tuple[int, bytes]:
    """Run the handler on one request; return (status, reply or encoded error)."""
    try:
        result = handler(payload)
        if isinstance(result, bytes):
            return wire.OK, result
        if isinstance(result, str):
            return wire.OK, result.encode("utf-8")
        if isinstance(result, (bytearray, memoryview)):
            return wire.OK, bytes(result)
        raise TypeError(f"handler returned {type(result).__name__}, expected bytes or str")
    except Exception as e:
        return wire.ERROR, wire.encode_error(e, traceback.format_exc())


class Worker:
    """The loop of one worker process."""

    def __init__(self, handler: Handler, token: int, work_address: str, reply_address: str):
        self.handler = handler
        self.token = token
        self.context = zmq.Context(1)
        self.work = self.context.socket(zmq.PULL)
        self.work.setsockopt(zmq.LINGER, 0)
        self.work.bind(work_address)
        self.replies = self.context.socket(zmq.PUSH)
        self.replies.setsockopt(zmq.LINGER, 2000)
        self.replies.connect(reply_address)

    def serve(self) -> None:
        """Announce readiness, then answer batches until stdin closes."""
        self.replies.send_multipart(wire.encode_hello(self.token, os.getpid()))
        poller = zmq.Poller()
        poller.register(self.work, zmq.POLLIN)
        poller.register(sys.stdin.fileno(), zmq.POLLIN)
        stdin = sys.stdin.fileno()
        while True:
            for socket, _ in poller.poll():
                if socket == stdin:
                    if not os.read(stdin, 4096):
                        return
                else:
                    self.answer(self.work.recv_multipart(copy=True))

    def answer(self, frames: list) -> None:
        """Run the handler on each request of a batch, sending replies at least every ms."""
        ids, payloads = wire.decode_work(frames)
        handler = self.handler
        done_ids: list[int] = []
        statuses = bytearray()
        results: list[bytes] = []
        started = time.monotonic()
        for rid, payload in zip(ids, payloads, strict=False):
            status, result = call_handler(handler, payload)
            done_ids.append(rid)
            statuses.append(status)
            results.append(result)
            if time.monotonic() - started > FLUSH_AFTER_SECONDS and len(done_ids) < len(ids):
                self.send(done_ids, statuses, results)
                done_ids, statuses, results = [], bytearray(), []
                started = time.monotonic()
        if done_ids:
            self.send(done_ids, statuses, results)

    def send(self, ids: list[int], statuses: bytearray, results: list[bytes]) -> None:
        self.replies.send_multipart(
            wire.encode_replies(self.token, ids, bytes(statuses), results), copy=False
        )

    def close(self) -> None:
        self.work.close()
        self.replies.close()
        self.context.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gaspar_tw.worker")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--token", type=int, required=True)
    parser.add_argument("--slot", type=int, default=0, help="the pool slot, for the title")
    parser.add_argument("--work", required=True, help="ZeroMQ address to bind the PULL socket")
    parser.add_argument("--reply", required=True, help="ZeroMQ address of the producer's PULL")
    parser.add_argument("--pythonpath", action="append", default=[])
    args = parser.parse_args(argv)

    _die_with_parent()
    set_title(worker_title(args.slot, args.handler))
    # Ctrl-C in a terminal reaches the whole process group; the producer decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for directory in reversed(args.pythonpath):
        sys.path.insert(0, directory)
    try:
        handler = load_handler(args.handler)
    except HandlerError as e:
        print(f"gaspar_tw worker: {e}", file=sys.stderr, flush=True)
        return EXIT_HANDLER_ERROR
    worker = Worker(handler, args.token, args.work, args.reply)
    try:
        worker.serve()
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
