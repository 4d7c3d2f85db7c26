"""Relay test helpers: byte fixtures from ``tests/relays/data``, the test fleet, packets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from aioice import stun as aioice_stun

from relays.ufrag import mint_ufrag

DATA = Path(__file__).parent / "data"
FIXTURE_KEYS = {1: b"fixture-key"}  # the key the .hex STUN fixtures were minted with
FIXTURE_UFRAG = "EQAHAAMLrfANwAyq3hEuhDhL"  # shard 7, transceiver 3, nonce 0badf00d


def read_hex(name: str) -> bytes:
    """Return the bytes of ``data/<name>``: hex, ``#`` lines are comments."""
    lines = (DATA / name).read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


@pytest.fixture
def hexdata() -> Callable[[str], bytes]:
    return read_hex


# Loopback and core tests share one fleet: shard 7, transceiver 3, one cluster key.
SHARD = 7
XCVR = 3
KEYS = {1: b"loopback-key"}
DTLS = b"\x16\xfe\xfd" + b"\x00" * 10  # RFC 7983: first byte 22 is DTLS


def binding_request(
    *, shard: int = SHARD, transceiver: int = XCVR, key: bytes = KEYS[1], nonce: bytes = b"abcd",
    username: str | None = None,
) -> bytes:
    """A Binding request as a browser sends it (USERNAME ``server:client``, integrity, CRC);
    ``username`` replaces the USERNAME, ``""`` leaves it out."""
    server = mint_ufrag(shard=shard, transceiver=transceiver, key_id=1, key=key, nonce=nonce)
    message = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    if username != "":
        message.attributes["USERNAME"] = username or f"{server}:cli1"
    message.attributes["PRIORITY"] = 1
    message.add_message_integrity(b"x" * 24)
    message.add_fingerprint()
    return bytes(message)
