"""Calls on the wire: pickling with out-of-band buffers, mixed work and replies messages."""

from __future__ import annotations

import functools
import pickle

import call_targets as targets
import pytest

from gaspar_tw.wire import messages as wire
from gaspar_tw.wire.calls import (
    CALL_RAISED,
    CALL_RESULT,
    OUT_OF_BAND_BYTES,
    CallFrames,
    pack_call,
    run_call,
    unpack_outcome,
)


class Methods:
    @staticmethod
    def static(x):
        return x

    @classmethod
    def klass(cls, x):
        return x


def test_a_large_bytes_argument_is_a_frame_of_its_own_not_a_copy():
    data = b"d" * OUT_OF_BAND_BYTES
    call = pack_call(targets.echo, (b"small", data), {"kw": data})
    reference, pickled, *buffers = call.frames
    assert len(buffers) == 2 and all(buffer.obj is data for buffer in buffers)
    assert len(pickled) < 1000 and len(call) == len(reference) + len(pickled) + 2 * len(data)
    # The worker's side: the frames as received (bytes) are the arguments themselves.
    received = CallFrames([reference, bytes(pickled), *(bytes(b) for b in buffers)])
    status, outcome = run_call(received)
    assert status == CALL_RESULT
    args, kwargs = unpack_outcome(status, outcome)
    assert args == (b"small", data) and kwargs == {"kw": data}
    assert len(pack_call(targets.echo, (b"x" * (OUT_OF_BAND_BYTES - 1),), {}).frames) == 2


def test_static_and_class_methods_can_be_called():
    import twisted.persisted.styles  # noqa: F401  its reducer of methods is not used

    for fn in (Methods.static, Methods.klass):
        status, outcome = run_call(pack_call(fn, (3,), {}))
        assert unpack_outcome(status, outcome) == 3


def test_an_unpicklable_result_is_a_pickling_error_of_that_call():
    status, outcome = run_call(pack_call(targets.unpicklable_result, (), {}))
    assert status == CALL_RAISED
    with pytest.raises(pickle.PicklingError, match="result of call_targets.unpicklable_result"):
        unpack_outcome(status, outcome)


def test_a_mixed_work_message_carries_calls_beside_handler_requests():
    call = pack_call(targets.echo, (b"c" * OUT_OF_BAND_BYTES,), {})
    messages = wire.encode_mixed_work([5, 6, 7], [b"bytes", call, b""])
    assert len(messages) == 1 and wire.is_mixed_work(messages[0])
    frames = [bytes(frame) for frame in messages[0]]
    ids, payloads = wire.decode_mixed_work(frames)
    assert list(ids) == [5, 6, 7]
    assert payloads[0] == b"bytes" and payloads[2] == b""
    assert type(payloads[1]) is CallFrames and payloads[1].frames == [bytes(f) for f in call.frames]
    # A batch without calls is the plain message, which is not mixed.
    [plain] = wire.encode_mixed_work([1, 2], [b"a", b"b"])
    assert plain == wire.encode_work([1, 2], [b"a", b"b"])[0] and not wire.is_mixed_work(plain)


def test_small_calls_travel_packed_in_one_frame_large_buffers_each_in_their_own():
    small = [pack_call(targets.echo, (i,), {}) for i in range(50)]
    large = pack_call(targets.echo, (b"L" * wire.PACK_LIMIT,), {})  # in the pickle
    [message] = wire.encode_mixed_work(range(52), [*small, b"bytes", large])
    assert len(message) == 1 + 1 + 1  # the head, 51 small frames in one, the large pickle
    ids, payloads = wire.decode_mixed_work([bytes(frame) for frame in message])
    assert list(ids) == list(range(52)) and payloads[50] == b"bytes"
    assert [run_call(call)[1].frames for call in payloads[:50]] == [
        run_call(call)[1].frames for call in small
    ]
    assert payloads[51].frames == large.frames


