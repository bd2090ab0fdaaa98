"""The ampoule child used by the benchmark: AMP commands that run the benchmark handlers."""

from __future__ import annotations

import bench_handlers
from ampoule import child
from twisted.protocols import amp


class Echo(amp.Command):
    arguments = [(b"data", amp.String())]
    response = [(b"data", amp.String())]


class Cpu(amp.Command):
    arguments = [(b"data", amp.String())]
    response = [(b"data", amp.String())]


class Add(amp.Command):
    """A typed call, as ampoule users write one per function: two Integers in, one out."""

    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class BenchChild(child.AMPChild):
    @Echo.responder
    def echo(self, data: bytes) -> dict:
        return {"data": bench_handlers.echo(data)}

    @Cpu.responder
    def cpu(self, data: bytes) -> dict:
        return {"data": bench_handlers.cpu(data)}

    @Add.responder
    def add(self, a: int, b: int) -> dict:
        return {"total": bench_handlers.add(a, b)}
