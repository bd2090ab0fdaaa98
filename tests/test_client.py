"""Client helpers that need no server."""

import pytest

from gaspar_tw.client import pack, parse_address


def test_pack_prefixes_a_big_endian_length():
    assert pack(b"x" * 258) == b"\x00\x00\x01\x02" + b"x" * 258


@pytest.mark.parametrize(
    "address, expected",
    [
        ("127.0.0.1:10123", ("127.0.0.1", 10123)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_address(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["127.0.0.1", ":80", "host:port"])
def test_parse_address_refuses_bad_ones(address):
    with pytest.raises(ValueError, match="host:port"):
        parse_address(address)
