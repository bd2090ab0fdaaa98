"""The worker message codec: exact bytes (little-endian whatever the host), packing and cutting."""

from __future__ import annotations

import struct
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaspar_tw.wire import failures
from gaspar_tw.wire import messages as wire

U64 = st.integers(0, 2**64 - 1)
payload_lists = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.integers(0, 255).map(lambda i: bytes([i]) * wire.PACK_LIMIT),
    ),
    max_size=12,
)

# -- exact bytes: hand-written, so a host of either byte order must produce and read these ---------

#: 0x0102030405060708 as a little-endian u64: a value whose bytes all differ, so any swap shows.
MIXED = 0x0102030405060708
MIXED_LE = b"\x08\x07\x06\x05\x04\x03\x02\x01"


def test_a_work_message_of_small_payloads_is_its_counts_and_one_packed_body():
    frames = [
        b"\x02\x00\x00\x00"  # n = 2
        + b"\x07\x00\x00\x00\x00\x00\x00\x00"  # id 7
        + MIXED_LE  # id 0x0102030405060708
        + b"\x02\x00\x00\x00"  # size of b"ab"
        + b"\x01\x00\x00\x00",  # size of b"c"
        b"abc",
    ]
    assert wire.encode_work([7, MIXED], [b"ab", b"c"]) == [frames]
    ids, payloads = wire.decode_work(frames)
    assert list(ids) == [7, MIXED] and [bytes(p) for p in payloads] == [b"ab", b"c"]


def test_a_work_message_holding_a_large_payload_carries_a_frame_per_payload():
    large = b"y" * wire.PACK_LIMIT  # 0x4000 bytes
    frames = [
        b"\x02\x00\x00\x00"
        + b"\x01\x00\x00\x00\x00\x00\x00\x00"
        + b"\x00\x01\x00\x00\x00\x00\x00\x00"  # id 256
        + b"\x01\x00\x00\x00"
        + b"\x00\x40\x00\x00",
        b"x",
        large,
    ]
    assert wire.encode_work([1, 256], [b"x", large]) == [frames]
    ids, payloads = wire.decode_work(frames)
    assert list(ids) == [1, 256] and payloads == [b"x", large]


def test_a_cancel_is_its_kind_and_the_ids():
    frame = b"C" + b"\x03\x00\x00\x00\x00\x00\x00\x00" + MIXED_LE
    assert wire.encode_cancel([3, MIXED]) == [frame]
    assert list(wire.decode_cancel(frame)) == [3, MIXED]


def test_a_hello_is_its_kind_the_token_and_the_pid_in_decimal():
    frames = [b"H" + MIXED_LE, b"4321"]
    assert wire.encode_hello(MIXED, 4321) == frames
    assert wire.frame_kind(frames[0]) == (wire.HELLO, MIXED)


def test_a_replies_message_is_its_head_ids_statuses_sizes_and_one_packed_body():
    head = (
        b"R"
        + b"\x09\x00\x00\x00\x00\x00\x00\x00"  # token 9
        + b"\x20\xa1\x07\x00"  # busy: 500,000 us
        + b"\x03\x00\x00\x00"  # n = 3
        + b"\x05\x00\x00\x00\x00\x00\x00\x00"
        + MIXED_LE
        + b"\xff\xff\xff\xff\xff\xff\xff\xff"  # the largest id
        + b"\x00\x01\x02"  # OK, ERROR, SKIPPED
        + b"\x02\x00\x00\x00"
        + b"\x03\x00\x00\x00"
        + b"\x00\x00\x00\x00"
    )
    frames = [head, b"okerr"]
    statuses = bytes([wire.OK, wire.ERROR, wire.SKIPPED])
    ids = [5, MIXED, 2**64 - 1]
    assert wire.encode_replies(9, ids, statuses, [b"ok", b"err", b""], busy=0.5) == frames
    assert wire.frame_kind(head) == (wire.REPLIES, 9)
    assert wire.busy_seconds(head) == 0.5
    got_ids, got_statuses, payloads = wire.decode_replies(frames)
    assert list(got_ids) == ids and got_statuses == statuses
    assert [bytes(p) for p in payloads] == [b"ok", b"err", b""]


def test_a_replies_message_caps_its_busy_time_at_the_largest_u32():
    [head, _] = wire.encode_replies(1, [1], b"\x00", [b"r"], busy=10**6)
    assert head[9:13] == b"\xff\xff\xff\xff"


# -- every integer is little-endian: the encoders agree with struct's "<" for any values --------


