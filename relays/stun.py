"""STUN sniffing for the relay: classify a datagram and read the USERNAME of Binding requests.

The relay never runs ICE; it only needs enough of RFC 8489 to route the first packet of a flow,
plus one answer of its own: the Binding success to a health probe (reserved transceiver id 0).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Iterator

MAGIC_COOKIE = 0x2112A442  # RFC 8489 section 5
HEADER_LENGTH = 20  # RFC 8489 section 5
TRANSACTION_ID_BYTES = 12  # RFC 8489 section 5: 96 bits
BINDING_REQUEST = 0x0001  # RFC 8489 section 18.2
BINDING_SUCCESS = 0x0101  # RFC 8489 section 18.2
ATTR_USERNAME = 0x0006  # RFC 8489 section 14.3
ATTR_MESSAGE_INTEGRITY = 0x0008  # RFC 8489 section 14.5
INTEGRITY_BYTES = 20  # HMAC-SHA1
ATTR_XOR_MAPPED_ADDRESS = 0x0020  # RFC 8489 section 14.2
MAX_USERNAME = 512  # RFC 8489 section 14.3: fewer than 513 bytes
FAMILY_IPV4 = 0x01  # RFC 8489 section 14.1
FAMILY_IPV6 = 0x02  # RFC 8489 section 14.1

_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")


class PacketClass(enum.Enum):
    """RFC 7983 section 7 first-byte demultiplexing classes."""

    STUN = "stun"  # 0..3
    ZRTP = "zrtp"  # 16..19
    DTLS = "dtls"  # 20..63
    TURN_CHANNEL = "turn"  # 64..79
    RTP = "rtp"  # 128..191 (RTP and RTCP)
    UNKNOWN = "unknown"


def classify(first_byte: int) -> PacketClass:
    """Return the RFC 7983 class of a datagram from its first byte."""
    if first_byte < 4:
        return PacketClass.STUN
    if 16 <= first_byte < 20:
        return PacketClass.ZRTP
    if 20 <= first_byte < 64:
        return PacketClass.DTLS
    if 64 <= first_byte < 80:
        return PacketClass.TURN_CHANNEL
    if 128 <= first_byte < 192:
        return PacketClass.RTP
    return PacketClass.UNKNOWN


def looks_like_stun(data: bytes | memoryview) -> bool:
    """Cheap RFC 8489 section 5 check: top bits zero, length fits and is 4-aligned, cookie."""
    if len(data) < HEADER_LENGTH or data[0] & 0xC0:
        return False
    _, length, cookie, _ = _HEADER.unpack_from(data)
    return cookie == MAGIC_COOKIE and length % 4 == 0 and length + HEADER_LENGTH == len(data)


def is_binding_request(data: bytes | memoryview) -> bool:
    """True for a well-framed STUN Binding request (RFC 8489 section 18.2)."""
    return looks_like_stun(data) and _HEADER.unpack_from(data)[0] == BINDING_REQUEST


def parse_username(data: bytes | memoryview) -> str:
    """Return the USERNAME of a STUN message; ``ValueError`` when absent or malformed."""
    if not looks_like_stun(data):
        raise ValueError("not stun")
    for attr_type, start, end in _walk_attributes(data):
        if attr_type == ATTR_USERNAME:
            if end - start > MAX_USERNAME:
                raise ValueError("username too long")
            try:
                return bytes(data[start:end]).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("username not utf-8") from None
    raise ValueError("no username")


class NotBindingRequest(ValueError):
    """A well-formed datagram in the STUN range that is not a Binding request (RFC 8489 18.2)."""


def parse_binding_request(data: bytes | memoryview) -> tuple[str, bytes]:
    """Return ``(server ufrag, transaction id)`` of a Binding request in one pass (RFC 8445
    section 7.2.2 USERNAME ``server:client``); ``NotBindingRequest`` or ``ValueError``."""
    if not looks_like_stun(data):
        raise NotBindingRequest("not a binding request")
    msg_type, _, _, tid = _HEADER.unpack_from(data)
    if msg_type != BINDING_REQUEST:
        raise NotBindingRequest("not a binding request")
    for attr_type, start, end in _walk_attributes(data):
        if attr_type == ATTR_USERNAME:
            if end - start > MAX_USERNAME:
                raise ValueError("username too long")
            server, sep, client = bytes(data[start:end]).partition(b":")
            if not sep or not server or not client:
                raise ValueError("bad username")
            try:
                return server.decode("utf-8"), tid
            except UnicodeDecodeError:
                raise ValueError("username not utf-8") from None
    raise ValueError("no username")


def parse_server_ufrag(data: bytes | memoryview) -> str:
    """Return the server half of a Binding request USERNAME ``server:client`` (RFC 8445 7.2.2)."""
    return parse_binding_request(data)[0]


def transaction_id(data: bytes | memoryview) -> bytes:
    """Return the 96-bit transaction id of a STUN message."""
    if not looks_like_stun(data):
        raise ValueError("not stun")
    return bytes(data[HEADER_LENGTH - TRANSACTION_ID_BYTES:HEADER_LENGTH])


def has_valid_integrity(data: bytes | memoryview, key: bytes) -> bool:
    """True when MESSAGE-INTEGRITY is an HMAC-SHA1 under ``key`` of the message up to it, the
    header's length covering it (RFC 8489 section 14.5; short-term key: the password, 9.1.1)."""
    try:
        for attr_type, start, end in _walk_attributes(data):
            if attr_type != ATTR_MESSAGE_INTEGRITY:
                continue
            if end - start != INTEGRITY_BYTES:
                return False
            signed = bytearray(data[:start - 4])
            struct.pack_into("!H", signed, 2, end - HEADER_LENGTH)
            mac = hmac.new(key, bytes(signed), hashlib.sha1).digest()
            return hmac.compare_digest(mac, bytes(data[start:end]))
    except (ValueError, struct.error):
        return False
    return False


