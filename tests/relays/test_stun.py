from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest

from relays import stun
from tests.relays.conftest import FIXTURE_UFRAG

Hex = Callable[[str], bytes]


def _message(msg_type: int, attrs: bytes, tid: bytes = b"\x01" * 12) -> bytes:
    return struct.pack("!HHI12s", msg_type, len(attrs), stun.MAGIC_COOKIE, tid) + attrs


def _attr(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (0, stun.PacketClass.STUN),
        (3, stun.PacketClass.STUN),
        (4, stun.PacketClass.UNKNOWN),
        (16, stun.PacketClass.ZRTP),
        (19, stun.PacketClass.ZRTP),
        (20, stun.PacketClass.DTLS),
        (22, stun.PacketClass.DTLS),
        (63, stun.PacketClass.DTLS),
        (64, stun.PacketClass.TURN_CHANNEL),
        (79, stun.PacketClass.TURN_CHANNEL),
        (80, stun.PacketClass.UNKNOWN),
        (127, stun.PacketClass.UNKNOWN),
        (128, stun.PacketClass.RTP),
        (191, stun.PacketClass.RTP),
        (192, stun.PacketClass.UNKNOWN),
        (0xE1, stun.PacketClass.UNKNOWN),  # the frame magic is outside every class
        (255, stun.PacketClass.UNKNOWN),
    ],
)
def test_classify_rfc7983_ranges(first: int, expected: stun.PacketClass) -> None:
    assert stun.classify(first) is expected


@pytest.mark.parametrize("name", ["aioice_binding_request.hex", "chrome_binding_request.hex"])
def test_real_binding_requests(hexdata: Hex, name: str) -> None:
    data = hexdata(name)
    assert stun.classify(data[0]) is stun.PacketClass.STUN
    assert stun.looks_like_stun(data)
    assert stun.is_binding_request(data)
    assert stun.parse_server_ufrag(data) == FIXTURE_UFRAG
    assert stun.parse_username(memoryview(data)).startswith(FIXTURE_UFRAG + ":")
    assert stun.transaction_id(data) == data[8:20]
    assert stun.parse_binding_request(memoryview(data)) == (FIXTURE_UFRAG, data[8:20])


def test_binding_response_is_stun_but_not_a_request(hexdata: Hex) -> None:
    data = hexdata("aioice_binding_response.hex")
    assert stun.looks_like_stun(data)
    assert not stun.is_binding_request(data)
    with pytest.raises(ValueError, match="^not a binding request$"):
        stun.parse_server_ufrag(data)
    for not_binding in (data, data[:4], b"\x00\x01\x00\x00"):
        with pytest.raises(stun.NotBindingRequest, match="^not a binding request$"):
            stun.parse_binding_request(not_binding)
    with pytest.raises(ValueError, match="^no username$"):
        stun.parse_username(data)


def test_looks_like_stun_rejects_bad_framing(hexdata: Hex) -> None:
    good = hexdata("aioice_binding_request.hex")
    assert not stun.looks_like_stun(good[:-4])  # length field disagrees
    assert not stun.looks_like_stun(good + b"\x00\x00\x00\x00")
    assert not stun.looks_like_stun(good[:4] + b"\x00\x00\x00\x00" + good[8:])  # cookie
    assert not stun.looks_like_stun(b"\x40" + good[1:])  # top bits set
    assert not stun.looks_like_stun(good[:19])
    assert not stun.looks_like_stun(b"")
    odd = _message(stun.BINDING_REQUEST, b"\x00\x06\x00\x01a\x00\x00")  # length 7 not aligned
    assert not stun.looks_like_stun(odd)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        (b"", "no username"),
        (_attr(0x0024, b"\x00\x00\x00\x01"), "no username"),
        (struct.pack("!HH", stun.ATTR_USERNAME, 40) + b"abcd", "truncated attribute"),
        (_attr(stun.ATTR_USERNAME, b"a" * 513), "username too long"),
        (_attr(stun.ATTR_USERNAME, b"\xff\xfe:ab"), "username not utf-8"),
    ],
)
def test_parse_username_errors(attrs: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        stun.parse_username(_message(stun.BINDING_REQUEST, attrs))


def test_parse_username_skips_padded_attributes() -> None:
    attrs = _attr(0xC057, b"\x00\x01\x00") + _attr(stun.ATTR_USERNAME, b"srv:cli")
    assert stun.parse_username(_message(stun.BINDING_REQUEST, attrs)) == "srv:cli"
    assert stun.parse_username(_message(1, _attr(stun.ATTR_USERNAME, b"a" * 512))) == "a" * 512


def test_parse_username_not_stun() -> None:
    with pytest.raises(ValueError, match="^not stun$"):
        stun.parse_username(b"\x16\xfe\xfd" + b"\x00" * 30)
    with pytest.raises(ValueError, match="^not stun$"):
        stun.transaction_id(b"\x00")


@pytest.mark.parametrize("username", [b"nocolon", b":client", b"server:"])
def test_parse_server_ufrag_bad_username(username: bytes) -> None:
    with pytest.raises(ValueError, match="^bad username$"):
        stun.parse_server_ufrag(_message(stun.BINDING_REQUEST, _attr(stun.ATTR_USERNAME, username)))


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        (b"", "no username"),
        (struct.pack("!HH", stun.ATTR_USERNAME, 40) + b"abcd", "truncated attribute"),
        (_attr(stun.ATTR_USERNAME, b"a" * 513), "username too long"),
        (_attr(stun.ATTR_USERNAME, b"\xff\xfe:ab"), "username not utf-8"),
        (_attr(stun.ATTR_USERNAME, b"nocolon"), "bad username"),
    ],
)
def test_parse_binding_request_errors_are_not_binding_errors(attrs: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$") as caught:
        stun.parse_binding_request(_message(stun.BINDING_REQUEST, attrs))
    assert not isinstance(caught.value, stun.NotBindingRequest)


def test_random_bytes_raise_only_value_error(hexdata: Hex) -> None:
    rng = random.Random(7983)
    seeds = [hexdata("aioice_binding_request.hex"), hexdata("chrome_binding_request.hex")]
    for _ in range(3000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(0, 80))
        else:  # mutate a real request so the parser goes deep
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(20, len(data))] = rng.randrange(256)
            data = bytes(data)
        stun.classify(data[0]) if data else None
        stun.looks_like_stun(data)
        stun.is_binding_request(data)
        for parse in (stun.parse_username, stun.parse_server_ufrag, stun.transaction_id,
                      stun.parse_binding_request):
            try:
                parse(data)
            except ValueError:
                pass


