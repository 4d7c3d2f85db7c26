from __future__ import annotations

import random
import socket
from collections.abc import Callable

import pytest

from relays import framing

Hex = Callable[[str], bytes]


def test_v4_fixture_round_trip(hexdata: Hex) -> None:
    data = hexdata("frame_v4.hex")
    frame = framing.Frame.parse(data)
    assert frame == framing.Frame(("192.0.2.10", 50000), bytes.fromhex("16fefd00"))
    assert bytes(frame) == data
    assert framing.parse_header(data) == (("192.0.2.10", 50000), framing.HEADER_V4)
    assert framing.header_length(data) == framing.HEADER_V4


def test_v6_fixture_round_trip(hexdata: Hex) -> None:
    data = hexdata("frame_v6.hex")
    frame = framing.Frame.parse(memoryview(data))
    assert frame == framing.Frame(("2001:db8::1", 443), bytes.fromhex("80000001"))
    assert bytes(frame) == data
    assert framing.header_length(data) == framing.HEADER_V6


@pytest.mark.parametrize(
    "addr", [("0.0.0.0", 0), ("255.255.255.255", 65535), ("::", 1), ("fe80::1", 5), ("::1", 9)]
)
def test_round_trip_addresses(addr: framing.Addr) -> None:
    frame = framing.Frame(addr, b"payload")
    assert framing.Frame.parse(bytes(frame)) == frame


def test_scope_id_is_dropped_and_empty_payload() -> None:
    header = framing.pack_header(("fe80::1%eth0", 1234))
    assert framing.parse_header(header) == (("fe80::1", 1234), framing.HEADER_V6)
    assert framing.Frame.parse(header).payload == b""


def test_v6_text_matches_recvfrom_format() -> None:
    """Flow keys from frames must equal what ``recvfrom`` reports (``inet_ntop``)."""
    rng = random.Random(6)
    samples = [bytes(10) + b"\xff\xff" + rng.randbytes(4) for _ in range(50)]  # v4-mapped
    samples += [b"\x20\x01\x0d\xb8" + rng.randbytes(12) for _ in range(50)]
    samples += [bytes(12) + rng.randbytes(4) for _ in range(20)]  # v4-compatible: ::1.2.3.4
    samples += [bytes(8) + b"\xff\xff" + bytes(2) + rng.randbytes(4) for _ in range(20)]
    samples += [bytes(16), bytes(15) + b"\x01", bytes(14) + b"\x01\x02", bytes(10) + b"\xff" * 6]
    for raw in samples:
        text = socket.inet_ntop(socket.AF_INET6, raw)
        header = framing.pack_header((text, 1))
        assert header[4:] == raw
        assert framing.parse_header(header)[0] == (text, 1)


@pytest.mark.parametrize(
    ("addr", "message"),
    [(("1.2.3.4", 65536), "bad port"), (("1.2.3.4", -1), "bad port"), (("nope", 1), "bad address")],
)
def test_pack_errors(addr: framing.Addr, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        framing.pack_header(addr)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "short frame"),
        (b"\xe1\x04\x00\x01\x01\x02\x03", "short frame"),
        (b"\x16\x04\x00\x01\x01\x02\x03\x04", "bad frame magic"),
        (b"\xe1\x05\x00\x01\x01\x02\x03\x04", "bad frame family"),
        (b"\xe1\x06\x00\x01" + b"\x00" * 15, "bad frame family"),  # v6 header cut short
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        framing.parse_header(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xe1\x04", "bad frame magic"),
        (b"\x00\x04\x00\x01\x01\x02\x03\x04", "bad frame magic"),
        (b"\xe1\x09\x00\x01\x01\x02\x03\x04", "bad frame family"),
    ],
)
def test_header_length_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        framing.header_length(data)


def test_random_bytes_raise_only_value_error() -> None:
    rng = random.Random(1)
    for _ in range(5000):
        data = rng.randbytes(rng.randrange(0, 32))
        if rng.random() < 0.5 and data:
            data = bytes([framing.FRAME_MAGIC, rng.choice([4, 6, 0])]) + data
        for parse in (framing.parse_header, framing.header_length, framing.Frame.parse):
            try:
                parse(data)
            except ValueError:
                pass
        try:
            addr, offset = framing.parse_header(data)
        except ValueError:
            continue
        assert framing.header_length(data) == offset
        assert bytes(framing.Frame.parse(data)) == data