def _walk_attributes(data: bytes | memoryview) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, value start, value end)`` of each attribute, lazily (RFC 8489 section 14)."""
    offset, end = HEADER_LENGTH, len(data)
    while offset + 4 <= end:
        attr_type, attr_len = _ATTR.unpack_from(data, offset)
        value_end = offset + 4 + attr_len
        if value_end > end:
            raise ValueError("truncated attribute")
        yield attr_type, offset + 4, value_end
        offset = value_end + (-attr_len % 4)  # attributes are padded to 4 bytes


def _attributes(data: bytes | memoryview) -> dict[int, bytes]:
    """First value of each attribute of a well-framed STUN message (RFC 8489 section 14)."""
    found: dict[int, bytes] = {}
    for attr_type, start, end in _walk_attributes(data):
        found.setdefault(attr_type, bytes(data[start:end]))
    return found


def _pack(msg_type: int, tid: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
    if len(tid) != TRANSACTION_ID_BYTES:
        raise ValueError("transaction id must be 12 bytes")
    body = b"".join(
        _ATTR.pack(kind, len(value)) + value + b"\x00" * (-len(value) % 4) for kind, value in attrs
    )
    return _HEADER.pack(msg_type, len(body), MAGIC_COOKIE, tid) + body


def pack_binding_request(tid: bytes, username: str) -> bytes:
    """A Binding request with only USERNAME (RFC 8489 section 14.3): the relay's health probe."""
    raw = username.encode("utf-8")
    if len(raw) > MAX_USERNAME:
        raise ValueError("username too long")
    return _pack(BINDING_REQUEST, tid, [(ATTR_USERNAME, raw)])


def _xor_key(tid: bytes, length: int) -> bytes:
    return (MAGIC_COOKIE.to_bytes(4, "big") + tid)[:length]


def pack_binding_success(tid: bytes, mapped: tuple[str, int]) -> bytes:
    """A Binding success response carrying XOR-MAPPED-ADDRESS (RFC 8489 sections 14.2, 18.2)."""
    ip = ipaddress.ip_address(mapped[0])
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    packed = ip.packed
    xaddr = bytes(a ^ b for a, b in zip(packed, _xor_key(tid, len(packed)), strict=True))
    xport = mapped[1] ^ (MAGIC_COOKIE >> 16)
    value = struct.pack("!BBH", 0, family, xport) + xaddr
    return _pack(BINDING_SUCCESS, tid, [(ATTR_XOR_MAPPED_ADDRESS, value)])


def parse_xor_mapped_address(data: bytes | memoryview) -> tuple[str, int]:
    """Return XOR-MAPPED-ADDRESS of a Binding success response (RFC 8489 section 14.2)."""
    if not looks_like_stun(data) or _HEADER.unpack_from(data)[0] != BINDING_SUCCESS:
        raise ValueError("not a binding success")
    value = _attributes(data).get(ATTR_XOR_MAPPED_ADDRESS)
    if value is None:
        raise ValueError("no xor-mapped-address")
    if len(value) < 4:
        raise ValueError("bad xor-mapped-address")
    _, family, xport = struct.unpack_from("!BBH", value)
    size = {FAMILY_IPV4: 4, FAMILY_IPV6: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise ValueError("bad xor-mapped-address")
    key = _xor_key(transaction_id(data), size)
    raw = bytes(a ^ b for a, b in zip(value[4:], key, strict=True))
    return str(ipaddress.ip_address(raw)), xport ^ (MAGIC_COOKIE >> 16)
