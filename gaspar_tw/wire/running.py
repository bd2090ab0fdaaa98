"""The request a local worker is running now: one number in a small file both processes map.

A worker's replies can be held back (batched) while it runs the next request, and a handler
inside one long C call cannot send them, so the producer cannot tell from the replies alone
which request a worker is running. The worker writes that request's id here before it runs
it, and 0 after; the producer reads it when it must know (a cancelled call, C{--timeout}).

The number is a native unsigned 64-bit integer at offset 0 of a page-aligned mapping: both
processes run on this host, and an aligned 8-byte store or load is one instruction, so a
reader sees the old id or the new one, never a mix.
"""

from __future__ import annotations

import mmap
import os

#: The size of the file: one request id.
RUNNING_BYTES = 8


class RunningRequest:
    """The id of the request a worker is running (0: none), in the file at C{path}.

    L{create} makes the file (the producer, before starting the worker); the worker opens
    it. C{slot} is the mapping as one native u64: C{slot[0] = rid} publishes an id. L{close}
    unmaps it (the file stays: its owner removes it); L{get} reads 0 from then on.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, RUNNING_BYTES)
        finally:
            os.close(fd)  # the mapping keeps what it needs
        self.slot = memoryview(self._map).cast("Q")

    @classmethod
    def create(cls, path: str) -> RunningRequest:
        """A new file at C{path} (private to this user), reading 0, and its mapping."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, RUNNING_BYTES)
        finally:
            os.close(fd)
        return cls(path)

    def get(self) -> int:
        """The id of the request being run now, 0 if none."""
        return self.slot[0]

    def close(self) -> None:
        """Unmap the file (idempotent)."""
        if self._map.closed:
            return
        self.slot.release()
        self.slot = _CLOSED
        self._map.close()


#: What a closed L{RunningRequest} reads.
_CLOSED = memoryview(bytes(RUNNING_BYTES)).cast("Q")
