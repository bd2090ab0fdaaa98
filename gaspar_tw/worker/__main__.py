"""A worker process: ``python -m gaspar_tw.worker --handler MOD:FN ...`` (started by a pool).

It loads the handler and runs L{gaspar_tw.worker.loop.Worker} on the producer's sockets
(C{--work}/C{--reply}, a local pool) or through a relay to a remote producer (C{--connect},
a worker host). On Linux, the kernel kills it when its parent dies (``PR_SET_PDEATHSIG``),
even mid-handler. It leads a process group of its own, which its parent kills once it has
exited, so that processes its handler forked do not outlive it. If its loop (or a remote
worker's relay thread) fails, it exits at once with one line on stderr
(L{gaspar_tw.worker.crash}); its parent starts another. On L{STACK_SIGNAL} it writes the stack
of each of its threads on stderr (its parent sends it before killing a stuck worker).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys

from gaspar_tw.errors import HandlerError
from gaspar_tw.handler import load_handler
from gaspar_tw.orphans import die_with_parent
from gaspar_tw.proctitle import set_title, worker_title
from gaspar_tw.wire.control import EXIT_HANDLER_ERROR, MEGABYTE, STACK_SIGNAL
from gaspar_tw.worker.crash import crashed
from gaspar_tw.worker.loop import Worker


def main(argv: list[str] | None = None) -> int:
    # A process group of our own, first thing: the producer kills it when we exit, and with it
    # whatever the handler forked. (Ctrl-C in the producer's terminal does not reach it.)
    os.setpgid(0, 0)
    parser = argparse.ArgumentParser(prog="python -m gaspar_tw.worker")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--token", type=int, required=True)
    parser.add_argument("--slot", type=int, default=0, help="the pool slot, for the title")
    parser.add_argument("--work", help="ZeroMQ address to bind the PULL socket")
    parser.add_argument("--reply", help="ZeroMQ address of the producer's PULL")
    parser.add_argument("--connect", help="a remote producer's --bind address (instead)")
    parser.add_argument("--curve-keys", help="directory of CURVE keys for --connect")
    parser.add_argument(
        "--refuse-calls", action="store_true", help="answer calls with an error, unread"
    )
    parser.add_argument("--pythonpath", action="append", default=[], help="put first on the path")
    parser.add_argument("--path", action="append", default=[], help="the whole path (a pool's)")
    parser.add_argument("--max-requests", type=int, default=0, help="ask to be recycled after")
    parser.add_argument("--max-memory", type=int, default=0, help="MB: ask to be recycled over")
    parser.add_argument("--max-call-bytes", type=int, default=0, help="fail larger results")
    parser.add_argument("--running", help="file to publish the running request's id in")
    args = parser.parse_args(argv)
    if not args.connect and not (args.work and args.reply):
        parser.error("either --work and --reply, or --connect, is required")

    die_with_parent()
    # On STACK_SIGNAL, write every thread's stack on stderr (the parent logs it), and go on.
    faulthandler.register(STACK_SIGNAL, file=sys.stderr, all_threads=True, chain=False)
    set_title(worker_title(args.slot, args.handler))
    # A SIGINT sent to our group all the same is ignored; the producer decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.path:
        sys.path[:] = args.path  # the caller's, in its order (not our working directory first)
    for directory in reversed(args.pythonpath):
        sys.path.insert(0, directory)
    try:
        handler = load_handler(args.handler)
    except HandlerError as e:
        print(f"gaspar_tw worker: {e}", file=sys.stderr, flush=True)
        return EXIT_HANDLER_ERROR
    worker: Worker | None = None
    try:
        if args.connect:
            from gaspar_tw.worker.relay import RemoteWorker  # its relay thread: remote only

            worker = RemoteWorker(
                handler, args.token, args.connect, args.curve_keys, args.refuse_calls
            )
        else:
            worker = Worker(
                handler,
                args.token,
                args.work,
                args.reply,
                args.max_requests,
                args.max_memory * MEGABYTE,
                args.max_call_bytes,
                args.running,
            )
        worker.serve()
    except Exception as e:
        crashed("the worker loop", e)
    finally:  # (not after a crash: that has ended the process)
        if worker is not None:
            worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
