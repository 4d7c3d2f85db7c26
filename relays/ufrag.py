"""Server ICE ufrag codec: the ufrag names and authenticates where a session lives.

Layout before base64 (18 bytes -> exactly 24 ICE chars, RFC 8445 section 5.3 allows
``[A-Za-z0-9+/]``, 4..256 chars; we stay <= 32 as browsers accept)::

    0       1       3       5           9                  18
    +-------+-------+-------+-----------+------------------+
    |ver|kid| shard | xcvr  | nonce(32) | HMAC-SHA256[:9]  |
    +-------+-------+-------+-----------+------------------+

``ver`` is the high nibble, ``kid`` (key id, for rotation) the low nibble. The MAC covers the
first 9 bytes with the cluster secret named by ``kid``, so a relay decodes AND authenticates a
ufrag with no lookup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from fleet.nodes import MAX_NODE_ID

UFRAG_VERSION = 1
UFRAG_LENGTH = 24  # chars; RFC 8445 section 5.3: 4..256 ICE chars
NONCE_BYTES = 4  # 32 random bits (>= 24 required)
MAC_BYTES = 9  # 72-bit truncated HMAC-SHA256
PASSWORD_BYTES = 18  # 144 random bits -> 24 ICE chars; RFC 8445 section 5.3 needs >= 22 chars
MIN_PASSWORD_BYTES = 16  # RFC 8445 section 5.3: at least 128 bits of randomness
MAX_KEY_ID = 0x0F

_BODY = struct.Struct("!BHH4s")  # ver|kid, shard, transceiver, nonce


@dataclass(frozen=True, slots=True)
class UfragClaims:
    """What a valid server ufrag says about its session."""

    version: int
    key_id: int
    shard: int
    transceiver: int
    nonce: bytes


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:MAC_BYTES]


def mint_ufrag(*, shard: int, transceiver: int, key_id: int, key: bytes, nonce: bytes) -> str:
    """Return a 24-char ICE ufrag naming ``shard`` and ``transceiver``, MACed with ``key``."""
    if not 0 <= shard <= MAX_NODE_ID or not 0 <= transceiver <= MAX_NODE_ID:
        raise ValueError("node id out of range")
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError("key id out of range")
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    body = _BODY.pack((UFRAG_VERSION << 4) | key_id, shard, transceiver, nonce)
    return base64.b64encode(body + _mac(key, body)).decode("ascii")


def _split_ufrag(ufrag: str) -> tuple[bytes, bytes]:
    if len(ufrag) != UFRAG_LENGTH:
        raise ValueError("bad ufrag length")
    try:
        raw = base64.b64decode(ufrag, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("bad ufrag encoding") from None
    if len(raw) != _BODY.size + MAC_BYTES:  # "=" padding decodes to fewer bytes
        raise ValueError("bad ufrag encoding")
    return raw[: _BODY.size], raw[_BODY.size :]


def parse_ufrag(ufrag: str) -> UfragClaims:
    """Decode a server ufrag WITHOUT authenticating it (for tools); ``ValueError`` if malformed."""
    ver_kid, shard, transceiver, nonce = _BODY.unpack(_split_ufrag(ufrag)[0])
    return UfragClaims(ver_kid >> 4, ver_kid & 0x0F, shard, transceiver, nonce)


def validate_ufrag(ufrag: str, *, keys: Mapping[int, bytes]) -> UfragClaims:
    """Decode and authenticate a server ufrag; raise ``ValueError`` when it is not ours."""
    body, mac = _split_ufrag(ufrag)
    claims = parse_ufrag(ufrag)
    if claims.version != UFRAG_VERSION:
        raise ValueError("unknown ufrag version")
    key = keys.get(claims.key_id)
    if key is None:
        raise ValueError("unknown ufrag key")
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise ValueError("bad ufrag mac")
    return claims


def mint_password(random: bytes) -> str:
    """Return an ICE password from >= 128 random bits (RFC 8445 section 5.3: 22..256 ICE chars)."""
    if len(random) < MIN_PASSWORD_BYTES:
        raise ValueError("password needs >= 128 random bits")
    return base64.b64encode(random).decode("ascii").rstrip("=")


def parse_keyring(spec: str) -> dict[int, bytes]:
    """Parse ``"1:secret,2:older-secret"`` into ``{key_id: key}``; the first is the minting key."""
    keys: dict[int, bytes] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kid, sep, secret = item.partition(":")
        if not sep or not (kid.isascii() and kid.isdigit()) or not secret:
            raise ValueError("bad keyring entry")
        if not 0 <= int(kid) <= MAX_KEY_ID:
            raise ValueError("key id out of range")
        keys[int(kid)] = secret.encode()
    if not keys:
        raise ValueError("empty keyring")
    return keys
