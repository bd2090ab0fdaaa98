"""Requests waiting for an answer, matched to the workers that run them.

Knows nothing of TCP or processes: callers submit payloads, worker sources add and remove
L{WorkerLink}s, and replies go back to each request's L{IReplyReceiver}.

Data flow (all in the producer's reactor thread; the workers are other processes)::

  submit/submitTo                                                      worker processes
        |                                                                 ^         |
        v                                                                 |         |
  +--------------+  admitted  +-------+  once a turn  +-------------+ link.send     |
  | RequestTable | ---------> | queue | ------------> |  Scheduler  | ----+         |
  | requests.py  |            +-------+               | scheduler.py|               |
  +--------------+                ^                   +-------------+               |
        |                         | requeued                                        |
        |                  +-------------+  each sweep                              |
        |                  |  Timeouts   | <----------- Sweep (sweep.py)            |
        |                  | timeouts.py |                                          |
        |                  +-------------+                                          |
        v  taken out                                                                |
  +--------------+        repliesMessage / repliesReceived                          |
  |   Delivery   | <----------------------------------------------------------------+
  | receivers.py |
  +--------------+
        |
        v
  IReplyReceiver (a protocol, or the Deferred submit returns)

- submitTo: the table admits the request (or refuses it) and gives it an id; it joins the
  queue, and a flush is scheduled for the end of the reactor turn.
- flush: the scheduler gives each ready worker with room a batch, in one message, least
  loaded first; requests a dead worker held are retried first, each alone.
- replies: each answered request leaves the table and its outcome goes to its receiver;
  what is queued is flushed again.
- sweep: a request a worker is stuck on fails (the worker is killed, what it held is
  requeued), and so do requests that waited too long for a worker.

L{Dispatcher} (dispatcher.py) composes the parts; they share the requests dict, the queue
and the links, which it binds itself so each request costs no extra calls.
"""

from gaspar_tw.dispatch.dispatcher import Dispatcher
from gaspar_tw.dispatch.links import WorkerLink
from gaspar_tw.dispatch.receivers import IReplyReceiver

__all__ = ["Dispatcher", "IReplyReceiver", "WorkerLink"]
