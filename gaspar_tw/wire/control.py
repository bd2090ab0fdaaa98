"""Words between a producer and its workers outside the work messages, and exit statuses.

A remote worker (L{gaspar_tw.worker.relay}) and the producer's ROUTER
(L{gaspar_tw.workers.remote}) exchange one-frame control messages besides
L{gaspar_tw.wire.messages}' work and replies: L{PING} both ways every L{HEARTBEAT_SECONDS};
from the producer also L{WHO} (unknown to me: say hello again), L{KILL} (given up on after
C{--timeout}: exit) and L{DONE} (the answer to the worker's L{BYE}: every request it held is
answered, it may exit). A worker's exit status tells its parent why it ended.
"""

from __future__ import annotations

import os
import signal

from gaspar_tw.wire.messages import STOP

#: A remote worker and its producer ping each other this often (seconds) ...
HEARTBEAT_SECONDS = 1.0
#: ... and one silent for this many intervals is lost (its requests are retried elsewhere).
HEARTBEAT_MISSES = 3

PING = b"P"
WHO = b"?"
KILL = b"K"
#: Worker -> producer: "I am stopping: send me no more work" (its host was told to stop).
BYE = b"B"
#: Producer -> worker: "you have answered all you held: go".
DONE = STOP

#: A remote worker says this on stdout once its handler is loaded and it says hello: its
#: worker host counts it as ready (the one it replaces, if any, may then be retired).
CONNECTING = "connecting to"

#: Seconds a worker is given to finish what it holds once its parent stops it (stdin closed),
#: before SIGTERM (and SIGKILL at twice as long).
STOP_GRACE_SECONDS = 5.0
#: ... and after a drain that ran out of time, when it may be stuck in a handler.
HURRIED_STOP_GRACE_SECONDS = 0.5

#: Exit status of a worker whose handler cannot be loaded: its parent stops respawning it.
EXIT_HANDLER_ERROR = 4
#: Exit status of a remote worker the producer gave up on (its host starts another at once).
EXIT_GIVEN_UP = 5

#: The signal on which a worker writes the Python stack of each of its threads on stderr
#: (faulthandler, so even a handler stuck in C code answers it): its parent sends it before
#: killing a worker it gave up on (--timeout), to log where the worker was stuck.
STACK_SIGNAL = signal.SIGUSR1
#: Seconds from L{STACK_SIGNAL} to SIGKILL. The worker writes its stack from the signal
#: handler at once; the wait is for the parent to read it from the pipe, and stays short
#: because the worker's slot is out of service until its replacement starts.
STACK_DUMP_SECONDS = 0.3

#: The unit of --max-memory and --max-memory-hard.
MEGABYTE = 1024 * 1024


def resident_bytes(pid: int | str = "self") -> int:
    """The resident memory (RSS) of process C{pid}, what --max-memory limits (Linux
    C{/proc}); 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
