"""An asyncio client of the gaspar wire protocol; imports nothing from Twisted (only wire/)."""

from __future__ import annotations

import asyncio

from gaspar_tw.wire.frames import LENGTH


async def request(host: str, port: int, message: bytes, timeout: float | None = 30.0) -> bytes:
    """Send one request to a gaspar server and return its reply (read to EOF).

    As with every gaspar-format client, an empty reply means the handler returned C{b""} or
    the request failed on the server. Raises C{OSError} on network errors and
    C{TimeoutError} when C{timeout} seconds pass without the whole reply.
    """
    try:
        return await asyncio.wait_for(_exchange(host, port, message), timeout)
    except asyncio.TimeoutError:  # on Python 3.10 not yet the built-in TimeoutError
        raise TimeoutError(f"no whole reply from {host}:{port} within {timeout}s") from None


async def _exchange(host: str, port: int, message: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(LENGTH.pack(len(message)) + bytes(message))
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
