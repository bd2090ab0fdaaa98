"""Cut a byte stream into C{[u32 length][body]} frames: the framing both protocols share.

The length is big-endian and counts the body only. The gaspar protocol reads one frame per
connection, the framed protocol a stream of them; both pass bodies on with L{body_of}.
"""

from __future__ import annotations

import struct

from gaspar_tw.wire import messages

#: The big-endian u32 that precedes every request body, in both protocols.
LENGTH = struct.Struct("!I")

#: Request bodies this large (those that travel to a worker in a ZeroMQ frame of their own)
#: are passed on as read-only views of the bytes they arrived in, not copied out of them;
#: smaller ones are packed with others into one frame anyway.
VIEW_BYTES = messages.PACK_LIMIT


def body_of(buffer: bytes, start: int, end: int) -> bytes | memoryview:
    """C{buffer[start:end]}, as a view of C{buffer} when it is large (no copy)."""
    if end - start < VIEW_BYTES or (start == 0 and end == len(buffer)):
        return buffer[start:end]
    return memoryview(buffer)[start:end]


class FrameTooLong(ValueError):
    """A frame announced more bytes than allowed."""

    def __init__(self, length: int) -> None:
        super().__init__(f"frame of {length} bytes is over the limit")
        self.length = length


class FrameSplitter:
    """Cut a byte stream into C{[u32 length][body]} frames.

    A frame split over many reads is kept as a list of chunks and joined once, when
    complete: no buffer that grows, or moves, with every read. With C{most}, only that many
    frames are read; whatever follows them is ignored, unparsed. A call to L{feed} may also
    take at most C{room} frames; the bytes after them are kept, unparsed, for the next call.
    """

    def __init__(self, limit: int = 0xFFFFFFFF, most: int | None = None) -> None:
        self.limit = limit
        self._left = most  # frames still to read; None for no end
        self._partial: list[bytes] = []
        self._partialSize = 0
        self._need = 4  # bytes the incomplete frame needs before it can be parsed

    @property
    def midFrame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return bool(self._partial)

    def feed(self, data: bytes, room: int | None = None) -> list[tuple[bytes, int, int]]:
        """The complete frames now available, as C{(buffer, start, end)} of their bodies.

        With C{room} (at least 0), at most that many: the bytes after them wait, unparsed,
        and C{feed(b"", room)} parses them later. Raises L{FrameTooLong} for a frame longer
        than C{limit}; the stream cannot be parsed further.
        """
        if self._partial:
            if data:
                self._partial.append(data)
                self._partialSize += len(data)
            if self._partialSize < self._need:
                return []
            data = b"".join(self._partial)  # a lone chunk is not copied
            self._partial = []
            self._partialSize = 0
        frames = []
        offset = 0
        end = len(data)
        need = 4
        most = self._left if room is None else room
        while end - offset >= 4 and len(frames) != most:
            (length,) = LENGTH.unpack_from(data, offset)
            if length > self.limit:
                raise FrameTooLong(length)
            start = offset + 4
            if end - start < length:
                need = 4 + length
                break
            offset = start + length
            frames.append((data, start, offset))
        else:
            if end - offset >= 4:  # stopped at C{room}: parse the rest next time
                need = 0
        if self._left is not None:
            self._left -= len(frames)
            if not self._left:
                return frames  # the rest is ignored
        if offset < end:
            rest = data[offset:] if offset else data
            self._partial = [rest]
            self._partialSize = len(rest)
            self._need = need
        return frames
