"""asyncio and tornado clients against a live daemon."""

from __future__ import annotations

import asyncio
import os

import pytest

from gaspar_tw import aio
from gaspar_tw.client import pack


def test_asyncio_client_concurrent_requests(daemon):
    async def main() -> list[bytes]:
        messages = [b"aio-%d-%s" % (i, os.urandom(4).hex().encode()) for i in range(100)]
        replies = await asyncio.gather(
            *(aio.request(daemon.host, daemon.port, m, timeout=10) for m in messages)
        )
        return list(zip(messages, replies, strict=True))

    for message, reply in asyncio.run(main()):
        assert reply == message


def test_asyncio_client_timeout_is_bounded(tmp_path):
    async def main() -> None:
        async def silent(reader, writer):
            await reader.read()  # never answers
            writer.close()  # else Python 3.12's Server.wait_closed waits for it forever

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(TimeoutError):
                await aio.request("127.0.0.1", port, b"anyone?", timeout=0.3)

    asyncio.run(main())


def test_tornado_example_from_the_readme(daemon):
    from tornado.ioloop import IOLoop
    from tornado.tcpclient import TCPClient

    async def request(host: str, port: int, message: bytes) -> bytes:
        stream = await TCPClient().connect(host, port)
        await stream.write(pack(message))
        try:
            return await stream.read_until_close()
        finally:
            stream.close()

    reply = IOLoop.current().run_sync(lambda: request(daemon.host, daemon.port, b"tornado"), 10)
    assert reply == b"tornado"