@pytest.mark.parametrize(
    "mapped", [("192.0.2.1", 32853), ("127.0.0.1", 1), ("2001:db8::1", 65535), ("::1", 4000)]
)
def test_binding_success_round_trips_xor_mapped_address(mapped: tuple[str, int]) -> None:
    tid = bytes(range(12))
    reply = stun.pack_binding_success(tid, mapped)
    assert stun.looks_like_stun(reply) and stun.transaction_id(reply) == tid
    assert stun.parse_xor_mapped_address(reply) == mapped


def test_binding_success_matches_rfc_5769_ipv4_vector() -> None:
    """RFC 5769 section 2.2: 192.0.2.1:32853 with this transaction id encodes as below."""
    tid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    reply = stun.pack_binding_success(tid, ("192.0.2.1", 32853))
    assert reply[20:] == bytes.fromhex("0020 0008 0001 a147 e112 a643".replace(" ", ""))


def test_binding_success_is_decoded_by_aioice() -> None:
    from aioice import stun as aioice_stun

    tid = b"\x07" * 12
    message = aioice_stun.parse_message(stun.pack_binding_success(tid, ("10.0.0.9", 5004)))
    assert message.transaction_id == tid
    assert message.attributes["XOR-MAPPED-ADDRESS"] == ("10.0.0.9", 5004)


def test_binding_request_round_trips_username() -> None:
    request = stun.pack_binding_request(b"\x01" * 12, f"{FIXTURE_UFRAG}:probe")
    assert stun.is_binding_request(request)
    assert stun.parse_server_ufrag(request) == FIXTURE_UFRAG


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_message(stun.BINDING_REQUEST, b""), "not a binding success"),
        (_message(stun.BINDING_SUCCESS, b""), "no xor-mapped-address"),
        (_message(stun.BINDING_SUCCESS, _attr(stun.ATTR_XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x01"
                                              + b"\x00" * 4)), "bad xor-mapped-address"),
    ],
)
def test_parse_xor_mapped_address_rejects(data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        stun.parse_xor_mapped_address(data)


def test_message_integrity_verifies_under_the_password_only() -> None:
    """RFC 8489 section 14.5, checked against aioice's own signer (with FINGERPRINT after it)."""
    from aioice import stun as aioice_stun

    from relays.stun import has_valid_integrity

    message = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING, message_class=aioice_stun.Class.REQUEST
    )
    message.attributes["USERNAME"] = "server:client"
    message.attributes["PRIORITY"] = 1853817087
    message.add_message_integrity(b"the-password")
    message.add_fingerprint()
    signed = bytes(message)
    assert has_valid_integrity(signed, b"the-password")
    assert not has_valid_integrity(signed, b"another-password")
    tampered = bytearray(signed)
    tampered[-30] ^= 1  # a bit of the MAC
    assert not has_valid_integrity(bytes(tampered), b"the-password")
    assert not has_valid_integrity(signed[:40], b"the-password")  # truncated: no MAC
