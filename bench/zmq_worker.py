"""A plain pyzmq worker for the raw txZMQ round-trip row: PULL [id, payload], PUSH it back."""

from __future__ import annotations

import sys

import bench_handlers
import zmq


def main(work_address: str, reply_address: str, handler_name: str) -> None:
    handler = getattr(bench_handlers, handler_name)
    context = zmq.Context(1)
    work = context.socket(zmq.PULL)
    work.connect(work_address)
    replies = context.socket(zmq.PUSH)
    replies.connect(reply_address)
    replies.send_multipart([b"hello", b""])
    poller = zmq.Poller()
    poller.register(work, zmq.POLLIN)
    poller.register(sys.stdin.fileno(), zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if sys.stdin.fileno() in events:
            break
        rid, payload = work.recv_multipart(copy=True)
        replies.send_multipart([rid, handler(payload)])
    work.close(0)
    replies.close(0)
    context.term()


if __name__ == "__main__":
    main(*sys.argv[1:4])
