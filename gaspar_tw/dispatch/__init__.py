"""Requests waiting for an answer, matched to the workers that run them.

Knows nothing of TCP or processes: callers submit payloads, worker sources add and remove
L{WorkerLink}s, and replies go back to each request's L{IReplyReceiver}.
"""

from gaspar_tw.dispatch.dispatcher import Dispatcher, IReplyReceiver, WorkerLink

__all__ = ["Dispatcher", "IReplyReceiver", "WorkerLink"]
