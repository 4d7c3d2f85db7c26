"""Relay test helpers: byte fixtures from ``tests/relays/data``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

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