def test_a_mixed_work_batch_is_cut_into_messages_by_size():
    call = pack_call(targets.echo, (b"c" * wire.MESSAGE_BYTES,), {})
    messages = wire.encode_mixed_work([1, 2, 3], [call, b"x", call])
    assert [list(wire.decode_mixed_work(m)[0]) for m in messages] == [[1], [2, 3]]


def test_mixed_replies_carry_call_outcomes_beside_handler_replies():
    status, outcome = run_call(pack_call(targets.identity, (b"r" * OUT_OF_BAND_BYTES,), {}))
    raised_status, raised = run_call(pack_call(targets.refuse, ("no",), {}))
    statuses = bytes([wire.OK, status, wire.ERROR, raised_status])
    frames = wire.encode_mixed_replies(
        9, [1, 2, 3, 4], statuses, [b"ok", outcome, b"{}", raised], 0.5
    )
    assert len(frames) == 3  # the head, the small frames packed in one, the large buffer
    frames = [bytes(frame) for frame in frames]
    assert wire.frame_kind(frames[0]) == (wire.REPLIES, 9) and wire.busy_seconds(frames[0]) == 0.5
    ids, got_statuses, payloads = wire.decode_replies(frames)
    assert list(ids) == [1, 2, 3, 4] and got_statuses == statuses
    assert payloads[0] == b"ok" and payloads[2] == b"{}"
    assert unpack_outcome(status, payloads[1]) == b"r" * OUT_OF_BAND_BYTES
    with pytest.raises(targets.Refused):
        unpack_outcome(raised_status, payloads[3])
    # Replies without a call's outcome are the plain message.
    plain = wire.encode_mixed_replies(9, [1], bytes([wire.OK]), [b"ok"])
    assert plain == wire.encode_replies(9, [1], bytes([wire.OK]), [b"ok"])


def test_memoryviews_travel_out_of_band_and_arrive_as_views_in_their_format():
    data = bytearray(range(256)) * 4
    arg = memoryview(data).cast("H", (2, 256))  # any format and shape, any size
    call = pack_call(targets.identity, ([arg, memoryview(data)[::2]],), {})
    assert len(call.frames) == 4  # the function, the pickle, a buffer each
    data[0] = 7  # the first buffer is the caller's memory itself, not a copy
    assert bytes(call.frames[2])[0] == 7
    data[0] = 0
    received = CallFrames([bytes(frame) for frame in call.frames])
    status, outcome = run_call(received)
    got, strided = unpack_outcome(status, CallFrames([bytes(f) for f in outcome.frames]))
    assert type(got) is memoryview and (got.format, got.shape) == ("H", (2, 256))
    assert got.tolist() == arg.tolist() and strided.tobytes() == bytes(data[::2])


def test_a_large_bytearray_is_a_frame_of_its_own_and_a_small_one_is_not():
    large, small = bytearray(OUT_OF_BAND_BYTES), bytearray(b"small")
    call = pack_call(targets.echo, (large,), {"small": small})
    assert len(call.frames) == 3  # the function, the pickle, the large buffer
    large[0] = 7  # the frame is the caller's memory, not a copy
    assert bytes(call.frames[2])[0] == 7
    status, outcome = run_call(CallFrames([bytes(frame) for frame in call.frames]))
    got = unpack_outcome(status, CallFrames([bytes(f) for f in outcome.frames]))
    assert got == ((large,), {"small": small}) and type(got[0][0]) is bytearray


def test_a_function_is_pickled_once_and_a_partial_each_time():
    first = pack_call(targets.echo, (1,), {})
    again = pack_call(targets.echo, (2,), {})
    assert again.frames[0] is first.frames[0]  # kept: pickled once
    partial = functools.partial(targets.echo, 1)
    assert pack_call(partial, (), {}).frames[0] is not pack_call(partial, (), {}).frames[0]
    assert unpack_outcome(*run_call(again)) == ((2,), {})
    # A bound method's pickle holds its object as it is now: pickled at each call.
    seen = {"k": 1}
    assert unpack_outcome(*run_call(pack_call(seen.get, ("k",), {}))) == 1
    seen["k"] = 2
    assert unpack_outcome(*run_call(pack_call(seen.get, ("k",), {}))) == 2
