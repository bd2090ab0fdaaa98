"""The gaspar protocol fed arbitrary bytes in arbitrary chunks: it never raises, never leaks."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gaspar_tw.client import pack
from gaspar_tw.dispatch import Dispatcher
from gaspar_tw.server.gaspar import GasparFactory

LIMIT = 1000

inputs = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda body, tail: pack(body) + tail, st.binary(max_size=60), st.binary(max_size=60)),
    st.builds(
        lambda n, tail: struct.pack("!I", n) + tail,
        st.integers(0, 2**32 - 1),
        st.binary(max_size=60),
    ),
)


def serve(clock: Clock) -> tuple[Dispatcher, GasparFactory]:
    """A real dispatcher with no workers (requests wait in its queue) behind the factory."""
    dispatcher = Dispatcher(clock, max_pending=10)
    return dispatcher, GasparFactory(dispatcher, LIMIT, idleTimeout=1.0, clock=clock)


def connect(factory: GasparFactory):
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


@settings(max_examples=300, deadline=None)
@given(data=inputs, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_input_is_a_request_a_wait_or_a_close_and_leaves_nothing_behind(data, cuts):
    dispatcher, factory = serve(Clock())
    protocol, transport = connect(factory)
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        protocol.dataReceived(data[start:end])
    if len(data) >= 4 and struct.unpack_from("!I", data)[0] > LIMIT:
        assert transport.disconnecting and dispatcher.pending == 0
    elif len(data) >= 4 and len(data) >= 4 + struct.unpack_from("!I", data)[0]:
        assert dispatcher.pending == 1 and not transport.disconnecting
    else:
        assert dispatcher.pending == 0 and not transport.disconnecting
    protocol.connectionLost(Failure(ConnectionDone()))
    assert dispatcher.pending == 0 and not factory.connections


def test_idle_sweep_drops_stalled_readers_only():
    clock = Clock()
    dispatcher, factory = serve(clock)
    factory.startIdleSweep()
    try:
        silent, silent_transport = connect(factory)
        half, half_transport = connect(factory)
        trickle, trickle_transport = connect(factory)
        whole, whole_transport = connect(factory)
        half.dataReceived(pack(b"body")[:5])
        whole.dataReceived(pack(b"body"))
        trickle.dataReceived(struct.pack("!I", 20))
        for _ in range(8):  # 2 s, twice the idle timeout; the trickler sends every 0.25 s
            clock.advance(0.25)
            trickle.dataReceived(b"x")
        assert silent_transport.disconnected and half_transport.disconnected
        assert not trickle_transport.disconnected and not whole_transport.disconnected
        assert dispatcher.pending == 1  # the whole request, waiting for a worker
    finally:
        factory.stopIdleSweep()