@settings(max_examples=40)
@given(st.lists(U64, min_size=1, max_size=20), st.data())
def test_work_and_cancel_integers_are_little_endian(ids, data):
    payloads = data.draw(st.lists(st.binary(max_size=8), min_size=len(ids), max_size=len(ids)))
    n = len(ids)
    sizes = [len(p) for p in payloads]
    [[head, *_]] = wire.encode_work(ids, payloads)
    assert head == struct.pack(f"<I{n}Q{n}I", n, *ids, *sizes)
    assert wire.encode_cancel(ids) == [b"C" + struct.pack(f"<{n}Q", *ids)]
    assert list(wire.decode_work([head, b"".join(payloads)])[0]) == ids


@settings(max_examples=40)
@given(U64, st.lists(U64, min_size=2, max_size=20), st.integers(0, 2**32 - 1))
def test_replies_integers_are_little_endian(token, ids, micros):
    n = len(ids)
    statuses = bytes(n)
    payloads = [b"p" * (i % 3) for i in range(n)]
    [head, _] = wire.encode_replies(token, ids, statuses, payloads, busy=micros / 1e6)
    sizes = [len(p) for p in payloads]
    expected = struct.pack(f"<cQII{n}Q", b"R", token, micros, n, *ids)
    assert head == expected + statuses + struct.pack(f"<{n}I", *sizes)
    assert wire.frame_kind(head) == (wire.REPLIES, token)


OPPOSITE = ">" if sys.byteorder == "little" else "<"


@settings(max_examples=20)
@given(st.lists(U64, max_size=20))
def test_the_swapping_arrays_of_the_other_byte_order_write_and_read_its_order(ids):
    # The path a host of the other byte order takes, run here: it must swap every item.
    n = len(ids)
    assert wire._swapped_bytes(array("Q", ids)) == struct.pack(f"{OPPOSITE}{n}Q", *ids)
    assert list(wire._swapped_array("Q", struct.pack(f"{OPPOSITE}{n}Q", *ids))) == ids


@pytest.mark.skipif(sys.byteorder != "little", reason="the no-swap path of little-endian hosts")
def test_a_little_endian_host_uses_its_arrays_as_they_are():
    # No wrapper, swap or copy on the hot path of the common host.
    assert wire._array_to_wire is array.tobytes
    assert wire._array_from_wire is wire._native_array


# -- packing, cutting and round trips --------------------------------------------------------


@settings(max_examples=40)
@given(payload_lists)
def test_work_messages_carry_every_payload_in_order(payloads):
    ids = list(range(100, 100 + len(payloads)))
    messages = wire.encode_work(ids, payloads)
    got_ids, got = [], []
    for frames in messages:
        message_ids, message_payloads = wire.decode_work(frames)
        got_ids += list(message_ids)
        got += [bytes(p) for p in message_payloads]
    assert got_ids == ids and got == payloads


def test_a_big_batch_is_cut_into_messages_of_about_message_bytes():
    size = wire.MESSAGE_BYTES * 2 // 5
    payloads = [bytes([i]) * size for i in range(5)]
    messages = wire.encode_work([1, 2, 3, 4, 5], payloads)
    assert [list(wire.decode_work(m)[0]) for m in messages] == [[1, 2, 3], [4, 5]]


def test_small_payloads_travel_packed_in_one_frame():
    [frames] = wire.encode_work([1, 2, 3], [b"a", b"bb", b""])
    assert len(frames) == 2  # ids and sizes, one packed body
    [big] = wire.encode_work([1, 2], [b"a", b"x" * wire.PACK_LIMIT])
    assert len(big) == 3  # a frame per payload once one of them is large


@settings(max_examples=40)
@given(payload_lists, st.floats(min_value=0, max_value=3600))
def test_replies_round_trip_with_their_busy_time(payloads, busy):
    ids = list(range(len(payloads)))
    statuses = bytes(i % 2 for i in ids)
    frames = wire.encode_replies(7, ids, statuses, payloads, busy)
    assert wire.frame_kind(frames[0]) == (wire.REPLIES, 7)
    got_ids, got_statuses, got = wire.decode_replies(frames)
    assert list(got_ids) == ids and got_statuses == statuses
    assert [bytes(p) for p in got] == payloads
    assert abs(wire.busy_seconds(frames[0]) - busy) < 1e-6 + 1e-9 * busy


def test_an_error_payload_round_trips_and_a_malformed_one_is_still_read():
    info = failures.decode_error(failures.encode_error(ValueError("bad"), "Traceback ..."))
    assert info == {"type": "ValueError", "message": "bad", "traceback": "Traceback ..."}
    assert failures.decode_error(b"\xffnot json") == {
        "type": "Exception",
        "message": "\ufffdnot json",
        "traceback": "",
    }
